"""Rollouts and metrics with confidence intervals.

:func:`run_sessions` plays exactly one whole session per user row: every row starts a
fresh session at ``reset``, and a row's numbers stop counting when its first session ends.
Counting only completed sessions inside a fixed window instead would over-represent short
sessions; this way every session is counted once, whatever its length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from rlrec.sim.env import Observation, Shop

Policy = Callable[[Observation], torch.Tensor]
"""Maps the current observation to a slate [B, K] (greedy: no exploration)."""


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
    slate_size: int

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean and 95% CI half-width of the standard metrics."""
        return {
            "return": mean_ci(self.session_return),
            "length": mean_ci(self.length),
            "ctr": mean_ci(self.clicks / self.length.clamp_min(1)),  # clicks per slate
            "purchase_rate": mean_ci(self.purchases / self.length.clamp_min(1)),  # purchases per slate
            "purchases": mean_ci(self.purchases),
            "avg_rating": _rating_mean_ci(self.rating_counts),
            "revenue": mean_ci(self.revenue),
            "coverage": {"mean": float(self.items_shown.double().mean()), "ci95": 0.0},  # a fraction, not a sample
        }


def _rating_mean_ci(counts: torch.Tensor, z: float = 1.96) -> dict[str, float]:
    """Mean rating and its 95% CI from the counts of ratings 1..5 (each purchase one sample)."""
    n = float(counts.sum())
    if n == 0:
        return {"mean": 0.0, "ci95": 0.0, "n": 0}
    values = torch.arange(1, 6, dtype=torch.float64, device=counts.device)
    mean = float((counts * values).sum() / n)
    var = float((counts * (values - mean) ** 2).sum() / max(n - 1, 1))
    return {"mean": mean, "ci95": z * math.sqrt(var / n), "n": int(n)}


def mean_ci(values: torch.Tensor, z: float = 1.96) -> dict[str, float]:
    """Mean and normal-approximation 95% CI half-width of a sample."""
    values = values.double().flatten()
    n = values.numel()
    if n < 2:
        return {"mean": float(values.mean()) if n else 0.0, "ci95": 0.0, "n": n}
    return {"mean": float(values.mean()), "ci95": z * float(values.std()) / math.sqrt(n), "n": n}


@torch.no_grad()
def run_sessions(shop: Shop, policy: Policy | Callable[[Shop], torch.Tensor], seed: int | None = None,
                 privileged: bool = False) -> SessionStats:
    """Play one full session per user row of ``shop`` under ``policy`` and return per-session totals.

    Args:
        shop: the simulator; it is reset (with ``seed`` if given, for common random numbers).
        policy: ``policy(obs) -> slate``, or ``policy(shop) -> slate`` when ``privileged``.
        seed: reseeds the shop's generator first, so two policies can face the same users.
        privileged: pass the shop itself (for oracle rules that read hidden state).
    """
    obs = shop.reset(seed=seed)
    b, dev = shop.num_users, shop.device
    alive = torch.ones(b, dtype=torch.bool, device=dev)
    zeros = lambda dtype=torch.float64: torch.zeros(b, dtype=dtype, device=dev)  # noqa: E731
    ret, length, clicks, purchases, rating_sum, revenue = zeros(), zeros(torch.long), zeros(), zeros(), zeros(), zeros()
    rating_counts = torch.zeros(6, dtype=torch.long, device=dev)
    items_shown = torch.zeros(shop.n_items, dtype=torch.bool, device=dev)
    for _ in range(shop.cfg.horizon):
        slate = policy(shop) if privileged else policy(obs)
        obs, reward, done, info = shop.step(slate)
        live = alive.double()
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
    return SessionStats(ret, length, clicks, purchases, rating_sum, revenue, rating_counts[1:], items_shown,
                        shop.slate_size)


def compare_policies(shop: Shop, policies: dict[str, Any], seed: int) -> dict[str, dict[str, dict[str, float]]]:
    """:meth:`SessionStats.summary` of each agent in ``policies`` ({label: agent}), all on the same
    users and random numbers (the shop is reseeded with ``seed`` before each)."""
    return {label: run_sessions(shop, agent.act, seed=seed).summary() for label, agent in policies.items()}
