"""Tabular Q-learning on the enumerable shop: the reference implementation.

Short and obviously right; the DQN is checked against it (tests/test_agents.py). Actions are
the exact MDP's: ordered slates (:func:`rlrec.sim.tabular.all_slates`; with K = 1, the items),
so the table is [states, N! / (N - K)!] and a transition's action is the index of its slate.

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

from dataclasses import dataclass
from typing import Any

import torch

from rlrec.agents.base import AgentBase, AgentSpec, Transition, explore_rows, linear_schedule, require_spec
from rlrec.config import param, probability
from rlrec.sim.env import Observation
from rlrec.sim.tabular import all_slates, n_slates, n_tabular_states, slate_index, tabular_state_index


@dataclass
class TabularQConfig:
    """Hyperparameters of :class:`TabularQAgent` (``agent=tabular_q``)."""

    lr: float = param(0.5, gt=0, le=1)  # learning rate at the first visit of a pair
    lr_min: float = param(0.0, ge=0, le=1)  # floor of the learning rate
    lr_decay_visits: float = param(100.0, ge=0)  # updates of a pair after which its rate has halved (0: constant)
    gamma: float = param(1.0, ge=0, le=1)  # discount (1.0 is fine: sessions end by the horizon)
    eps_start: float = probability(1.0)  # linear epsilon schedule over transitions: start,
    eps_end: float = probability(0.5)  # end,
    exploration_steps: int = param(1_000_000, ge=0)  # and its length in transitions
    dtype: str = param("float64", choices=("float64", "float32"))  # of the table (float64 for the oracle checks)


class TabularQAgent(AgentBase):
    """Q-learning over the enumerable shop's discrete states and slates (hyperparameters:
    :class:`TabularQConfig`). ``seed`` seeds exploration."""

    Config = TabularQConfig

    def __init__(self, spec: AgentSpec, *, seed: int = 0, device: str = "auto", **hyperparameters: Any) -> None:
        super().__init__(spec, seed=seed, device=device, **hyperparameters)
        n_states, dtype = n_tabular_states(spec), getattr(torch, self.hp.dtype)
        self.slates = all_slates(spec.n_items, spec.slate_size).to(self.device)  # [A, K]: action a shows row a
        self.q = torch.zeros(n_states, self.slates.shape[0], dtype=dtype, device=self.device)
        self.visits = torch.zeros_like(self.q)
        self.terminal = n_states - 1
        self.transitions_seen = 0
        self._pending: Transition | None = None

    def check_spec(self, spec: AgentSpec) -> None:
        fix = "use env=tiny (python train.py experiment=tiny_oracle agent=tabular_q)"
        require_spec(spec.observe_satisfaction, "the satisfaction observed (env.observe_satisfaction=true)", fix)
        states, actions = n_tabular_states(spec), n_slates(spec.n_items, spec.slate_size)
        require_spec(
            states * actions <= 50_000_000,
            f"a table small enough to hold ({states:,} states x {actions:,} slates here)",
            fix + " or lower env.n_items or env.slate_size",
        )

    @property
    def epsilon(self) -> float:
        hp = self.hp
        return linear_schedule(hp.eps_start, hp.eps_end, hp.exploration_steps, self.transitions_seen)

    def state(self, obs: Observation) -> torch.Tensor:
        return tabular_state_index(obs, self.spec)

    def act(self, obs: Observation, explore: bool = False) -> torch.Tensor:
        greedy = self.slates[self.in_catalog(self.q[self.state(obs)]).argmax(dim=1)]  # [B, K]
        if not explore:
            return greedy
        return explore_rows(greedy, self.random_slates(greedy.shape[0]), self.epsilon, self.generator)

    def in_catalog(self, q_rows: torch.Tensor) -> torch.Tensor:
        """``q_rows`` [B, A] with the slates that show an item not in the catalog now at -inf."""
        if self.item_available is None:
            return q_rows
        shown = self.item_available.to(self.device)[self.slates].all(dim=1)  # [A]: every item of the slate is there
        return q_rows.masked_fill(~shown, float("-inf"))

    def scoring_module(self) -> torch.nn.Module:
        """The Q table's row of each observation's state (its argmax is the greedy item)."""
        return TableScores(self.q, self.spec)

    def observe(self, transition: Transition) -> None:
        self._pending = transition
        self.transitions_seen += int(transition["done"].numel())

    def update(self) -> dict[str, torch.Tensor]:
        if self._pending is None:
            return {}
        t, self._pending = self._pending, None
        next_state = self.state(t["next_obs"])
        next_state = torch.where(t["done"], torch.full_like(next_state, self.terminal), next_state)
        action = slate_index(t["slate"], self.spec.n_items, check=False)  # with K = 1, the item shown
        return self.learn(self.state(t["obs"]), action, t["reward"], next_state, t["done"])

    def learn(
        self,
        state: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_state: torch.Tensor,
        done: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The batched update described in the module docstring."""
        q, hp = self.q, self.hp
        next_value = self.in_catalog(q[next_state]).max(dim=1).values
        target = reward.to(q.dtype) + hp.gamma * (~done).to(q.dtype) * next_value
        td_error = target - q[state, action]
        flat = state * q.shape[1] + action
        hits = torch.zeros(q.numel(), dtype=q.dtype, device=q.device).index_add_(0, flat, torch.ones_like(td_error))
        summed = torch.zeros_like(hits).index_add_(0, flat, td_error)
        visited = hits > 0
        visits = self.visits.view(-1)
        alpha = (
            hp.lr / (1.0 + visits / hp.lr_decay_visits) if hp.lr_decay_visits > 0 else torch.full_like(visits, hp.lr)
        )
        alpha = alpha.clamp_min(hp.lr_min)
        step = torch.where(visited, alpha * summed / hits.clamp_min(1), torch.zeros_like(summed))
        q.view(-1).add_(step)
        visits.add_(visited.to(visits.dtype))
        return {"td_error": td_error.abs().mean()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "q": self.q,
            "visits": self.visits,
            "transitions_seen": self.transitions_seen,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.q.copy_(state["q"])
        self.visits.copy_(state["visits"])
        self.transitions_seen = int(state["transitions_seen"])
        self.generator.set_state(state["generator"])


class TableScores(torch.nn.Module):
    """The servable form of :class:`TabularQAgent`: ``Q[state(obs)]``, [B, N]."""

    def __init__(self, q: torch.Tensor, spec: AgentSpec) -> None:
        super().__init__()
        self.register_buffer("q", q.detach().clone())
        self.spec = spec  # the state index needs its sizes (python ints, constants once traced)

    def forward(self, obs: Observation) -> torch.Tensor:
        return self.q[tabular_state_index(obs, self.spec)]
