"""Hand-written policies that read the shop's hidden state: yardsticks, not agents.

``myopic_slate`` is the ceiling of every one-step method: it knows each user's true
expected immediate reward. ``quality_aware_slate`` is a simple long-horizon rule: it also
knows the hidden quality and prefers items that will be rated well, which keeps users
satisfied and in the shop. The gap between the two is the value of planning ahead.
"""

from __future__ import annotations

import torch

from rlrec.sim import response
from rlrec.sim.env import Shop


def myopic_slate(shop: Shop) -> torch.Tensor:
    """[B, K] the K items with the highest true expected immediate reward for each user."""
    return shop.expected_item_reward().topk(shop.slate_size, dim=1).indices


def quality_aware_slate(shop: Shop) -> torch.Tensor:
    """[B, K] items ranked by expected reward times the net chance of a good rating.

    An item whose buyers rate it badly more often than well scores 0: it would lower
    satisfaction, and satisfied users buy more and stay longer.
    """
    cfg, catalog, state = shop.cfg, shop.catalog, shop.state
    fit = state.interest @ catalog.latent.T
    ratings = response.rating_probs(catalog.quality.expand_as(fit), fit, cfg)
    net_good = ratings[..., cfg.good_rating - 1:].sum(-1) - ratings[..., :cfg.bad_rating].sum(-1)
    score = shop.expected_item_reward() * net_good.clamp_min(0.0)
    return score.topk(shop.slate_size, dim=1).indices
