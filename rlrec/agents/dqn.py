"""DQN with user and product embeddings, a replay buffer and a target network.

The whole algorithm is in this file. Each environment step the agent acts
epsilon-greedily for all B users, stores the B transitions in a device-resident replay
buffer and, once ``learning_starts`` transitions are in, makes ``updates_per_step``
gradient steps on sampled minibatches. The TD target is :meth:`DQNAgent.td_target`.

Slates. With K = 1 the action is the argmax over all items. With K > 1 the slate is the
top-K items by Q value, and learning is item-wise: the transition's action is the item
the user acted on (clicked, or the first shown when the slate was ignored) and the next
state's value is the best single item's. That is a heuristic, not a slate-aware method
(see :mod:`rlrec.agents.slateq`): it ignores how items in one slate compete for the click.

New items. The agent recommends only items in the catalog (``spec.item_available``, the
shop's live mask): the greedy slate, exploration and the TD target's best next item are all
taken among them. Items it has never acted on are scored from their features and content,
not their untrained id embedding (see :mod:`rlrec.agents.nets`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from rlrec.agents.base import AgentBase, AgentSpec, Transition, explore_rows, linear_schedule, update_target_network
from rlrec.agents.nets import QNetwork, ServingQ
from rlrec.agents.replay import Batch, ReplayBuffer, check_replay_settings
from rlrec.config import param, probability, require
from rlrec.sim.env import Observation
from rlrec.utils import make_generator


@dataclass
class DQNConfig:
    """Hyperparameters of :class:`DQNAgent` (``agent=dqn``)."""

    head: str = param("dot", choices=("dot", "mlp", "tabular"))  # Q head (see rlrec.agents.nets.QNetwork)
    history: str = param("mean", choices=("mean", "gru", "flat", "none"))  # history encoder (rlrec.agents.nets)
    embed_dim: int = param(32, ge=1)  # width of every embedding
    hidden_dim: int = param(64, ge=1)  # width of the state and item vectors
    lr: float = param(1e-3, gt=0)  # optimiser learning rate
    optimizer: str = param("adam", choices=("adam", "sgd"))  # "sgd" is plain SGD, no momentum
    gamma: float = param(0.95, ge=0, le=1)  # discount of future reward
    buffer_size: int = param(200_000, ge=1)  # transitions kept in the replay buffer
    batch_size: int = param(512, ge=1)  # transitions per gradient step
    learning_starts: int = param(5_000, ge=0)  # transitions collected before the first update
    updates_per_step: int = param(1, ge=0)  # gradient steps per environment step (of B transitions)
    # updates between hard target copies (when tau = 1). At K = 1 the DQN learns the long-term effect only with
    # 50 and n_step 3 (conf/experiment/learn_dqn.yaml), which does no worse at K = 5 (README "Results")
    target_update_interval: int = param(250, ge=1)
    tau: float = param(1.0, gt=0, le=1)  # Polyak factor of the target update; 1.0 means hard copies
    double_dqn: bool = True  # choose the next action with the online net, value it with the target net
    loss: str = param("huber", choices=("huber", "mse"))  # "mse" is 0.5 * squared TD error
    max_grad_norm: float = param(10.0, ge=0)  # gradient-norm clipping (0 turns it off)
    n_step: int = param(1, ge=1)  # n-step returns from the replay buffer (1: ordinary DQN; see target_update_interval)
    eps_start: float = probability(1.0)  # linear epsilon schedule over transitions: start,
    eps_end: float = probability(0.05)  # end,
    exploration_steps: int = param(200_000, ge=0)  # and its length in transitions
    # --- generalisation: what keeps a policy from memorising one shop's items
    weight_decay: float = param(0.0, ge=0)  # decoupled weight decay (AdamW) with adam; L2 penalty with sgd
    dropout: float = param(0.0, ge=0, lt=1)  # dropout of hidden units of the state and item MLPs (training only)
    id_dropout: float = param(0.0, ge=0, lt=1)  # chance an item's id embedding and bias are left out in an update
    use_content: bool = True  # read the items' content vectors when the shop has them (false: id and features only)

    def check(self, prefix: str = "agent") -> None:
        require(
            self.n_step == 1 or self.head != "tabular",
            f"{prefix}.n_step",
            self.n_step,
            "1 with head=tabular (the one-hot head reproduces one-step tabular Q-learning)",
        )


class DQNAgent(AgentBase):
    """Deep Q-learning over all items of the catalog (hyperparameters: :class:`DQNConfig`).

    ``seed`` seeds the network initialisation, exploration and replay sampling.
    """

    Config = DQNConfig
    STORED = ("obs", "action", "reward", "next_obs", "done")  # the transition keys the replay buffer holds

    def __init__(self, spec: AgentSpec, *, seed: int = 0, device: str = "auto", **hyperparameters: Any) -> None:
        super().__init__(spec, seed=seed, device=device, **hyperparameters)
        hp = self.hp
        torch.manual_seed(seed)  # network initialisation (the only use of the global generator)
        self.q = QNetwork(
            spec,
            head=hp.head,
            history=hp.history,
            embed_dim=hp.embed_dim,
            hidden_dim=hp.hidden_dim,
            dropout=hp.dropout,
            id_dropout=hp.id_dropout,
            use_content=hp.use_content,
        ).to(self.device)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        # The online network as the loss calls it: rlrec/train/distributed.py puts it inside
        # DistributedDataParallel, which all-reduces its gradients; acting and targets use self.q.
        self.q_train: torch.nn.Module = self.q
        if hp.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.q.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        elif hp.weight_decay > 0:
            self.optimizer = torch.optim.AdamW(self.q.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(self.q.parameters(), lr=hp.lr)
        self.buffer = ReplayBuffer(hp.buffer_size, spec.num_users, self.device, n_step=hp.n_step, seed=seed + 1)
        self.generator = make_generator(seed + 2, self.device)  # exploration
        self.dropout_generator = make_generator(seed + 3, self.device)  # dropout and id dropout in updates
        self.transitions_seen = 0
        self.updates = 0

    def check_spec(self, spec: AgentSpec) -> None:
        check_replay_settings(self.hp.buffer_size, self.hp.batch_size, self.hp.n_step, spec.num_users)

    # ------------------------------------------------------------------ acting
    @property
    def epsilon(self) -> float:
        hp = self.hp
        return linear_schedule(hp.eps_start, hp.eps_end, hp.exploration_steps, self.transitions_seen)

    @torch.no_grad()
    def act(self, obs: Observation, explore: bool = False) -> torch.Tensor:
        greedy = self.greedy(obs)
        if not explore:
            return greedy
        return explore_rows(greedy, self.random_slates(greedy.shape[0]), self.epsilon, self.generator)

    @torch.no_grad()
    def greedy(self, obs: Observation) -> torch.Tensor:
        """[B, K] the K items of highest Q, best first."""
        return self.mask_unavailable(self.q(obs)).topk(self.spec.slate_size, dim=1).indices

    def scoring_module(self) -> torch.nn.Module:
        """The online network's Q values of every item (their top K is the greedy slate), item
        vectors computed once (:class:`~rlrec.agents.nets.ServingQ`)."""
        return ServingQ(self.q)

    # ------------------------------------------------------------------ learning
    def observe(self, transition: Transition) -> None:
        self.buffer.add({key: transition[key] for key in self.STORED})
        self.transitions_seen += int(transition["done"].numel())
        if self.q.head != "tabular" and self.q.items.masks_ids:  # these items' ids now learn: they count
            self.q.items.known[transition["action"].to(self.device)] = True

    def update(self) -> dict[str, torch.Tensor]:
        if self.transitions_seen < self.hp.learning_starts:
            return {}
        metrics: dict[str, torch.Tensor] = {}
        for _ in range(self.hp.updates_per_step):
            metrics = self.learn(self.buffer.sample(self.hp.batch_size))
        return metrics

    @torch.no_grad()
    def td_target(
        self, rewards: torch.Tensor, steps: torch.Tensor, next_obs: Observation, done: torch.Tensor
    ) -> torch.Tensor:
        """The one TD target: ``sum_j gamma^j r_j + gamma^k * (1 - done) * Q_target(next_obs, a*)``.

        ``rewards`` [B, n] are the window's rewards (zero past its end), ``steps`` [B] its length
        k (1 for one-step DQN). ``a*`` is the online network's argmax under double DQN, the
        target network's otherwise. Done rows never bootstrap.
        """
        gamma = self.hp.gamma
        discounted = (rewards * gamma ** torch.arange(rewards.shape[1], device=rewards.device)).sum(1)
        next_q = self.mask_unavailable(self.q_target(next_obs))  # the best next item among those in the catalog
        if self.hp.double_dqn:
            best = self.mask_unavailable(self.q(next_obs)).argmax(dim=1, keepdim=True)
            next_value = next_q.gather(1, best).squeeze(1)
        else:
            next_value = next_q.max(dim=1).values
        return discounted + gamma**steps * (~done).float() * next_value

    def td_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of ``batch`` against :meth:`td_target`, and the Q values [batch] of its actions."""
        noise = self.dropout_generator if self.hp.dropout > 0 or self.hp.id_dropout > 0 else None
        q_values = self.q_train(batch["obs"], noise=noise).gather(1, batch["action"].unsqueeze(1)).squeeze(1)
        target = self.td_target(batch["rewards"], batch["steps"], batch["next_obs"], batch["done"])
        if self.hp.loss == "huber":
            return F.smooth_l1_loss(q_values, target), q_values
        return 0.5 * (q_values - target).pow(2).mean(), q_values

    def learn(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient step on ``batch``; then the target network follows."""
        loss, q_values = self.td_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.hp.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.q.parameters(), self.hp.max_grad_norm)
        self.optimizer.step()
        self.updates += 1
        self._update_target()
        return {"td_loss": loss.detach(), "q_values": q_values.detach().mean()}

    @torch.no_grad()
    def _update_target(self, updates: int | torch.Tensor | None = None) -> None:
        """``updates`` (default: ``self.updates``) may be the compiled step's 0-d device counter."""
        hp = self.hp
        updates = self.updates if updates is None else updates
        update_target_network(self.q, self.q_target, tau=hp.tau, interval=hp.target_update_interval, updates=updates)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "q": self.q.state_dict(),
            "q_target": self.q_target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "buffer": self.buffer.state_dict(),
            "generator": self.generator.get_state(),
            "dropout_generator": self.dropout_generator.get_state(),
            "transitions_seen": self.transitions_seen,
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.q.load_state_dict(state["q"])
        self.q_target.load_state_dict(state["q_target"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.device.type != "cuda":  # a run trained with CUDA graphs saved Adam's capturable form, CUDA-only
            for group in self.optimizer.param_groups:
                if group.get("capturable"):
                    group["capturable"] = False
        self.buffer.load_state_dict(state["buffer"])
        self.generator.set_state(state["generator"])
        self.dropout_generator.set_state(state["dropout_generator"])
        self.transitions_seen, self.updates = int(state["transitions_seen"]), int(state["updates"])
