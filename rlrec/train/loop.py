"""Training: collect -> store -> update -> log -> checkpoint.

:func:`train_steps` is the bare loop (tests and benchmarks use it). :func:`train` is what
``python train.py`` runs: it checks the whole config, builds the shop and the agent, resumes
from a checkpoint when there is one, logs to TensorBoard (every step counted in user-steps),
checkpoints atomically, validates every ``trainer.val_every`` steps in a validation shop
(``eval/val_return``; the best checkpoint so far is kept as ``best.pt``), stops on divergence,
and ends with an evaluation whose mean session return it returns (so Hydra sweepers can
optimise it). The final evaluation opens the catalog: new items held out in training are in it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from rlrec.agents import agent_name, build_agent
from rlrec.agents.base import Agent, AgentSpec, make_transition
from rlrec.config import LoggerConfig, TrainerConfig, build_config, env_config_from, require
from rlrec.eval.rollout import METRICS, compare_policies, make_baselines, run_sessions
from rlrec.eval.shifts import check_same_catalog, shop_config
from rlrec.sim.env import Shop
from rlrec.train.compiled import TrainStep
from rlrec.train.distributed import World, init_world, wrap_agent
from rlrec.train.logged import check_logged_agent, logged_rows, train_logged_steps
from rlrec.train.run import (
    BEST_NAME,
    CHECKPOINT_NAME,
    FORMAT,
    RunError,
    catalog_fingerprint,
    check_catalog,
    check_resume,
    env_fingerprint,
    load_checkpoint,
    move_to,
    remove_orphan_temp_files,
    restore_shop_state,
    save_checkpoint,
    shop_state,
)

log = logging.getLogger(__name__)


class TrainingDiverged(RunError):
    """The loss or the parameters stopped being finite numbers."""


def train_steps(
    shop: Shop,
    agent: Agent,
    env_steps: int,
    on_step: Callable[[int, dict[str, torch.Tensor], Any], None] | None = None,
    start: int = 0,
) -> None:
    """Run environment steps ``start .. env_steps - 1`` of collection and learning.

    ``on_step(step, metrics, result)`` is called after each step (logging, checkpoints).
    The shop is not reset: a second call continues the same sessions. The agent recommends
    from the shop's catalog (``shop.item_available``); its slates are not checked
    (``env.check_actions``): they are ids it drew from the catalog.
    """
    if hasattr(agent, "use_catalog"):
        agent.use_catalog(shop.item_available)
    obs = shop.observation()
    # Agents with an asymmetric critic (rlrec/agents/pg.py) also get the users' hidden satisfaction
    # before and after the step; only their training reads it, never their acting.
    hidden = getattr(agent, "reads_hidden_state", False)
    for step in range(start, env_steps):
        slate = agent.act(obs, explore=True)
        before = shop.state.satisfaction.clone() if hidden else None
        result = shop.step(slate, check=False)
        transition = make_transition(obs, slate, result)
        if hidden:
            transition.update(hidden=before, next_hidden=shop.state.satisfaction.clone())
        agent.observe(transition)
        metrics = agent.update()
        if on_step is not None:
            on_step(step, metrics, result)
        obs = result.obs


class EpisodeTracker:
    """Running per-row session totals, summarised every ``log_every`` steps without host syncs.

    :meth:`flush` reports the sessions that ended and the slates shown since the last flush,
    under the names of :data:`rlrec.eval.rollout.METRICS`.
    """

    def __init__(self, b: int, device: torch.device) -> None:
        self.ret, self.length = torch.zeros(b, device=device), torch.zeros(b, device=device)
        self.sums = torch.zeros(5, device=device)  # finished: count, return, length; steps: clicks, purchases
        self.rating = torch.zeros(2, device=device)  # rating sum, purchases
        self.steps = torch.zeros((), device=device)

    def add(self, result: Any) -> None:
        done = result.done.float()
        self.ret += result.reward
        self.length += 1
        self.sums += torch.stack(
            [
                done.sum(),
                (self.ret * done).sum(),
                (self.length * done).sum(),
                result.info["click"].float().sum(),
                result.info["purchase"].float().sum(),
            ]
        )
        self.rating += torch.stack([result.info["rating"].float().sum(), result.info["purchase"].float().sum()])
        self.steps += done.numel()
        keep = 1 - done
        self.ret *= keep
        self.length *= keep

    def flush(self, world: World | None = None) -> dict[str, float]:
        """The summary since the last flush (one host sync), over all ranks of ``world`` when given."""
        totals = torch.cat([self.sums, self.rating, self.steps.view(1)])
        if world is not None:
            world.sum_(totals)
        n, ret, length, clicks, purchases, rating_sum, rated, steps = totals.tolist()
        out = {"ctr": clicks / max(steps, 1), "purchase_rate": purchases / max(steps, 1)}
        if n > 0:
            out.update({"episodic_return": ret / n, "episode_length": length / n})
        if rated > 0:
            out["avg_rating"] = rating_sum / rated
        self.sums.zero_(), self.rating.zero_(), self.steps.zero_()
        return out


def _all_finite(obj: Any) -> bool:
    """No NaN or infinity in any floating tensor inside ``obj`` (nested dicts and lists)."""
    if isinstance(obj, torch.Tensor):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, dict):
        return all(_all_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_all_finite(v) for v in obj)
    return True


def _save_run_config(run_dir: Path, cfg: DictConfig) -> None:
    """The run's config in ``.hydra/`` (Hydra's layout), written only once the run has been accepted."""
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, hydra_dir / "config.yaml")
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        OmegaConf.save(OmegaConf.create(list(HydraConfig.get().overrides.task)), hydra_dir / "overrides.yaml")


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> float:
    """Train the configured agent on the configured shop; return the final evaluation's mean session return.

    Every setting is checked, the shop and the agent are built and a resume is checked before
    anything is written into ``run_dir``. With ``trainer.distributed`` this runs on every rank
    (:mod:`rlrec.train.distributed`); the ranks other than 0 return NaN.
    """
    tcfg: TrainerConfig = build_config(TrainerConfig, cfg.trainer, "trainer")
    world = init_world(tcfg.distributed, env_config_from(cfg.env).device)
    try:
        return _train(cfg, run_dir, world)
    finally:
        world.close()


def _train(cfg: DictConfig, run_dir: str | Path | None, world: World) -> float:
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    run_dir = Path(world.broadcast(str(run_dir) if run_dir is not None else str(Path.cwd())))
    require(isinstance(cfg.seed, int) and cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")
    tcfg: TrainerConfig = build_config(TrainerConfig, cfg.trainer, "trainer")
    lcfg: LoggerConfig = build_config(LoggerConfig, cfg.logger, "logger")
    env_cfg = env_config_from(cfg.env, **({"device": str(world.device)} if world.device is not None else {}))
    seed = int(cfg.seed)
    shop = Shop(env_cfg)
    shop.reset(seed=world.seed(seed))
    agent = build_agent(cfg.agent, AgentSpec.from_shop(shop), seed=world.seed(seed), device=str(shop.device))
    b = shop.num_users
    users = b * world.size  # users served per environment step, over all ranks (SPS and TensorBoard steps)
    val_shop = None
    if tcfg.val_every:  # same catalog, other users (or a shifted shop); built now, so that a bad one fails first
        val_shop = Shop(shop_config(env_cfg, tcfg.val_shop, tcfg.val_user_seed), num_users=tcfg.val_users)
        check_same_catalog(catalog_fingerprint(shop), val_shop, tcfg.val_shop)
    best = {"return": -math.inf, "step": None}  # the best validation so far (kept in checkpoints)

    start, ckpt_path, changes = 0, run_dir / CHECKPOINT_NAME, []
    resume_from = None
    if tcfg.resume == "auto" and ckpt_path.exists():
        resume_from = ckpt_path
    elif tcfg.resume not in ("auto", "never"):
        resume_from = Path(tcfg.resume)
        resume_from = resume_from / CHECKPOINT_NAME if resume_from.is_dir() else resume_from
    if resume_from is not None:
        saved = load_checkpoint(resume_from)
        changes = saved.get("config_changes", []) + check_resume(saved, cfg, resume_from, world.size)
        check_catalog(saved, shop, resume_from)
        best.update(saved.get("validation") or {})
        mine = saved if world.rank == 0 else saved["ranks"][world.rank - 1]  # rank r's sessions and replay
        agent.load_state_dict(move_to(mine["agent"], shop.device))
        restore_shop_state(shop, mine["shop"])
        start = int(saved["env_step"])
    wrap_agent(agent, world)
    logged = None
    if tcfg.logged_data:  # off-policy from logs (rlrec/train/logged.py): each step is one gradient step
        check_logged_agent(agent)
        require(
            not tcfg.compile and world.size == 1,
            "trainer.logged_data",
            tcfg.logged_data,
            "empty with trainer.compile or trainer.distributed (those run the shop's DQN step)",
        )
        logged = logged_rows(tcfg.logged_data, env_cfg, shop)
    tracker = EpisodeTracker(b, shop.device)
    step_fn = TrainStep(shop, agent, tracker, mode=tcfg.compile_mode) if tcfg.compile else None

    # The run is accepted: from here on the run directory is written (by rank 0 alone).
    if world.is_main:
        _save_run_config(run_dir, cfg)
        for orphan in remove_orphan_temp_files(run_dir):
            log.info("removed %s, left by a checkpoint write that was interrupted", orphan.name)
    name = agent_name(str(cfg.agent._target_))
    log.info(
        "training %s on %d users x %d steps (%s%s%s)%s",
        name,
        users,
        tcfg.env_steps,
        shop.device,
        f", {world.size} ranks of {b} users" if world.size > 1 else "",
        ", compiled step" if step_fn is not None else "",
        f", resumed from {resume_from} at step {start}" if resume_from is not None else "",
    )
    if resume_from is not None and changes:
        log.info("config changes accepted on resume: %s", "; ".join(changes))
    writer = None
    if lcfg.tensorboard and world.is_main:  # TensorBoard's step is the user-step everywhere: env steps x users
        # purge what a killed run logged after its last checkpoint (that stretch is replayed)
        writer = SummaryWriter(str(run_dir / lcfg.log_dir), purge_step=start * users + 1 if start else None)
    progress = tcfg.progress and world.is_main
    bar = tqdm(total=tcfg.env_steps, initial=start, disable=not progress, unit="step", dynamic_ncols=True)
    last = {"time": time.perf_counter(), "step": start, "checkpoint": start if resume_from is not None else None}

    def diverged(what: str) -> TrainingDiverged:
        kept = (
            "no checkpoint was written yet"
            if last["checkpoint"] is None
            else f"the last good checkpoint (env step {last['checkpoint']}) is kept"
        )
        return TrainingDiverged(
            f"training diverged {what}; {kept}. Likely cause: a learning rate too high for the "
            f"reward scale (agent.lr = {cfg.agent.get('lr', '-')}): lower agent.lr, or the "
            "env.w_* reward weights."
        )

    def run_state(step_done: int) -> dict[str, Any] | None:
        """The checkpoint of the run after ``step_done`` env steps (every rank takes part); None off rank 0."""
        state = agent.state_dict()
        if not world.all_true(_all_finite(state)):
            raise diverged(f"by env step {step_done}: the agent's parameters hold NaN or infinite values")
        # Every rank's sessions and replay, gathered into rank 0's file (through the CPU).
        ranks = world.gather(move_to({"agent": state, "shop": shop_state(shop)}, "cpu")) if world.size > 1 else []
        if not world.is_main:
            return None
        return {
            "format": FORMAT,
            "env_step": step_done,
            "num_users": b,
            "world_size": world.size,
            "agent": state,
            "shop": shop_state(shop),
            **({"ranks": ranks[1:]} if world.size > 1 else {}),
            "agent_target": str(cfg.agent._target_),
            "env_fingerprint": env_fingerprint(env_cfg),
            "catalog_fingerprint": catalog_fingerprint(shop),
            "config": OmegaConf.to_container(cfg, resolve=True),
            "config_changes": changes,
            "validation": dict(best),
        }

    def checkpoint(step_done: int) -> None:
        state = run_state(step_done)
        if state is not None:
            save_checkpoint(ckpt_path, state)
        last["checkpoint"] = step_done

    def validate(step_done: int) -> None:
        """Play the greedy policy in the validation shop (its catalog as the training shop's now); keep the best."""
        val_shop.restore_catalog(shop.catalog_step, shop.catalog_open)
        exploration = agent.generator.get_state() if hasattr(agent, "generator") else None
        value = float(run_sessions(val_shop, agent, seed=tcfg.val_seed).session_return.mean())
        if exploration is not None:  # validating must not change what training does next
            agent.generator.set_state(exploration)
        if writer is not None:
            writer.add_scalar("eval/val_return", value, step_done * users)
        if value > best["return"]:  # every rank validates the same parameters on the same users: they agree
            best.update({"return": value, "step": step_done})
            state = run_state(step_done)
            if state is not None:
                save_checkpoint(run_dir / BEST_NAME, state)

    def on_step(step: int, metrics: dict[str, torch.Tensor], result: Any) -> None:
        if result is not None:  # (the compiled step feeds the tracker inside its graph)
            tracker.add(result)
        done_steps = step + 1
        if done_steps % tcfg.log_every == 0 or done_steps == tcfg.env_steps:
            now = time.perf_counter()
            # (training from logs shows no sessions: no session charts then)
            scalars = {f"charts/{key}": value for key, value in tracker.flush(world).items() if logged is None}
            scalars["charts/SPS"] = users * (done_steps - last["step"]) / max(now - last["time"], 1e-9)
            last.update(time=now, step=done_steps)
            if hasattr(agent, "epsilon"):
                scalars["charts/epsilon"] = float(agent.epsilon)
            if metrics:  # averaged over the ranks, so that every rank sees a divergence at once
                losses = world.sum_(torch.stack([value.detach().float() for value in metrics.values()])) / world.size
                for key, value in zip(metrics, losses.tolist()):
                    scalars[f"losses/{key}"] = value
                    if not math.isfinite(value):
                        raise diverged(f"at env step {done_steps}: losses/{key} = {value}")
            if writer is not None:
                for key, value in scalars.items():
                    writer.add_scalar(key, value, done_steps * users)
            bar.set_postfix(
                SPS=f"{scalars['charts/SPS']:,.0f}", ret=f"{scalars.get('charts/episodic_return', float('nan')):.2f}"
            )
        bar.update(1)
        if val_shop is not None and (done_steps % tcfg.val_every == 0 or done_steps == tcfg.env_steps):
            validate(done_steps)
        if tcfg.checkpoint_every and done_steps % tcfg.checkpoint_every == 0 and done_steps < tcfg.env_steps:
            checkpoint(done_steps)

    try:
        if logged is not None:
            train_logged_steps(agent, logged, tcfg.env_steps, on_step=on_step, start=start)
        elif step_fn is not None:
            step_fn.run(tcfg.env_steps, on_step=on_step, start=start)
        else:
            train_steps(shop, agent, tcfg.env_steps, on_step=on_step, start=start)
        bar.close()
        checkpoint(tcfg.env_steps)
    finally:
        bar.close()
        if writer is not None:
            writer.flush()
    if not world.is_main:
        return float("nan")

    eval_shop = Shop(env_cfg, num_users=tcfg.eval_users).open_catalog()
    policies = {"trained": agent, **make_baselines(tcfg.eval_baselines, eval_shop, seed)}
    results = compare_policies(eval_shop, policies, seed=tcfg.eval_seed)
    summary = results["trained"]
    if writer is not None:
        for key, stat in summary.items():
            writer.add_scalar(f"eval/{key}", stat["mean"], tcfg.env_steps * users)
        for baseline in tcfg.eval_baselines:
            writer.add_scalar(
                f"eval/{baseline}/episodic_return", results[baseline]["episodic_return"]["mean"], tcfg.env_steps * users
            )
        hparams = {
            k: v
            for k, v in OmegaConf.to_container(cfg.agent, resolve=True).items()
            if isinstance(v, (int, float, str, bool))
        }
        hparams.update(seed=seed, env_steps=int(tcfg.env_steps))
        writer.add_hparams(
            hparams,
            {
                f"hparam/eval_{k}": v["mean"]
                for k, v in summary.items()
                if k in ("episodic_return", "ctr", "purchase_rate", "episode_length")
            },
            run_name="hparams",
        )
        writer.close()
    (run_dir / "train_eval.json").write_text(json.dumps(results, indent=1))
    log.info("final evaluation, %d sessions each, %s (95%% CI):", tcfg.eval_users, METRICS["episodic_return"])
    for label, result in results.items():
        log.info("  %14s: %.3f ± %.3f", label, result["episodic_return"]["mean"], result["episodic_return"]["ci95"])
    if best["step"] is not None:
        log.info("best validation return %.3f at env step %d: %s", best["return"], best["step"], run_dir / BEST_NAME)
    return float(summary["episodic_return"]["mean"])
