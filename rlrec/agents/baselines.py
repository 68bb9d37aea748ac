"""Honest baselines, all following the Agent protocol.

- :class:`RandomAgent`: uniformly random slates.
- :class:`PopularAgent`: the most purchased items so far, the same slate for everyone.
- :class:`MyopicAgent`: privileged; the true top-K by expected immediate reward. The
  ceiling of every one-step method.
- :class:`BanditAgent`: a learning contextual bandit, what a conventional recommender
  does: the DQN's networks trained to predict the immediate reward (gamma = 0) from user,
  history and item features, acting epsilon-greedily.
"""

from __future__ import annotations

from typing import Any

import torch

from rlrec.agents.base import Transition, batch_size, explore_rows, slate_probs
from rlrec.agents.dqn import DQNAgent
from rlrec.sim.env import Observation, Shop, random_slates
from rlrec.sim.privileged import myopic_slate
from rlrec.utils import make_generator, resolve_device


class _Stateless:
    """Shared no-op learning for agents that do not learn."""

    def observe(self, transition: Transition) -> None:
        pass

    def update(self) -> dict[str, torch.Tensor]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class RandomAgent(_Stateless):
    """Uniformly random slates of distinct items."""

    def __init__(self, n_items: int, slate_size: int, *, seed: int = 0, device: str = "auto") -> None:
        self.n_items, self.slate_size = n_items, slate_size
        self.generator = make_generator(seed, resolve_device(device))

    def act(self, obs: Observation, explore: bool = False) -> torch.Tensor:
        return random_slates(batch_size(obs), self.n_items, self.slate_size, self.generator)

    def action_probs(self, obs: Observation, slot: torch.Tensor | None = None) -> torch.Tensor:
        # every slot of a uniformly random slate of distinct items is uniform over the items
        return torch.full((batch_size(obs), self.n_items), 1.0 / self.n_items, dtype=torch.float64,
                          device=self.generator.device)


class PopularAgent:
    """Shows the K items bought most often so far; explores with random slates at rate ``epsilon``."""

    def __init__(self, n_items: int, slate_size: int, *, epsilon: float = 0.1, seed: int = 0,
                 device: str = "auto") -> None:
        self.n_items, self.slate_size, self.epsilon = n_items, slate_size, epsilon
        self.device = resolve_device(device)
        self.generator = make_generator(seed, self.device)
        # ties broken by a fixed random order, not by item id
        tie_break = torch.rand(n_items, generator=self.generator, device=self.device) * 1e-3
        self.purchases = tie_break

    def act(self, obs: Observation, explore: bool = False) -> torch.Tensor:
        b = batch_size(obs)
        top = self.purchases.topk(self.slate_size).indices.expand(b, -1)
        if not explore:
            return top
        return explore_rows(top, random_slates(b, self.n_items, self.slate_size, self.generator), self.epsilon,
                            self.generator)

    def action_probs(self, obs: Observation, slot: torch.Tensor | None = None) -> torch.Tensor:
        return slate_probs(self.act(obs), slot, self.n_items)

    def observe(self, transition: Transition) -> None:
        self.purchases.index_add_(0, transition["action"], transition["purchase"].to(self.purchases.dtype))

    def update(self) -> dict[str, torch.Tensor]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"purchases": self.purchases, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.purchases.copy_(state["purchases"])
        self.generator.set_state(state["generator"])


class MyopicAgent(_Stateless):
    """Privileged: reads the shop's hidden state and shows the true top-K by expected immediate reward.

    ``act`` must be called with the shop's current observation (as the trainer and the
    evaluator do); the observation itself is not read.
    """

    def __init__(self, shop: Shop, *, seed: int = 0) -> None:
        self.shop = shop
        self.generator = make_generator(seed, shop.device)

    def act(self, obs: Observation, explore: bool = False) -> torch.Tensor:
        return myopic_slate(self.shop)

    def action_probs(self, obs: Observation, slot: torch.Tensor | None = None) -> torch.Tensor:
        return slate_probs(myopic_slate(self.shop), slot, self.shop.n_items)


class BanditAgent(DQNAgent):
    """A contextual bandit: :class:`DQNAgent` with ``gamma = 0``, so Q is the expected immediate reward.

    Accepts the DQN's keyword arguments (``gamma`` is fixed at 0; a target network is moot).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.update(gamma=0.0, double_dqn=False, n_step=1)
        super().__init__(*args, **kwargs)
