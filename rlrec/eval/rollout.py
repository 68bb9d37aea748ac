"""Rollouts in the shop, the metrics every report uses, and the baselines they are compared with.

:func:`run_sessions` plays exactly one whole session per user row: every row starts a
fresh session at ``reset``, and a row's numbers stop counting when its first session ends.
Counting only completed sessions inside a fixed window instead would over-represent short
sessions; this way every session is counted once, whatever its length.

:data:`METRICS` names each figure once: TensorBoard tags (``charts/<name>``,
``eval/<name>``), ``eval.json``, ``eval.md``, ``describe`` and the benchmarks use these names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from rlrec.sim.env import Observation, Shop

METRICS: dict[str, str] = {
    "episodic_return": "mean session return",
    "episode_length": "mean session length (steps)",
    "ctr": "clicks per slate shown",
    "purchase_rate": "purchases per slate shown",
    "purchases_per_click": "purchases per click",
    "avg_rating": "mean rating of the purchases (1..5)",
    "purchases_per_session": "purchases per session",
    "revenue_per_session": "revenue per session",
    "coverage": "share of the catalog shown at least once",
    # in a shop with new items (env.holdout_items > 0): items not in the catalog when it started
    "new_item_share": "share of slates showing at least one new item",
    "new_item_ctr": "clicks per new item shown",
    "warm_item_ctr": "clicks per warm item shown (items in the catalog from the start)",
    "new_item_purchase_rate": "purchases per new item shown",
    "warm_item_purchase_rate": "purchases per warm item shown",
    "new_item_rating": "mean rating of the new items bought (1..5)",
    "warm_item_rating": "mean rating of the warm items bought (1..5)",
}
"""Every metric of a rollout, by its one name, with what it measures."""

ITEM_KIND_METRICS = tuple(name for name in METRICS if name.startswith(("new_item", "warm_item")))
"""The metrics of new against warm items: reported only for shops with new items."""

Policy = Callable[[Observation], torch.Tensor]
"""Maps the current observation to a slate [B, K] (greedy: no exploration)."""


def mean_ci(values: torch.Tensor, z: float = 1.96) -> dict[str, float]:
    """Mean and normal-approximation 95% CI half-width of a sample."""
    values = values.double().flatten()
    n = values.numel()
    if n < 2:
        return {"mean": float(values.mean()) if n else 0.0, "ci95": 0.0, "n": n}
    return {"mean": float(values.mean()), "ci95": z * float(values.std()) / math.sqrt(n), "n": n}


def ratio_ci(numerator: torch.Tensor, denominator: torch.Tensor, z: float = 1.96) -> dict[str, float]:
    """``sum(numerator) / sum(denominator)`` over sessions, with a delta-method 95% CI half-width.

    Sessions are the independent units (a rate pooled over the slates of many sessions).
    """
    num, den = numerator.double().flatten(), denominator.double().flatten()
    n, total = num.numel(), float(den.sum())
    if n == 0 or total == 0:
        return {"mean": 0.0, "ci95": 0.0, "n": n}
    ratio = float(num.sum()) / total
    if n < 2:
        return {"mean": ratio, "ci95": 0.0, "n": n}
    residual = num - ratio * den
    half_width = z * float(residual.std()) / (math.sqrt(n) * total / n)
    return {"mean": ratio, "ci95": half_width, "n": n}


def _rating_mean_ci(counts: torch.Tensor, z: float = 1.96) -> dict[str, float]:
    """Mean rating and its 95% CI from the counts of ratings 1..5 (each purchase one sample)."""
    n = float(counts.sum())
    if n == 0:
        return {"mean": 0.0, "ci95": 0.0, "n": 0}
    values = torch.arange(1, 6, dtype=torch.float64, device=counts.device)
    mean = float((counts * values).sum() / n)
    var = float((counts * (values - mean) ** 2).sum() / max(n - 1, 1))
    return {"mean": mean, "ci95": z * math.sqrt(var / n), "n": int(n)}


@dataclass
class ItemKindStats:
    """Per-session totals over one kind of item (new or warm): [B] tensors, and [5] rating counts."""

    shown: torch.Tensor  # items of this kind shown (slots)
    clicks: torch.Tensor  # clicks on them
    purchases: torch.Tensor  # purchases of them
    rating_counts: torch.Tensor  # [5] ratings 1..5 of their purchases, over all sessions

    @staticmethod
    def concat(parts: list[ItemKindStats]) -> ItemKindStats:
        cat = lambda name: torch.cat([getattr(p, name) for p in parts])
        return ItemKindStats(cat("shown"), cat("clicks"), cat("purchases"), sum(p.rating_counts for p in parts))


@dataclass
class SessionStats:
    """Per-session totals, one entry per user row: tensors of shape [B]."""

    session_return: torch.Tensor
    length: torch.Tensor
    clicks: torch.Tensor
    purchases: torch.Tensor
    rating_sum: torch.Tensor
    revenue: torch.Tensor
    rating_counts: torch.Tensor  # [5] number of ratings 1..5 over all sessions
    items_shown: torch.Tensor  # [N] bool: was the item shown at least once
    # in a shop with new items: slates that showed at least one [B], and each kind's totals
    slates_with_new: torch.Tensor | None = None
    new_items: ItemKindStats | None = None
    warm_items: ItemKindStats | None = None

    @staticmethod
    def concat(parts: Iterable[SessionStats]) -> SessionStats:
        """The sessions of several rollouts (e.g. seeds) pooled into one sample."""
        parts = list(parts)
        cat = lambda name: torch.cat([getattr(p, name) for p in parts])
        kinds = all(p.new_items is not None for p in parts)
        return SessionStats(
            cat("session_return"),
            cat("length"),
            cat("clicks"),
            cat("purchases"),
            cat("rating_sum"),
            cat("revenue"),
            sum(p.rating_counts for p in parts),
            torch.stack([p.items_shown for p in parts]).any(0),
            cat("slates_with_new") if kinds else None,
            ItemKindStats.concat([p.new_items for p in parts]) if kinds else None,
            ItemKindStats.concat([p.warm_items for p in parts]) if kinds else None,
        )

    def summary(self) -> dict[str, dict[str, float]]:
        """Every metric of :data:`METRICS`: mean and 95% CI half-width (and the sample size)."""
        length = self.length.double()
        kinds = {}
        if self.new_items is not None:
            new, warm = self.new_items, self.warm_items
            kinds = {
                "new_item_share": ratio_ci(self.slates_with_new, length),
                "new_item_ctr": ratio_ci(new.clicks, new.shown),
                "warm_item_ctr": ratio_ci(warm.clicks, warm.shown),
                "new_item_purchase_rate": ratio_ci(new.purchases, new.shown),
                "warm_item_purchase_rate": ratio_ci(warm.purchases, warm.shown),
                "new_item_rating": _rating_mean_ci(new.rating_counts),
                "warm_item_rating": _rating_mean_ci(warm.rating_counts),
            }
        return {
            "episodic_return": mean_ci(self.session_return),
            "episode_length": mean_ci(length),
            "ctr": ratio_ci(self.clicks, length),
            "purchase_rate": ratio_ci(self.purchases, length),
            "purchases_per_click": ratio_ci(self.purchases, self.clicks),
            "avg_rating": _rating_mean_ci(self.rating_counts),
            "purchases_per_session": mean_ci(self.purchases),
            "revenue_per_session": mean_ci(self.revenue),
            "coverage": {
                "mean": float(self.items_shown.double().mean()),
                "ci95": 0.0,
                "n": int(self.items_shown.numel()),
            },  # a fraction of the catalog, not a sample
            **kinds,
        }

    def rating_share(self) -> list[float]:
        """Share of each rating 1..5 among the purchases."""
        return (self.rating_counts.double() / self.rating_counts.sum().clamp_min(1)).tolist()


@torch.no_grad()
def run_sessions(shop: Shop, policy: Any, seed: int | None = None) -> SessionStats:
    """Play one full session per user row of ``shop`` under ``policy`` and return per-session totals.

    Args:
        shop: the simulator; it is reset (with ``seed`` if given, for common random numbers).
            The policy recommends from its catalog (``shop.item_available``); in a shop with new
            items the totals are also kept per kind of item (new or warm).
        policy: an agent or yardstick (its greedy ``act`` is used) or a function ``obs -> slate``.
        seed: reseeds the shop's generator first, so two policies can face the same users.
    """
    use_catalog = getattr(policy, "use_catalog", None)
    previous = use_catalog(shop.item_available) if use_catalog is not None else None
    try:
        return _run_sessions(shop, policy, seed)
    finally:
        if use_catalog is not None:
            use_catalog(previous)


def _run_sessions(shop: Shop, policy: Any, seed: int | None) -> SessionStats:
    act = policy.act if hasattr(policy, "act") else policy
    obs = shop.reset(seed=seed)
    b, dev = shop.num_users, shop.device
    alive = torch.ones(b, dtype=torch.bool, device=dev)
    zeros = lambda dtype=torch.float64: torch.zeros(b, dtype=dtype, device=dev)
    ret, length, clicks, purchases, rating_sum, revenue = zeros(), zeros(torch.long), zeros(), zeros(), zeros(), zeros()
    rating_counts = torch.zeros(6, dtype=torch.long, device=dev)
    items_shown = torch.zeros(shop.n_items, dtype=torch.bool, device=dev)
    is_new = shop.item_new
    if is_new is not None:
        slates_with_new = zeros()
        kinds = {
            kind: ItemKindStats(zeros(), zeros(), zeros(), torch.zeros(6, dtype=torch.long, device=dev))
            for kind in ("new", "warm")
        }
    for _ in range(shop.cfg.horizon):
        slate = act(obs)
        obs, reward, done, info = shop.step(slate)
        live = alive.double()
        if is_new is not None:
            shown_new = is_new[slate].double().sum(1)
            acted_new = is_new[info["item"]]  # the clicked item (or the first shown, never clicked)
            slates_with_new += (shown_new > 0).double() * live
            for kind, stats in kinds.items():
                mine = acted_new if kind == "new" else ~acted_new
                stats.shown += (shown_new if kind == "new" else slate.shape[1] - shown_new) * live
                stats.clicks += (info["click"] & mine).double() * live
                stats.purchases += (info["purchase"] & mine).double() * live
                stats.rating_counts += torch.bincount(info["rating"][alive & mine], minlength=6)[:6]
        ret += reward.double() * live
        length += alive.long()
        clicks += info["click"].double() * live
        purchases += info["purchase"].double() * live
        rating_sum += info["rating"].double() * live
        revenue += (info["price"] * info["purchase"]).double() * live
        rating_counts += torch.bincount(info["rating"][alive], minlength=6)[:6]
        items_shown[slate[alive].flatten()] = True
        alive &= ~done
    # every session has ended by the horizon, so nothing is cut short
    stats = SessionStats(ret, length, clicks, purchases, rating_sum, revenue, rating_counts[1:], items_shown)
    if is_new is not None:
        for kind in kinds.values():
            kind.rating_counts = kind.rating_counts[1:]
        stats.slates_with_new, stats.new_items, stats.warm_items = slates_with_new, kinds["new"], kinds["warm"]
    return stats


def compare_policies(shop: Shop, policies: dict[str, Any], seed: int) -> dict[str, dict[str, dict[str, float]]]:
    """:meth:`SessionStats.summary` of each policy in ``policies`` ({label: agent or yardstick}), all on
    the same users and random numbers (the shop is reseeded with ``seed`` before each)."""
    return {label: run_sessions(shop, policy, seed=seed).summary() for label, policy in policies.items()}


# ----------------------------------------------------------------------------- baselines
def baseline_names() -> list[str]:
    """Names that evaluations accept as baselines: the fixed agents and the privileged yardsticks."""
    from rlrec.agents import AGENTS, agent_class
    from rlrec.sim.privileged import YARDSTICKS

    return [name for name in AGENTS if not agent_class(name).learns] + list(YARDSTICKS)


def check_baseline_names(names: Iterable[str], field_name: str) -> None:
    """Raise :class:`~rlrec.config.ConfigError` naming ``field_name`` if a name is not a baseline."""
    from rlrec.config import ConfigError

    valid = baseline_names()
    unknown = [name for name in names if name not in valid]
    if unknown:
        raise ConfigError(f"{field_name} = {list(names)} names unknown baseline(s) {unknown}; choose from {valid}.")


def make_baselines(names: Iterable[str], shop: Shop, seed: int) -> dict[str, Any]:
    """{name: policy} for baseline ``names`` playing in ``shop``: yardsticks read it, agents see its spec."""
    from rlrec.agents import agent_class
    from rlrec.agents.base import AgentSpec
    from rlrec.sim.privileged import YARDSTICKS, Yardstick

    names = list(names)
    check_baseline_names(names, "baselines")
    spec = AgentSpec.from_shop(shop)
    return {
        name: Yardstick(name, shop)
        if name in YARDSTICKS
        else agent_class(name)(spec, seed=seed, device=str(shop.device))
        for name in names
    }
