"""Hand-written policies that read the shop's hidden state: yardsticks, not agents.

``myopic_oracle`` is the ceiling of every one-step method: it knows each user's true
expected immediate reward. ``quality_aware`` is a simple long-horizon rule: it also knows
the hidden quality and prefers items that will be rated well, which keeps users satisfied
and in the shop. The gap between the two is the value of planning ahead.

They are named in :data:`YARDSTICKS`, the names every report and benchmark uses, and play
through :class:`Yardstick`, which has an agent's ``act`` but reads the shop, not the
observation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlrec.sim import response
from rlrec.sim.env import Observation, Shop


def in_catalog(shop: Shop, scores: torch.Tensor) -> torch.Tensor:
    """``scores`` [B, N] with the items not in the shop's catalog now set to -inf."""
    if shop.item_available is None:
        return scores
    return scores.masked_fill(~shop.item_available, float("-inf"))


def myopic_slate(shop: Shop) -> torch.Tensor:
    """[B, K] the K items with the highest true expected immediate reward for each user."""
    return in_catalog(shop, shop.expected_item_reward()).topk(shop.slate_size, dim=1).indices


def quality_aware_slate(shop: Shop) -> torch.Tensor:
    """[B, K] items ranked by expected reward times the net chance of a good rating.

    An item whose buyers rate it badly more often than well scores 0: it would lower
    satisfaction, and satisfied users buy more and stay longer.
    """
    cfg, catalog, state = shop.cfg, shop.catalog, shop.state
    fit = state.interest @ catalog.latent.T
    ratings = response.rating_probs(catalog.quality.expand_as(fit), fit, cfg)
    net_good = ratings[..., cfg.good_rating - 1 :].sum(-1) - ratings[..., : cfg.bad_rating].sum(-1)
    score = shop.expected_item_reward() * net_good.clamp_min(0.0)
    return in_catalog(shop, score).topk(shop.slate_size, dim=1).indices


YARDSTICKS: dict[str, Callable[[Shop], torch.Tensor]] = {
    "myopic_oracle": myopic_slate,
    "quality_aware": quality_aware_slate,
}
"""The privileged rules by name: the same names in configs, reports, benchmarks and ``describe``."""


class Yardstick:
    """A privileged rule playing in ``shop``: ``act(obs)`` reads the shop's current hidden state.

    It must be called with the shop's current observation, as the evaluator does; the
    observation itself is not read.
    """

    def __init__(self, name: str, shop: Shop) -> None:
        self.name, self.shop, self.rule = name, shop, YARDSTICKS[name]

    def act(self, obs: Observation, explore: bool = False) -> torch.Tensor:
        return self.rule(self.shop)
