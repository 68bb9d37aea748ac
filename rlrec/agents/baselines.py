"""Honest baselines, all following the Agent protocol and its constructor.

- :class:`RandomAgent`: uniformly random slates.
- :class:`PopularAgent`: the most purchased items so far, the same slate for everyone.
- :class:`BanditAgent`: a learning contextual bandit, what a conventional recommender
  does: the DQN's networks trained to predict the immediate reward (gamma = 0) from user,
  history and item features, acting epsilon-greedily.

The privileged yardsticks (the myopic oracle, the quality-aware rule) read the shop's hidden
state, so they are not agents: see :mod:`rlrec.sim.privileged`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rlrec.agents.base import AgentBase, AgentSpec, ItemScores, Transition, batch_size, explore_rows
from rlrec.agents.dqn import DQNAgent, DQNConfig
from rlrec.config import probability, require
from rlrec.sim.env import Observation


class RandomAgent(AgentBase):
    """Uniformly random slates of distinct items."""

    learns = False

    def act(self, obs: Observation, explore: bool = False) -> torch.Tensor:
        return self.random_slates(batch_size(obs))

    def action_probs(self, obs: Observation, slot: torch.Tensor | None = None) -> torch.Tensor:
        # every slot of a uniformly random slate of distinct items is uniform over the items in the catalog
        if self.item_available is not None:
            available = self.item_available.to(self.generator.device).double()
            return (available / available.sum()).expand(batch_size(obs), -1).clone()
        return torch.full(
            (batch_size(obs), self.spec.n_items),
            1.0 / self.spec.n_items,
            dtype=torch.float64,
            device=self.generator.device,
        )

    def scoring_module(self) -> torch.nn.Module:
        """Every item scores 0: served with softmax exploration over the whole catalog (``pool >= N``)
        this is exactly the uniformly random slate policy."""
        return ItemScores(torch.zeros(self.spec.n_items))


@dataclass
class PopularConfig:
    """Hyperparameters of :class:`PopularAgent` (``agent=popular``)."""

    epsilon: float = probability(0.1)  # share of random slates while exploring


class PopularAgent(AgentBase):
    """Shows the K items bought most often so far; explores with random slates at rate ``epsilon``."""

    Config = PopularConfig

    def __init__(self, spec: AgentSpec, *, seed: int = 0, device: str = "auto", **hyperparameters: Any) -> None:
        super().__init__(spec, seed=seed, device=device, **hyperparameters)
        # ties broken by a fixed random order, not by item id
        self.purchases = torch.rand(spec.n_items, generator=self.generator, device=self.device) * 1e-3

    def act(self, obs: Observation, explore: bool = False) -> torch.Tensor:
        b, k = batch_size(obs), self.spec.slate_size
        top = self.mask_unavailable(self.purchases.unsqueeze(0)).topk(k).indices.expand(b, -1)
        if not explore:
            return top
        return explore_rows(top, self.random_slates(b), self.hp.epsilon, self.generator)

    def scoring_module(self) -> torch.nn.Module:
        """The purchase counts (with their tie-breaking noise), the same for every user."""
        return ItemScores(self.purchases)

    def observe(self, transition: Transition) -> None:
        self.purchases.index_add_(0, transition["action"], transition["purchase"].to(self.purchases.dtype))

    def state_dict(self) -> dict[str, Any]:
        return {"purchases": self.purchases, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.purchases.copy_(state["purchases"])
        self.generator.set_state(state["generator"])


@dataclass
class BanditConfig(DQNConfig):
    """Hyperparameters of :class:`BanditAgent` (``agent=bandit``): the DQN's, with gamma 0."""

    gamma: float = 0.0  # the immediate reward only: that is what makes it a bandit
    double_dqn: bool = False  # moot without bootstrapping

    def check(self, prefix: str = "agent") -> None:
        super().check(prefix)
        require(self.gamma == 0.0, f"{prefix}.gamma", self.gamma, "0 for the bandit (use agent=dqn to plan ahead)")
        require(self.n_step == 1, f"{prefix}.n_step", self.n_step, "1 for the bandit (it learns one-step rewards)")


class BanditAgent(DQNAgent):
    """A contextual bandit: :class:`DQNAgent` with ``gamma = 0``, so Q is the expected immediate reward."""

    Config = BanditConfig
