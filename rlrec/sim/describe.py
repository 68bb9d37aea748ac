"""What a shop looks like from the outside: ``python -m rlrec.sim.describe [preset]``.

Reports, under the random policy and the privileged yardsticks (the myopic oracle and the
quality-aware rule), the numbers a shop owner would recognise: clicks per slate, purchases
per click, the rating distribution and the mean session length, under the metric names of
:data:`rlrec.eval.rollout.METRICS`. README.md quotes the default shop's figures.
"""

from __future__ import annotations

import sys
from typing import Any

from rlrec.config import env_preset
from rlrec.sim.env import Shop

POLICIES = ("random", "myopic_oracle", "quality_aware")


def describe(
    env_cfg: Any = None, num_users: int = 2048, seed: int = 0, policies: tuple[str, ...] = POLICIES
) -> dict[str, dict[str, Any]]:
    """Behaviour of the shop ``env_cfg`` (default preset if None) under each policy, one session per user.

    Returns ``{policy: {metric: {"mean", "ci95", "n"}, ..., "rating_share": [5 shares]}}``.
    """
    from rlrec.eval.rollout import make_baselines, run_sessions

    shop = Shop(env_preset("default") if env_cfg is None else env_cfg, num_users=num_users)
    report = {}
    for name, policy in make_baselines(policies, shop, seed).items():
        stats = run_sessions(shop, policy, seed=seed)
        report[name] = {**stats.summary(), "rating_share": stats.rating_share()}
    return report


def format_report(report: dict[str, dict[str, Any]]) -> str:
    """A markdown table of :func:`describe`'s output, its columns named as the metrics."""
    from rlrec.eval.output import markdown_table, mean_ci_cell

    rows = [
        [
            name,
            f"{r['ctr']['mean']:.3f}",
            f"{r['purchases_per_click']['mean']:.3f}",
            " / ".join(f"{share:.2f}" for share in r["rating_share"]),
            f"{r['avg_rating']['mean']:.2f}",
            f"{r['episode_length']['mean']:.2f}",
            mean_ci_cell(r["episodic_return"], 2),
        ]
        for name, r in report.items()
    ]
    return markdown_table(
        [
            "policy",
            "ctr",
            "purchases_per_click",
            "rating_share (1..5)",
            "avg_rating",
            "episode_length",
            "episodic_return (95% CI)",
        ],
        rows,
    )


if __name__ == "__main__":
    preset = sys.argv[1] if len(sys.argv) > 1 else "default"
    print(format_report(describe(env_preset(preset, device="cpu"))))
