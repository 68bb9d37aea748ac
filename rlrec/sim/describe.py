"""What a shop looks like from the outside: ``python -m rlrec.sim.describe [preset]``.

Reports, under a random policy, the myopic oracle and the quality-aware rule, the numbers a
shop owner would recognise: clicks per slate, purchases per click, the rating
distribution and the mean session length. README.md quotes the default shop's figures.
"""

from __future__ import annotations

import sys
from typing import Any

from rlrec.config import env_preset
from rlrec.evaluation import run_sessions
from rlrec.sim.env import Shop
from rlrec.sim.privileged import myopic_slate, quality_aware_slate

POLICIES = {
    "random": lambda shop: shop.random_slate(),
    "myopic": myopic_slate,
    "quality_aware": quality_aware_slate,
}


def describe(env_cfg: Any = None, num_users: int = 2048, seed: int = 0,
             policies: tuple[str, ...] = ("random", "myopic", "quality_aware")) -> dict[str, dict[str, float]]:
    """Behaviour of the shop ``env_cfg`` (default preset if None) under each policy, one session per user."""
    cfg = env_cfg if env_cfg is not None else env_preset("default")
    shop = Shop(cfg, num_users=num_users)
    report = {}
    for name in policies:
        stats = run_sessions(shop, POLICIES[name], seed=seed, privileged=True)
        clicks, purchases = float(stats.clicks.sum()), float(stats.purchases.sum())
        summary = stats.summary()
        rating_share = (stats.rating_counts.double() / stats.rating_counts.sum().clamp_min(1)).tolist()
        report[name] = {
            "clicks_per_slate": clicks / float(stats.length.sum()),
            "purchases_per_click": purchases / max(clicks, 1.0),
            "mean_rating": summary["avg_rating"]["mean"],
            **{f"rating_{r + 1}_share": share for r, share in enumerate(rating_share)},
            "session_length": summary["length"]["mean"],
            "session_return": summary["return"]["mean"],
            "session_return_ci95": summary["return"]["ci95"],
        }
    return report


def format_report(report: dict[str, dict[str, float]]) -> str:
    """A markdown table of :func:`describe`'s output."""
    lines = ["| policy | clicks/slate | purchases/click | ratings 1..5 (share) | mean rating | session length | return (95% CI) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in report.items():
        shares = " / ".join(f"{r[f'rating_{k}_share']:.2f}" for k in range(1, 6))
        lines.append(f"| {name} | {r['clicks_per_slate']:.3f} | {r['purchases_per_click']:.3f} | {shares} | "
                     f"{r['mean_rating']:.2f} | {r['session_length']:.2f} | "
                     f"{r['session_return']:.2f} ± {r['session_return_ci95']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    preset = sys.argv[1] if len(sys.argv) > 1 else "default"
    print(format_report(describe(env_preset(preset, device="cpu"))))
