"""Training: collect -> store -> update -> log -> checkpoint.

:func:`train_steps` is the bare loop (tests and benchmarks use it). :func:`train` is what
``python train.py`` runs: it builds the shop and the agent from the Hydra config, logs to
TensorBoard, checkpoints atomically, resumes, and ends with an evaluation whose mean
session return it returns (so Hydra sweepers can optimise it).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from rlrec.agents.base import Agent, make_transition
from rlrec.checkpoint import CheckpointError, load_checkpoint, move_to, save_checkpoint
from rlrec.config import ConfigError, env_config_from
from rlrec.evaluation import compare_policies
from rlrec.sim.env import Shop, ShopState

CHECKPOINT_NAME = "checkpoint.pt"


def train_steps(shop: Shop, agent: Agent, env_steps: int,
                on_step: Callable[[int, dict[str, torch.Tensor], Any], None] | None = None, start: int = 0) -> None:
    """Run environment steps ``start .. env_steps - 1`` of collection and learning.

    ``on_step(step, metrics, result)`` is called after each step (logging, checkpoints).
    The shop is not reset: a second call continues the same sessions.
    """
    obs = shop.observe()
    for step in range(start, env_steps):
        slate = agent.act(obs, explore=True)
        result = shop.step(slate)
        agent.observe(make_transition(obs, slate, result))
        metrics = agent.update()
        if on_step is not None:
            on_step(step, metrics, result)
        obs = result.obs


def make_agent(agent_cfg: DictConfig, shop: Shop, seed: int) -> Agent:
    """The one place agents are built from config: ``_target_`` plus what the shop provides."""
    from hydra.utils import get_class

    cls = get_class(agent_cfg._target_)
    kwargs = {k: v for k, v in OmegaConf.to_container(agent_cfg, resolve=True).items() if k != "_target_"}
    env_cfg, dev = shop.cfg, str(shop.device)
    name = cls.__name__
    if name in ("DQNAgent", "BanditAgent"):
        return cls(env_cfg, shop.catalog, num_users=env_cfg.num_users, seed=seed, device=dev, **kwargs)
    if name == "TabularQAgent":
        return cls(env_cfg, seed=seed, device=dev, **kwargs)
    if name == "MyopicAgent":
        return cls(shop, seed=seed)
    return cls(env_cfg.n_items, env_cfg.slate_size, seed=seed, device=dev, **kwargs)


BASELINES = {"random": "rlrec.agents.baselines.RandomAgent", "myopic_oracle": "rlrec.agents.baselines.MyopicAgent"}
"""Non-learning baselines that evaluations can add by name."""


def make_baselines(names: Any, shop: Shop, seed: int) -> dict[str, Agent]:
    """{name: agent} for baseline ``names`` (keys of :data:`BASELINES`), built for ``shop``."""
    unknown = sorted(set(names) - set(BASELINES))
    if unknown:
        raise ConfigError(f"unknown baseline(s) {unknown}; choose from {sorted(BASELINES)}.")
    return {name: make_agent(OmegaConf.create({"_target_": BASELINES[name]}), shop, seed) for name in names}


def env_fingerprint(env_cfg: Any) -> str:
    """A hash of the env fields that define the shop (not its batch size or device)."""
    fields = {k: v for k, v in vars(env_cfg).items() if k not in ("num_users", "device", "check_actions", "compile")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _EpisodeTracker:
    """Running per-row session totals, summarised every ``log_every`` steps without host syncs."""

    def __init__(self, b: int, device: torch.device) -> None:
        z = lambda: torch.zeros(b, device=device)  # noqa: E731
        self.ret, self.length = z(), z()
        self.sums = torch.zeros(5, device=device)  # finished: count, return, length; steps: clicks, purchases
        self.rating = torch.zeros(2, device=device)  # rating sum, purchases
        self.steps = torch.zeros((), device=device)

    def add(self, result: Any) -> None:
        done = result.done.float()
        self.ret += result.reward
        self.length += 1
        self.sums += torch.stack([done.sum(), (self.ret * done).sum(), (self.length * done).sum(),
                                  result.info["click"].float().sum(), result.info["purchase"].float().sum()])
        self.rating += torch.stack([result.info["rating"].float().sum(), result.info["purchase"].float().sum()])
        self.steps += done.numel()
        keep = 1 - done
        self.ret *= keep
        self.length *= keep

    def flush(self) -> dict[str, float]:
        n, ret, length, clicks, purchases = self.sums.tolist()
        rating_sum, rated = self.rating.tolist()
        steps = float(self.steps)
        out = {"charts/ctr": clicks / max(steps, 1), "charts/purchase_rate": purchases / max(steps, 1)}
        if n > 0:
            out.update({"charts/episodic_return": ret / n, "charts/episode_length": length / n})
        if rated > 0:
            out["charts/avg_rating"] = rating_sum / rated
        self.sums.zero_(), self.rating.zero_(), self.steps.zero_()
        return out


def _shop_state(shop: Shop) -> dict[str, Any]:
    return {"state": vars(shop.state), "generator": shop.generator.get_state()}


def _load_shop_state(shop: Shop, saved: dict[str, Any]) -> None:
    shop.state = ShopState(**{k: v.to(shop.device) for k, v in saved["state"].items()})
    shop.generator.set_state(saved["generator"])


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> float:
    """Train the configured agent on the configured shop; return the final evaluation's mean session return."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    run_dir = Path(run_dir) if run_dir is not None else Path.cwd()
    run_dir.mkdir(parents=True, exist_ok=True)
    tcfg = cfg.trainer
    if tcfg.env_steps < 1 or tcfg.log_every < 1 or tcfg.checkpoint_every < 0 or tcfg.eval_users < 1:
        raise ConfigError("trainer.env_steps, trainer.log_every and trainer.eval_users must be >= 1 and "
                          f"trainer.checkpoint_every >= 0 (got {OmegaConf.to_container(tcfg)}).")
    env_cfg = env_config_from(cfg.env)
    shop = Shop(env_cfg)
    shop.reset(seed=int(cfg.seed))
    agent = make_agent(cfg.agent, shop, int(cfg.seed))

    start, ckpt_path = 0, run_dir / CHECKPOINT_NAME
    resume_from = None
    if tcfg.resume == "auto" and ckpt_path.exists():
        resume_from = ckpt_path
    elif tcfg.resume not in ("auto", "never"):
        resume_from = Path(tcfg.resume)
        resume_from = resume_from / CHECKPOINT_NAME if resume_from.is_dir() else resume_from
    if resume_from is not None:
        saved = load_checkpoint(resume_from)
        if saved["env_fingerprint"] != env_fingerprint(env_cfg):
            raise CheckpointError(f"checkpoint {resume_from} was written for another env config; resume with the "
                                  "same env settings, or set trainer.resume=never to start afresh.")
        if saved["agent_target"] != cfg.agent._target_:
            raise CheckpointError(f"checkpoint {resume_from} holds a {saved['agent_target']}, not a "
                                  f"{cfg.agent._target_}.")
        agent.load_state_dict(move_to(saved["agent"], shop.device))
        _load_shop_state(shop, saved["shop"])
        start = int(saved["env_step"])

    writer = SummaryWriter(str(run_dir / cfg.logger.log_dir), purge_step=start) if cfg.logger.tensorboard else None
    tracker = _EpisodeTracker(shop.num_users, shop.device)
    bar = tqdm(total=tcfg.env_steps, initial=start, disable=not tcfg.progress, unit="step", dynamic_ncols=True)
    last = {"time": time.perf_counter(), "step": start}
    b = shop.num_users

    def checkpoint(step_done: int) -> None:
        save_checkpoint(ckpt_path, {
            "format": "rlrec-1", "env_step": step_done, "agent": agent.state_dict(), "shop": _shop_state(shop),
            "agent_target": cfg.agent._target_, "env_fingerprint": env_fingerprint(env_cfg),
            "config": OmegaConf.to_container(cfg, resolve=True)})

    def on_step(step: int, metrics: dict[str, torch.Tensor], result: Any) -> None:
        tracker.add(result)
        done_steps = step + 1
        if done_steps % tcfg.log_every == 0 or done_steps == tcfg.env_steps:
            now = time.perf_counter()
            scalars = tracker.flush()
            scalars["charts/SPS"] = b * (done_steps - last["step"]) / max(now - last["time"], 1e-9)
            last.update(time=now, step=done_steps)
            if hasattr(agent, "epsilon"):
                scalars["charts/epsilon"] = float(agent.epsilon)
            for key, value in metrics.items():
                scalars[f"losses/{key}"] = float(value)
            if writer is not None:
                for key, value in scalars.items():
                    writer.add_scalar(key, value, done_steps * b)
            bar.set_postfix(SPS=f"{scalars['charts/SPS']:,.0f}",
                            ret=f"{scalars.get('charts/episodic_return', float('nan')):.2f}")
        bar.update(1)
        if tcfg.checkpoint_every and done_steps % tcfg.checkpoint_every == 0 and done_steps < tcfg.env_steps:
            checkpoint(done_steps)

    train_steps(shop, agent, tcfg.env_steps, on_step=on_step, start=start)
    bar.close()
    checkpoint(tcfg.env_steps)

    eval_shop = Shop(env_cfg, num_users=tcfg.eval_users)
    policies = {"trained": agent, **make_baselines(tcfg.eval_baselines, eval_shop, int(cfg.seed))}
    results = compare_policies(eval_shop, policies, seed=tcfg.eval_seed)
    summary = results["trained"]
    if writer is not None:
        for key, stat in summary.items():
            writer.add_scalar(f"eval/{key}", stat["mean"], tcfg.env_steps * b)
        for name in tcfg.eval_baselines:
            writer.add_scalar(f"eval/{name}_return", results[name]["return"]["mean"], tcfg.env_steps * b)
        hparams = {k: v for k, v in OmegaConf.to_container(cfg.agent, resolve=True).items()
                   if isinstance(v, (int, float, str, bool))}
        hparams.update(seed=int(cfg.seed), env_steps=int(tcfg.env_steps))
        writer.add_hparams(hparams, {f"hparam/eval_{k}": v["mean"] for k, v in summary.items()
                                     if k in ("return", "ctr", "purchase_rate", "length")}, run_name="hparams")
        writer.close()
    (run_dir / "train_eval.json").write_text(json.dumps(results, indent=1))
    print(f"final evaluation, {tcfg.eval_users} sessions each, mean session return (95% CI):")
    for name, result in results.items():
        print(f"  {name:>14}: {result['return']['mean']:.3f} ± {result['return']['ci95']:.3f}")
    return float(summary["return"]["mean"])
