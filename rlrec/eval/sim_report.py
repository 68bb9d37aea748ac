"""A trained run against the baselines in its own shop: ``python evaluate.py run_dir=<a train run>``.

Every policy faces the same evaluation users with the same random numbers (the shop is
reseeded with ``eval_seed`` before each), so their differences are not noise in who showed
up. Writes ``eval.json``, ``eval.md``, ``learning_curve.png`` (from the run's TensorBoard
events) and ``policies.png``. On an enumerable shop it adds V*, the exact value of the
trained policy and the gap (any slate size: the MDP's actions are ordered slates).

The evaluation opens the catalog: items held out in training (``env.holdout_items``) are in
it, and a "New items" section compares them with the warm ones. With ``shifts`` it also plays
every policy in the held-out-users and shifted shops (:mod:`rlrec.eval.shifts`) and reports
each one's gap to the training shop ("Generalisation").
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rlrec.eval.output import bar_chart, line_chart, markdown_table, mean_ci_cell, write_report
from rlrec.eval.rollout import ITEM_KIND_METRICS, METRICS, compare_policies, make_baselines
from rlrec.eval.shifts import check_same_catalog, shop_config
from rlrec.sim.env import Shop
from rlrec.sim.tabular import build_tabular_mdp, enumeration_problem, greedy_policy_value
from rlrec.train.run import catalog_fingerprint, load_run, resolve_checkpoint


def evaluate_run(
    run_dir: str | None = None,
    checkpoint: str | None = None,
    eval_users: int = 2048,
    eval_seed: int = 20_000,
    out_dir: str | Path | None = None,
    device: str | None = None,
    baselines: tuple[str, ...] = ("random", "myopic_oracle"),
    shifts: tuple[str, ...] = (),
    heldout_user_seed: int = 1,
) -> dict[str, Any]:
    """Evaluate the trained policy of a run and the baselines; write the report files; return the report.

    ``shifts``: also evaluate in these shops (``"heldout_users"``, ``"shift_<name>"``), users of
    ``heldout_user_seed`` for the held-out ones.
    """
    path = resolve_checkpoint(run_dir, checkpoint)
    overrides = {"num_users": eval_users} | ({"device": device} if device else {})
    run = load_run(path, **overrides)
    shop = run.shop.open_catalog()
    seed = int(run.cfg.seed)
    out = Path(out_dir) if out_dir is not None else path.parent
    # every shop is built (and a shift that changes the catalog refused) before anything is played
    shifted = {name: Shop(shop_config(shop.cfg, name, heldout_user_seed)).open_catalog() for name in shifts}
    for name, other in shifted.items():
        check_same_catalog(catalog_fingerprint(shop), other, name)
    policies = {run.label: run.agent, **make_baselines(baselines, shop, seed)}

    report: dict[str, Any] = {
        "checkpoint": str(path),
        "env_steps": int(run.checkpoint["env_step"]),
        "eval_users": eval_users,
        "eval_seed": eval_seed,
        "policies": compare_policies(shop, policies, eval_seed),
    }
    if shop.item_new is not None:
        trained_until = run.checkpoint["shop"]["catalog_step"]  # the catalog's clock when training stopped
        report["new_items"] = {
            "count": int(shop.item_new.sum()),
            "share_of_catalog": float(shop.item_new.double().mean()),
            "arrived_in_training": int(shop.item_new.logical_and(shop.arrival.le(trained_until)).sum()),
        }
    if shifted:
        report["generalization"] = {
            "heldout_user_seed": heldout_user_seed,
            "shops": {
                name: compare_policies(
                    other, {run.label: run.agent, **make_baselines(baselines, other, seed)}, eval_seed
                )
                for name, other in shifted.items()
            },
        }
        report["generalization"]["gaps"] = generalization_gaps(report["policies"], report["generalization"]["shops"])
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


def generalization_gaps(
    train: dict[str, dict[str, dict[str, float]]], shops: dict[str, dict[str, dict[str, dict[str, float]]]]
) -> dict[str, dict[str, dict[str, float]]]:
    """``{shop: {policy: gap}}``: each policy's mean session return in ``shop`` minus its return in the
    training shop, with a 95% CI half-width (independent samples: the two half-widths in quadrature)
    and the ratio of the two returns."""
    gaps: dict[str, dict[str, dict[str, float]]] = {}
    for name, policies in shops.items():
        gaps[name] = {}
        for label, metrics in policies.items():
            here, there = metrics["episodic_return"], train[label]["episodic_return"]
            gaps[name][label] = {
                "mean": here["mean"] - there["mean"],
                "ci95": math.hypot(here["ci95"], there["ci95"]),
                "ratio": here["mean"] / there["mean"] if there["mean"] else float("nan"),
            }
    return gaps


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
    names = [name for name in METRICS if name not in ITEM_KIND_METRICS]
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
    if "new_items" in report:
        lines += ["", *new_items_section(report["policies"], report["new_items"])]
    if "generalization" in report:
        lines += ["", *generalization_section(report["policies"], report["generalization"])]
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


def new_items_section(policies: dict[str, dict[str, dict[str, float]]], new_items: dict[str, Any]) -> list[str]:
    """Markdown lines: each policy's figures on the new items against the warm ones."""
    header = ["policy", *ITEM_KIND_METRICS]
    rows = [[label] + [mean_ci_cell(m[name]) for name in ITEM_KIND_METRICS] for label, m in policies.items()]
    return [
        "## New items",
        "",
        f"{new_items['count']} new items ({100 * new_items['share_of_catalog']:.0f}% of the catalog, "
        f"{new_items['arrived_in_training']} of them arrived during training, the rest never shown in it); "
        "warm items are those in the catalog from the start. CTR and purchase rate per item shown.",
        "",
        markdown_table(header, rows),
    ]


def generalization_section(train: dict[str, dict[str, dict[str, float]]], general: dict[str, Any]) -> list[str]:
    """Markdown lines: every policy's mean session return in each shop, and its gap to the training shop."""
    labels = list(train)
    rows = [["training shop"] + [mean_ci_cell(train[label]["episodic_return"]) for label in labels]]
    for name, policies in general["shops"].items():
        cells = []
        for label in labels:
            gap = general["gaps"][name][label]
            cells.append(
                f"{mean_ci_cell(policies[label]['episodic_return'])} ({gap['mean']:+.3f} ± {gap['ci95']:.3f}, "
                f"{100 * (gap['ratio'] - 1):+.0f}%)"
            )
        rows.append([name] + cells)
    return [
        "## Generalisation",
        "",
        f"Mean session return (95% CI) in each shop, and in brackets the gap to the training shop. "
        f"heldout_users: another population of customers (user seed {general['heldout_user_seed']}); "
        "shift_*: conf/env/shift_*.yaml applied to the run's shop. Same catalog everywhere.",
        "",
        markdown_table(["shop", *labels], rows),
    ]
