"""A trained run against the baselines in its own shop: ``python evaluate.py run_dir=<a train run>``.

Every policy faces the same evaluation users with the same random numbers (the shop is
reseeded with ``eval_seed`` before each), so their differences are not noise in who showed
up. Writes ``eval.json``, ``eval.md``, ``learning_curve.png`` (from the run's TensorBoard
events) and ``policies.png``. On an enumerable shop it adds V*, the exact value of the
trained policy and the gap (any slate size: the MDP's actions are ordered slates).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlrec.eval.output import bar_chart, line_chart, markdown_table, mean_ci_cell, write_report
from rlrec.eval.rollout import METRICS, compare_policies, make_baselines
from rlrec.sim.env import Shop
from rlrec.sim.tabular import build_tabular_mdp, enumeration_problem, greedy_policy_value
from rlrec.train.run import load_run, resolve_checkpoint


def evaluate_run(
    run_dir: str | None = None,
    checkpoint: str | None = None,
    eval_users: int = 2048,
    eval_seed: int = 20_000,
    out_dir: str | Path | None = None,
    device: str | None = None,
    baselines: tuple[str, ...] = ("random", "myopic_oracle"),
) -> dict[str, Any]:
    """Evaluate the trained policy of a run and the baselines; write the report files; return the report."""
    path = resolve_checkpoint(run_dir, checkpoint)
    overrides = {"num_users": eval_users} | ({"device": device} if device else {})
    run = load_run(path, **overrides)
    shop = run.shop
    out = Path(out_dir) if out_dir is not None else path.parent
    policies = {run.label: run.agent, **make_baselines(baselines, shop, int(run.cfg.seed))}

    report: dict[str, Any] = {
        "checkpoint": str(path),
        "env_steps": int(run.checkpoint["env_step"]),
        "eval_users": eval_users,
        "eval_seed": eval_seed,
        "policies": compare_policies(shop, policies, eval_seed),
    }
    if enumeration_problem(shop.cfg) is None:
        report["oracle"] = exact_values(shop, run.agent)

    write_report(out, report, format_markdown(report))
    labels = list(report["policies"])
    returns = [report["policies"][p]["episodic_return"] for p in labels]
    errors = [r["ci95"] for r in returns]
    bar_chart(
        out / "policies.png",
        labels,
        {"return": ([r["mean"] for r in returns], errors, errors)},
        f"{METRICS['episodic_return']} (95% CI)",
        "Policies on the same evaluation users",
    )
    curve = read_scalars(path.parent / run.cfg.logger.log_dir, "charts/episodic_return")
    if curve:
        line_chart(out / "learning_curve.png", curve, "user-steps", "episodic return (training)", "Learning curve")
    return report


def exact_values(shop: Shop, agent: Any) -> dict[str, float]:
    """V* and the exact value of ``agent``'s greedy policy (expected undiscounted session return) on an
    enumerable shop, with the MDP's size."""
    mdp = build_tabular_mdp(shop)
    exact, optimal = greedy_policy_value(shop, agent, gamma=1.0, mdp=mdp)
    return {
        "v_star": optimal,
        "policy_value": exact,
        "gap": optimal - exact,
        "ratio": exact / optimal,
        "states": mdp.n_states,
        "slates": mdp.n_actions,
        "slate_size": mdp.slate_size,
    }


def read_scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` pairs of ``tag`` from the TensorBoard event files under ``log_dir``."""
    if not Path(log_dir).is_dir() or not any(Path(log_dir).glob("events.out.tfevents.*")):
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return []
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def format_markdown(report: dict[str, Any]) -> str:
    names = list(METRICS)
    rows = [[label] + [mean_ci_cell(metrics[name]) for name in names] for label, metrics in report["policies"].items()]
    lines = [
        f"# Evaluation: {report['eval_users']} sessions per policy, same users (seed {report['eval_seed']})",
        "",
        f"Checkpoint: `{report['checkpoint']}` after {report['env_steps']} environment steps.",
        "",
        "Mean with 95% confidence interval.",
        "",
        markdown_table(["policy"] + names, rows),
    ]
    if "oracle" in report:
        o = report["oracle"]
        lines += [
            "",
            f"## Exact values (enumerable shop: {o['states']} states, {o['slates']} slates of {o['slate_size']})",
            "",
            f"V* = {o['v_star']:.4f}; exact value of the trained policy = {o['policy_value']:.4f}; "
            f"gap = {o['gap']:.4f} ({100 * o['ratio']:.2f}% of optimal).",
        ]
    return "\n".join(lines) + "\n"
