"""Tabular Q-learning on the enumerable shop: the reference implementation.

Short and obviously right; the DQN is checked against it (tests/test_agents.py).

Batched update. A batch holds B transitions ``(s, a, r, s', done)``. Targets use the table
as it was before the batch, ``y = r + gamma * (1 - done) * max_a' Q[s', a']``, and each
visited pair moves by the *mean* TD error of the rows that hit it::

    Q[s, a] += alpha(s, a) * mean_{rows with (s, a)} (y - Q[s, a])

With one transition per batch this is exactly Watkins' Q-learning. ``alpha`` is
``lr / (1 + visits(s, a) / lr_decay_visits)``, where visits counts the batches that updated
the pair before this one (a batch's mean TD error is one, less noisy, sample); never below
``lr_min``; ``lr_decay_visits = 0`` keeps it constant.
"""

from __future__ import annotations

from typing import Any

import torch

from rlrec.agents.base import Transition, explore_rows, linear_schedule, slate_probs
from rlrec.config import EnvConfig
from rlrec.sim.env import Observation, random_slates
from rlrec.sim.tabular import n_tabular_states, tabular_state_index
from rlrec.utils import make_generator, resolve_device


class TabularQAgent:
    """Q-learning over the tiny shop's discrete states (K = 1).

    Args:
        env_cfg: config of an enumerable shop (``env=tiny``).
        lr: learning rate at the first visit.
        lr_min: floor of the learning rate.
        lr_decay_visits: updates of a pair after which its rate has halved (0: constant rate).
        gamma: discount (1.0 is fine: sessions end by the horizon).
        eps_start, eps_end, exploration_steps: linear epsilon schedule over transitions.
        dtype: of the table (float64 for the oracle checks).
        seed, device: exploration generator and placement.
    """

    def __init__(self, env_cfg: EnvConfig, *, lr: float = 0.5, lr_min: float = 0.0, lr_decay_visits: float = 50.0,
                 gamma: float = 1.0, eps_start: float = 1.0, eps_end: float = 0.1, exploration_steps: int = 200_000,
                 dtype: torch.dtype = torch.float64, seed: int = 0, device: str = "cpu") -> None:
        if env_cfg.slate_size != 1:
            raise ValueError("TabularQAgent needs env.slate_size = 1 (use env=tiny).")
        self.env_cfg = env_cfg
        self.lr, self.lr_min, self.lr_decay_visits, self.gamma = lr, lr_min, lr_decay_visits, gamma
        self.eps_start, self.eps_end, self.exploration_steps = eps_start, eps_end, exploration_steps
        self.device = resolve_device(device)
        n_states = n_tabular_states(env_cfg)
        self.q = torch.zeros(n_states, env_cfg.n_items, dtype=dtype, device=self.device)
        self.visits = torch.zeros(n_states, env_cfg.n_items, dtype=dtype, device=self.device)
        self.terminal = n_states - 1
        self.generator = make_generator(seed, self.device)
        self.transitions_seen = 0
        self._pending: Transition | None = None

    @property
    def epsilon(self) -> float:
        return linear_schedule(self.eps_start, self.eps_end, self.exploration_steps, self.transitions_seen)

    def state(self, obs: Observation) -> torch.Tensor:
        return tabular_state_index(obs, self.env_cfg)

    def act(self, obs: Observation, explore: bool = False) -> torch.Tensor:
        greedy = self.q[self.state(obs)].argmax(dim=1, keepdim=True)
        if not explore:
            return greedy
        random = random_slates(greedy.shape[0], self.env_cfg.n_items, 1, self.generator)
        return explore_rows(greedy, random, self.epsilon, self.generator)

    def action_probs(self, obs: Observation, slot: torch.Tensor | None = None) -> torch.Tensor:
        return slate_probs(self.act(obs), slot, self.env_cfg.n_items)

    def observe(self, transition: Transition) -> None:
        self._pending = transition
        self.transitions_seen += int(transition["done"].numel())

    def update(self) -> dict[str, torch.Tensor]:
        if self._pending is None:
            return {}
        t, self._pending = self._pending, None
        next_state = torch.where(t["done"], torch.full_like(t["action"], self.terminal), self.state(t["next_obs"]))
        return self.learn(self.state(t["obs"]), t["action"], t["reward"], next_state, t["done"])

    def learn(self, state: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, next_state: torch.Tensor,
              done: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batched update described in the module docstring."""
        q = self.q
        target = reward.to(q.dtype) + self.gamma * (~done).to(q.dtype) * q[next_state].max(dim=1).values
        td_error = target - q[state, action]
        flat = state * q.shape[1] + action
        hits = torch.zeros(q.numel(), dtype=q.dtype, device=q.device).index_add_(0, flat, torch.ones_like(td_error))
        summed = torch.zeros_like(hits).index_add_(0, flat, td_error)
        visited = hits > 0
        visits = self.visits.view(-1)
        alpha = self.lr / (1.0 + visits / self.lr_decay_visits) if self.lr_decay_visits > 0 else torch.full_like(
            visits, self.lr)
        alpha = alpha.clamp_min(self.lr_min)
        step = torch.where(visited, alpha * summed / hits.clamp_min(1), torch.zeros_like(summed))
        q.view(-1).add_(step)
        visits.add_(visited.to(visits.dtype))
        return {"td_error": td_error.abs().mean()}

    def state_dict(self) -> dict[str, Any]:
        return {"q": self.q, "visits": self.visits, "transitions_seen": self.transitions_seen,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.q.copy_(state["q"])
        self.visits.copy_(state["visits"])
        self.transitions_seen = int(state["transitions_seen"])
        self.generator.set_state(state["generator"])
