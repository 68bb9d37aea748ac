"""Evaluation reports: a trained policy against the baselines on the same users.

``python evaluate.py run_dir=<a train run>`` calls :func:`evaluate_run`. Every policy
faces the same evaluation users with the same random numbers (the shop is reseeded with
``eval_seed`` before each), so their differences are not noise in who showed up. Writes
``eval.json``, ``eval.md``, ``learning_curve.png`` (from the run's TensorBoard events) and
``policies.png``. On an enumerable shop it adds V*, the exact value of the trained policy
and the gap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from rlrec.checkpoint import CheckpointError, load_checkpoint, move_to
from rlrec.config import env_config_from
from rlrec.evaluation import compare_policies
from rlrec.sim.env import Shop
from rlrec.trainer import CHECKPOINT_NAME, env_fingerprint, make_agent, make_baselines

METRICS = ("return", "length", "ctr", "purchase_rate", "avg_rating", "revenue", "coverage")


def resolve_checkpoint(run_dir: str | None, checkpoint: str | None) -> Path:
    """The checkpoint file named by ``checkpoint`` or found in ``run_dir``; a clear error otherwise."""
    if checkpoint:
        return Path(checkpoint)
    if not run_dir:
        raise CheckpointError("say which run to evaluate: run_dir=<a train run's directory> or checkpoint=<file>.")
    path = Path(run_dir)
    if not path.is_dir():
        raise CheckpointError(f"run_dir {path} is not a directory: pass the output directory of a train run.")
    return path / CHECKPOINT_NAME


def evaluate_run(run_dir: str | None = None, checkpoint: str | None = None, eval_users: int = 2048,
                 eval_seed: int = 20_000, out_dir: str | Path | None = None, device: str | None = None,
                 baselines: tuple[str, ...] = ("random", "myopic_oracle")) -> dict[str, Any]:
    """Evaluate the trained policy of a run and the baselines; write the report files; return the report."""
    path = resolve_checkpoint(run_dir, checkpoint)
    overrides = {"num_users": eval_users} | ({"device": device} if device else {})
    saved, cfg, shop, trained, label = load_trained(path, **overrides)
    env_cfg = shop.cfg
    out = Path(out_dir) if out_dir is not None else path.parent
    out.mkdir(parents=True, exist_ok=True)
    policies = {label: trained}
    policies.update(make_baselines(baselines, shop, int(cfg.seed)))

    report: dict[str, Any] = {"checkpoint": str(path), "env_steps": int(saved["env_step"]), "eval_users": eval_users,
                              "eval_seed": eval_seed, "policies": {}}
    for label, summary in compare_policies(shop, policies, eval_seed).items():
        report["policies"][label] = {k: summary[k] for k in METRICS}

    if env_cfg.slate_size == 1 and env_cfg.observe_satisfaction and env_cfg.preference_noise == 0 \
            and env_cfg.interest_drift == 0 and env_cfg.price_sensitivity_noise == 0:
        report["oracle"] = _exact_values(shop, trained)

    (out / "eval.json").write_text(json.dumps(report, indent=1))
    (out / "eval.md").write_text(format_markdown(report))
    _plot_policies(report, out / "policies.png")
    curve = read_scalars(path.parent / cfg.logger.log_dir, "charts/episodic_return")
    if curve:
        _plot_curve(curve, out / "learning_curve.png")
    return report


def load_trained(path: Path, **env_overrides: Any) -> tuple[dict, Any, Shop, Any, str]:
    """(checkpoint, run config, shop, trained agent, label) of the run saved at ``path``.

    ``env_overrides`` change runtime fields only (``num_users``, ``device``): the shop is the
    one the agent was trained in, which the checkpoint's fingerprint checks.
    """
    saved = load_checkpoint(path)
    cfg = OmegaConf.create(saved["config"])
    env_cfg = env_config_from(cfg.env, **env_overrides)
    if env_fingerprint(env_cfg) != saved["env_fingerprint"]:
        raise CheckpointError(f"checkpoint {path} does not match its own env config; it was edited or damaged.")
    shop = Shop(env_cfg)
    agent = make_agent(cfg.agent, shop, int(cfg.seed))
    agent.load_state_dict(move_to(saved["agent"], shop.device))
    return saved, cfg, shop, agent, f"trained ({str(cfg.agent._target_).rsplit('.', 1)[-1]})"


def _exact_values(shop: Shop, agent: Any) -> dict[str, float]:
    """V* and the exact value of ``agent``'s greedy policy: expected undiscounted session return."""
    from rlrec.sim.tabular import (build_tabular_mdp, evaluate_policy, start_value, state_observations,
                                   value_iteration)

    mdp = build_tabular_mdp(shop)
    gamma = 1.0
    _, v_star = value_iteration(mdp, gamma=gamma)
    actions = torch.cat([agent.act(state_observations(shop)).squeeze(1).cpu(), torch.zeros(1, dtype=torch.long)])
    optimal = start_value(mdp, v_star)
    exact = start_value(mdp, evaluate_policy(mdp, actions, gamma=gamma))
    return {"v_star": optimal, "policy_value": exact, "gap": optimal - exact, "ratio": exact / optimal}


def read_scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` pairs of ``tag`` from the TensorBoard event files under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not Path(log_dir).is_dir():
        return []
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return []
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def format_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Evaluation: {report['eval_users']} sessions per policy, same users (seed {report['eval_seed']})",
             "", f"Checkpoint: `{report['checkpoint']}` after {report['env_steps']} environment steps.", "",
             "Mean with 95% confidence interval.", "",
             "| policy | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for label, metrics in report["policies"].items():
        cells = []
        for key in METRICS:
            m = metrics[key]
            ci = m.get("ci95", 0.0)
            cells.append(f"{m['mean']:.3f}" + (f" ± {ci:.3f}" if ci else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if "oracle" in report:
        o = report["oracle"]
        lines += ["", "## Exact values (tiny shop)", "",
                  f"V* = {o['v_star']:.4f}; exact value of the trained policy = {o['policy_value']:.4f}; "
                  f"gap = {o['gap']:.4f} ({100 * o['ratio']:.2f}% of optimal)."]
    return "\n".join(lines) + "\n"


def _plot_policies(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(report["policies"])
    means = [report["policies"][p]["return"]["mean"] for p in labels]
    errors = [report["policies"][p]["return"]["ci95"] for p in labels]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(labels, means, yerr=errors, capsize=6, color=["tab:blue"] + ["tab:gray"] * (len(labels) - 1))
    ax.set_ylabel("mean session return (95% CI)")
    ax.set_title("Policies on the same evaluation users")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_curve(curve: list[tuple[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, values = zip(*curve)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, values)
    ax.set_xlabel("user-steps")
    ax.set_ylabel("episodic return (training)")
    ax.set_title("Learning curve")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
