"""DQN with user and product embeddings, a replay buffer and a target network.

The whole algorithm is in this file. Each environment step the agent acts
epsilon-greedily for all B users, stores the B transitions in a device-resident replay
buffer and, once ``learning_starts`` transitions are in, makes ``updates_per_step``
gradient steps on sampled minibatches. The TD target lives in :meth:`DQNAgent.td_target`.

Slates. With K = 1 the action is the argmax over all items. With K > 1 the slate is the
top-K items by Q value, and learning is item-wise: the transition's action is the item
the user acted on (clicked, or the first shown when the slate was ignored) and the next
state's value is the best single item's. That is a heuristic, not a slate-aware method
(those come later): it ignores how items in one slate compete for the click.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from rlrec.agents.base import Transition, explore_rows, linear_schedule, slate_probs
from rlrec.config import ConfigError, EnvConfig
from rlrec.nets import QNetwork
from rlrec.replay import Batch, ReplayBuffer
from rlrec.sim.catalog import Catalog
from rlrec.sim.env import Observation, random_slates
from rlrec.utils import make_generator, resolve_device


class DQNAgent:
    """Deep Q-learning over all items of the catalog.

    Args:
        env_cfg: the shop's config; ``catalog``: its catalog (observable features are read).
        num_users: B, users per environment step (sizes the replay buffer's rows).
        head: Q head, ``"dot"`` | ``"mlp"`` | ``"tabular"`` (see :class:`rlrec.nets.QNetwork`).
        history: history encoder, ``"mean"`` | ``"gru"`` | ``"none"``.
        embed_dim: embedding width. hidden_dim: width of the state and item vectors.
        lr: optimiser learning rate. optimizer: ``"adam"`` or ``"sgd"`` (plain SGD, no momentum).
        gamma: discount of future reward.
        buffer_size: transitions kept in the replay buffer.
        batch_size: transitions per gradient step.
        learning_starts: transitions collected before the first update.
        updates_per_step: gradient steps per environment step (of B transitions).
        target_update_interval: updates between hard target copies (when ``tau`` = 1).
        tau: Polyak factor of the target update; 1.0 means hard copies.
        double_dqn: choose the next action with the online net, value it with the target net.
        loss: ``"huber"`` (smooth L1) or ``"mse"`` (0.5 * squared TD error).
        max_grad_norm: gradient-norm clipping (0 turns it off).
        n_step: n-step returns from the replay buffer (1: ordinary DQN).
        eps_start, eps_end, exploration_steps: linear epsilon schedule over transitions.
        seed: seeds the network initialisation, exploration and replay sampling.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
    """

    def __init__(self, env_cfg: EnvConfig, catalog: Catalog, *, num_users: int, head: str = "dot",
                 history: str = "mean", embed_dim: int = 32, hidden_dim: int = 64, lr: float = 1e-3,
                 optimizer: str = "adam", gamma: float = 0.95, buffer_size: int = 200_000, batch_size: int = 512,
                 learning_starts: int = 5_000, updates_per_step: int = 1, target_update_interval: int = 250,
                 tau: float = 1.0, double_dqn: bool = True, loss: str = "huber", max_grad_norm: float = 10.0,
                 n_step: int = 1, eps_start: float = 1.0, eps_end: float = 0.05, exploration_steps: int = 100_000,
                 seed: int = 0, device: str = "auto") -> None:
        _check_hyperparameters(lr=lr, gamma=gamma, batch_size=batch_size, tau=tau, loss=loss, optimizer=optimizer,
                               eps_start=eps_start, eps_end=eps_end, updates_per_step=updates_per_step,
                               target_update_interval=target_update_interval)
        self.env_cfg, self.device = env_cfg, resolve_device(device)
        self.gamma, self.batch_size, self.learning_starts = gamma, batch_size, learning_starts
        self.updates_per_step, self.target_update_interval, self.tau = updates_per_step, target_update_interval, tau
        self.double_dqn, self.loss, self.max_grad_norm = double_dqn, loss, max_grad_norm
        self.eps_start, self.eps_end, self.exploration_steps = eps_start, eps_end, exploration_steps

        torch.manual_seed(seed)  # network initialisation (the only use of the global generator)
        self.q = QNetwork(env_cfg, catalog, head=head, history=history, embed_dim=embed_dim,
                          hidden_dim=hidden_dim).to(self.device)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        opt_cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[optimizer]
        self.optimizer = opt_cls(self.q.parameters(), lr=lr)
        self.buffer = ReplayBuffer(buffer_size, num_users, self.device, gamma=gamma, n_step=n_step, seed=seed + 1)
        self.generator = make_generator(seed + 2, self.device)
        self.transitions_seen = 0
        self.updates = 0

    # ------------------------------------------------------------------ acting
    @property
    def epsilon(self) -> float:
        return linear_schedule(self.eps_start, self.eps_end, self.exploration_steps, self.transitions_seen)

    @torch.no_grad()
    def act(self, obs: Observation, explore: bool = False) -> torch.Tensor:
        k = self.env_cfg.slate_size
        greedy = self.q(obs).topk(k, dim=1).indices
        if not explore:
            return greedy
        random = random_slates(greedy.shape[0], self.env_cfg.n_items, k, self.generator)
        return explore_rows(greedy, random, self.epsilon, self.generator)

    @torch.no_grad()
    def action_probs(self, obs: Observation, slot: torch.Tensor | None = None) -> torch.Tensor:
        return slate_probs(self.act(obs), slot, self.env_cfg.n_items)

    # ------------------------------------------------------------------ learning
    def observe(self, transition: Transition) -> None:
        self.buffer.add(transition["obs"], transition["action"], transition["reward"], transition["next_obs"],
                        transition["done"])
        self.transitions_seen += int(transition["done"].numel())

    def update(self) -> dict[str, torch.Tensor]:
        if self.transitions_seen < self.learning_starts:
            return {}
        metrics: dict[str, torch.Tensor] = {}
        for _ in range(self.updates_per_step):
            metrics = self.learn(self.buffer.sample(self.batch_size))
        return metrics

    @torch.no_grad()
    def td_target(self, reward: torch.Tensor, next_obs: Observation, done: torch.Tensor,
                  discount: torch.Tensor) -> torch.Tensor:
        """``reward + discount * (1 - done) * Q_target(next_obs, a*)``: the one TD target.

        ``a*`` is the online network's argmax under double DQN, the target network's otherwise.
        ``discount`` is gamma (gamma^k for n-step returns). Done rows never bootstrap.
        """
        next_q = self.q_target(next_obs)
        if self.double_dqn:
            best = self.q(next_obs).argmax(dim=1, keepdim=True)
            next_value = next_q.gather(1, best).squeeze(1)
        else:
            next_value = next_q.max(dim=1).values
        return reward + discount * (~done).float() * next_value

    def learn(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient step on ``batch``; then the target network follows."""
        q_values = self.q(batch["obs"]).gather(1, batch["action"].unsqueeze(1)).squeeze(1)
        target = self.td_target(batch["reward"], batch["next_obs"], batch["done"], batch["discount"])
        if self.loss == "huber":
            loss = F.smooth_l1_loss(q_values, target)
        else:
            loss = 0.5 * (q_values - target).pow(2).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.q.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.updates += 1
        self._update_target()
        return {"td_loss": loss.detach(), "q_values": q_values.detach().mean()}

    @torch.no_grad()
    def _update_target(self) -> None:
        if self.tau < 1.0:
            for p, p_target in zip(self.q.parameters(), self.q_target.parameters()):
                p_target.lerp_(p, self.tau)
        elif self.updates % self.target_update_interval == 0:
            self.q_target.load_state_dict(self.q.state_dict())

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"q": self.q.state_dict(), "q_target": self.q_target.state_dict(),
                "optimizer": self.optimizer.state_dict(), "buffer": self.buffer.state_dict(),
                "generator": self.generator.get_state(), "transitions_seen": self.transitions_seen,
                "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.q.load_state_dict(state["q"])
        self.q_target.load_state_dict(state["q_target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.buffer.load_state_dict(state["buffer"])
        self.generator.set_state(state["generator"])
        self.transitions_seen, self.updates = int(state["transitions_seen"]), int(state["updates"])


def _check_hyperparameters(**values: Any) -> None:
    rules = {
        "lr": (lambda v: v > 0, "> 0"),
        "gamma": (lambda v: 0 <= v <= 1, "in [0, 1]"),
        "batch_size": (lambda v: v >= 1, ">= 1"),
        "tau": (lambda v: 0 < v <= 1, "in (0, 1]"),
        "loss": (lambda v: v in ("huber", "mse"), "'huber' or 'mse'"),
        "optimizer": (lambda v: v in ("adam", "sgd"), "'adam' or 'sgd'"),
        "eps_start": (lambda v: 0 <= v <= 1, "in [0, 1]"),
        "eps_end": (lambda v: 0 <= v <= 1, "in [0, 1]"),
        "updates_per_step": (lambda v: v >= 0, ">= 0"),
        "target_update_interval": (lambda v: v >= 1, ">= 1"),
    }
    for name, value in values.items():
        ok, allowed = rules[name]
        if not ok(value):
            raise ConfigError(f"agent.{name} = {value!r} is invalid: it must be {allowed}.")
