"""Policy gradient over slates: REINFORCE with the top-K off-policy correction, and PPO.

Both agents share one network (:class:`PolicyNet`) and one on-policy loop (:class:`OnPolicyAgent`):

- **Policy**: a softmax over all N items, ``logits[b, i] = state[b] . item[i] + bias[i]`` (the
  encoders of :mod:`rlrec.agents.nets`). Exploring, a slate of K distinct items is sampled without
  replacement (Gumbel top-K, i.e. Plackett-Luce); acting greedily, it is the top-K logits.
- **Critic** (baseline): V(s) from its own state encoder. ``asymmetric=True`` also gives it the
  user's *hidden* satisfaction level, read from the shop during training only (the trainer puts it in
  the transition as ``hidden``/``next_hidden``); the acting policy never sees it, so evaluation and
  serving need nothing beyond the observation.
- **Rollouts**: ``rollout_len`` environment steps of all B users are kept, then advantages come
  from GAE over the critic (done rows never bootstrap; the rollout's last step bootstraps from
  V(next state)), the update runs, and the rollout is dropped. A checkpoint taken mid-rollout
  holds the partial rollout, so a resumed run repeats the straight one bit for bit.

``agent=reinforce`` (:class:`ReinforceAgent`, Chen et al. 2019, "Top-K Off-Policy Correction for a
REINFORCE Recommender System"): the loss of a row with slate items a_1..a_K and advantage A is

    - sum_k  w_k * lambda_K(a_k) * A * log pi(a_k | s)
    w_k = min(pi(a_k | s) / beta(a_k | s), weight_cap)             (importance weight, detached)
    lambda_K(a) = min(K * (1 - pi(a | s))^(K - 1), lambda_cap)      (top-K multiplier, detached)

with pi the softmax over all items. beta is the behaviour policy's probability of the item: the
logged propensity (``behaviour="logged"``: in the shop, the agent's own probability when it acted,
so w = 1 on-policy; in logs, the logged propensity) or a behaviour head trained by maximum
likelihood on the logged items with the gradient stopped into the shared state
(``behaviour="learned"``). Off-policy from logged data: :meth:`ReinforceAgent.learn_logged`, driven
by :mod:`rlrec.train.logged` (``python train.py agent=reinforce trainer.logged_data=obd|served``).

``agent=ppo`` (:class:`PPOAgent`): the clipped surrogate on the slate's Plackett-Luce
log-probability, ``epochs`` passes of minibatches over each rollout, an entropy bonus.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rlrec.agents.base import AgentBase, AgentSpec, Transition
from rlrec.agents.nets import HistoryEncoder, ItemTower, UserTower, mlp
from rlrec.config import ConfigError, param, probability
from rlrec.sim.env import Observation
from rlrec.utils import make_generator


# ----------------------------------------------------------------------------- slate maths
def gather_rows(values: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """[M, K]: ``values[m, items[m, k]]``, one value per row and slot (``values`` [M, N], ``items`` [M, K])."""
    return values.gather(1, items)


def plackett_luce_logp(logits: torch.Tensor, slate: torch.Tensor) -> torch.Tensor:
    """[M] log-probability of the ordered ``slate`` [M, K] drawn without replacement from softmax(``logits``)."""
    log_pi = torch.log_softmax(logits, 1)
    chosen = gather_rows(log_pi, slate)  # [M, K] log pi of each pick under the full softmax
    taken = chosen.exp().cumsum(1) - chosen.exp()  # the mass already drawn before each pick
    return (chosen - torch.log1p(-taken.clamp(max=1 - 1e-6))).sum(1)


def topk_multiplier(pi: torch.Tensor, k: int, cap: float) -> torch.Tensor:
    """Chen et al.'s ``lambda_K = K (1 - pi)^(K - 1)``, capped at ``cap``, detached (1 when K = 1).

    It is the derivative of the probability that the item appears in a K-draw slate,
    ``1 - (1 - pi)^K``, over pi: items the policy already nearly always shows (pi large) get little more push.
    """
    pi = pi.detach()
    return (k * (1 - pi).pow(k - 1)).clamp(max=cap)


def importance_weight(pi: torch.Tensor, beta: torch.Tensor, cap: float) -> torch.Tensor:
    """``pi / beta`` capped at ``cap``, detached: the per-item correction from the behaviour policy beta to pi."""
    return (pi.detach() / beta.detach().clamp_min(1e-12)).clamp(max=cap)


def topk_corrected_loss(
    log_pi_items: torch.Tensor,
    beta: torch.Tensor,
    advantage: torch.Tensor,
    k: int,
    lambda_cap: float,
    weight_cap: float,
) -> torch.Tensor:
    """The top-K off-policy corrected REINFORCE loss (module docstring), mean over rows.

    ``log_pi_items`` [M, J]: log pi of each row's J acted items (the slate's K, or one logged item),
    ``beta`` [M, J] the behaviour's probabilities of them, ``advantage`` [M].
    """
    pi = log_pi_items.detach().exp()
    scale = importance_weight(pi, beta, weight_cap) * topk_multiplier(pi, k, lambda_cap)
    return -(scale * log_pi_items).sum(1).mul(advantage.detach()).mean()


def gae(
    rewards: torch.Tensor, values: torch.Tensor, done: torch.Tensor, last_value: torch.Tensor, gamma: float, lam: float
) -> torch.Tensor:
    """[T, B] generalised advantage estimates of a rollout (``lam`` = 1: discounted return minus V).

    ``rewards``, ``values``, ``done`` [T, B]; ``last_value`` [B] is V of the state after the rollout's
    last step. A done row never bootstraps (the session ended: the next row is a new user).
    """
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(last_value)
    for t in reversed(range(rewards.shape[0])):  # over the rollout's steps only; users are batched
        live = (~done[t]).to(values.dtype)
        next_value = last_value if t == rewards.shape[0] - 1 else values[t + 1]
        delta = rewards[t] + gamma * live * next_value - values[t]
        running = delta + gamma * lam * live * running
        advantages[t] = running
    return advantages


# ----------------------------------------------------------------------------- network
class StateEncoder(nn.Module):
    """Observation -> [B, hidden] (user tower, history encoder, MLP), plus ``extra`` inputs if any."""

    def __init__(self, spec: AgentSpec, history: str, embed_dim: int, hidden_dim: int, extra: int = 0) -> None:
        super().__init__()
        self.user = UserTower(spec, embed_dim)
        self.history = HistoryEncoder(spec, embed_dim, history) if history != "none" else None
        size = UserTower.out_dim(spec, embed_dim) + (embed_dim if self.history is not None else 0) + extra
        self.net = mlp([size, hidden_dim, hidden_dim])

    def forward(self, obs: Observation, extra: torch.Tensor | None = None) -> torch.Tensor:
        parts = [self.user(obs)] + ([self.history(obs)] if self.history is not None else [])
        parts += [extra] if extra is not None else []
        return torch.relu(self.net(torch.cat(parts, -1)))


class PolicyNet(nn.Module):
    """The softmax policy over items, the behaviour head and the critic (see the module docstring)."""

    def __init__(self, spec: AgentSpec, history: str, embed_dim: int, hidden_dim: int, asymmetric: bool) -> None:
        super().__init__()
        self.levels = spec.satisfaction_levels
        self.asymmetric = asymmetric
        self.actor = StateEncoder(spec, history, embed_dim, hidden_dim)
        self.items = ItemTower(spec, embed_dim, hidden_dim)
        self.item_bias = nn.Parameter(torch.zeros(spec.n_items))
        self.behaviour = nn.Linear(hidden_dim, spec.n_items)  # beta's logits, from the detached actor state
        self.critic = StateEncoder(spec, history, embed_dim, hidden_dim, extra=self.levels if asymmetric else 0)
        self.value_head = nn.Linear(hidden_dim, 1)

    def forward(self, obs: Observation) -> torch.Tensor:
        """[B, N] the policy's logits (acting and serving use only this)."""
        return self.logits(self.actor(obs))

    def logits(self, state: torch.Tensor) -> torch.Tensor:
        """[B, N] the policy's logits from the shared state [B, H]."""
        return state @ self.items().T + self.item_bias

    def behaviour_logits(self, state: torch.Tensor) -> torch.Tensor:
        """[B, N] beta's logits; its gradient stops at the shared state (beta never shapes the policy's state)."""
        return self.behaviour(state.detach())

    def value(self, obs: Observation, hidden: torch.Tensor | None) -> torch.Tensor:
        """[B] V(s); ``hidden`` [B] the satisfaction levels (asymmetric critic, training only)."""
        extra = F.one_hot(hidden, self.levels).float() if self.asymmetric else None
        return self.value_head(self.critic(obs, extra)).squeeze(-1)


# ----------------------------------------------------------------------------- the on-policy loop
@dataclass
class PolicyGradientConfig:
    """What both policy-gradient agents share (their own Config classes add to it)."""

    history: str = param("mean", choices=("mean", "gru", "none"))  # history encoder (rlrec.agents.nets)
    embed_dim: int = param(32, ge=1)  # width of every embedding
    hidden_dim: int = param(64, ge=1)  # width of the state and item vectors
    # The critic also sees the hidden satisfaction level (read from the shop in training only; the
    # acting policy sees observations only). Speeds the start of learning at K = 1 (RESEARCH10.md).
    asymmetric: bool = True
    rollout_len: int = param(16, ge=1)  # environment steps (of all B users) per rollout, then one update
    minibatch_size: int = param(4096, ge=1)  # rows per gradient step (a rollout has rollout_len * B rows)
    gamma: float = param(0.99, ge=0, le=1)  # discount over the visit
    vf_coef: float = param(0.5, ge=0)  # weight of the critic's squared error
    ent_coef: float = param(0.01, ge=0)  # entropy bonus of the softmax over all items
    max_grad_norm: float = param(1.0, ge=0)  # gradient-norm clipping (0 turns it off)
    norm_adv: bool = True  # standardise the advantages of each minibatch


class OnPolicyAgent(AgentBase):
    """Acting by Plackett-Luce sampling, rollout storage, GAE and checkpoints; subclasses define :meth:`loss`.

    ``seed`` seeds the network initialisation, slate sampling and minibatch order.
    """

    reads_hidden_state: ClassVar[bool] = True  # the trainer adds ``hidden``/``next_hidden`` to transitions

    def __init__(self, spec: AgentSpec, *, seed: int = 0, device: str = "auto", **hyperparameters: Any) -> None:
        super().__init__(spec, seed=seed, device=device, **hyperparameters)
        hp = self.hp
        torch.manual_seed(seed)  # network initialisation (the only use of the global generator)
        self.net = PolicyNet(spec, hp.history, hp.embed_dim, hp.hidden_dim, hp.asymmetric).to(self.device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=hp.lr, eps=1e-5)
        self.generator = make_generator(seed + 2, self.device)  # slate sampling and minibatch order
        self.rollout: list[dict[str, Any]] = []  # one entry per environment step of the current rollout
        self.last: dict[str, Any] | None = None  # the state after the rollout's last step (bootstrap)
        self._acted: dict[str, torch.Tensor] | None = None  # what act(explore=True) computed, for observe
        self.metrics: dict[str, torch.Tensor] = {}  # the latest update's
        self.transitions_seen = 0
        self.updates = 0

    def check_spec(self, spec: AgentSpec) -> None:
        # The policy's softmax (and PPO's stored log-probabilities) are over the whole catalog: a
        # catalog that changes while training would need the same mask in every stored step.
        if spec.item_available is not None:
            raise ConfigError(
                f"{type(self).__name__} trains on a fixed catalog, and this shop's catalog changes "
                "(env.holdout_items or env.new_item_rate > 0): set both to 0, or train agent=dqn for new items "
                "(a trained policy may still be evaluated on another catalog)."
            )

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, obs: Observation, explore: bool = False) -> torch.Tensor:
        logits = self.mask_unavailable(self.net(obs))  # evaluated on another catalog: only its items
        k = self.spec.slate_size
        if not explore:
            return logits.topk(k, dim=1).indices
        u = torch.rand(logits.shape, generator=self.generator, device=logits.device).clamp_(1e-10, 1 - 1e-7)
        slate = (logits - torch.log(-torch.log(u))).topk(k, dim=1).indices  # Gumbel top-K = Plackett-Luce
        self._acted = {"logp": plackett_luce_logp(logits, slate), "beta": gather_rows(logits.softmax(1), slate)}
        return slate

    def scoring_module(self) -> torch.nn.Module:
        """The policy's logits of every item (their top K is the greedy slate)."""
        import copy

        return copy.deepcopy(self.net).eval().requires_grad_(False)

    # ------------------------------------------------------------------ learning
    def observe(self, transition: Transition) -> None:
        if self._acted is None:
            raise RuntimeError(
                f"{type(self).__name__} learns on-policy: observe() takes the transition of its own last "
                "act(explore=True)."
            )
        hidden = transition.get("hidden") if self.hp.asymmetric else None
        if self.hp.asymmetric and hidden is None:
            raise RuntimeError(
                "agent.asymmetric=true needs the hidden satisfaction in each transition (rlrec.train.loop.train_steps "
                "adds it); set agent.asymmetric=false to train without it."
            )
        self.rollout.append(
            {
                "obs": transition["obs"],
                "slate": transition["slate"],
                "reward": transition["reward"].float(),
                "done": transition["done"],
                **({"hidden": hidden} if hidden is not None else {}),
                **self._acted,
            }
        )
        self._acted = None
        self.transitions_seen += int(transition["done"].numel())
        if len(self.rollout) == self.hp.rollout_len:
            self.last = {"obs": transition["next_obs"]}
            if self.hp.asymmetric:
                self.last["hidden"] = transition["next_hidden"]

    def update(self) -> dict[str, torch.Tensor]:
        """Learn once a rollout is full; return the latest update's metrics (every step, for the logger)."""
        if len(self.rollout) < self.hp.rollout_len:
            return self.metrics
        hp, steps = self.hp, self.rollout
        rows = {key: torch.cat([s[key] for s in steps]) for key in steps[0] if key != "obs"}
        rows["obs"] = {key: torch.cat([s["obs"][key] for s in steps]) for key in steps[0]["obs"]}
        with torch.no_grad():
            t, b = len(steps), steps[0]["reward"].shape[0]
            values = self.net.value(rows["obs"], rows.get("hidden")).view(t, b)
            last_value = self.net.value(self.last["obs"], self.last.get("hidden"))
            advantages = gae(
                rows["reward"].view(t, b), values, rows["done"].view(t, b), last_value, hp.gamma, self.gae_lambda
            )
        rows["advantage"], rows["return"] = advantages.flatten(), (advantages + values).flatten()
        n, size = t * b, min(hp.minibatch_size, t * b)
        metrics: dict[str, torch.Tensor] = {}
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=self.generator, device=self.device)
            for start in range(0, n - size + 1, size):  # whole minibatches only
                metrics = self.learn(take(rows, order[start : start + size]))
        self.rollout, self.last, self.metrics = [], None, metrics
        return metrics

    def learn(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One gradient step on a minibatch of rollout rows: the subclass's policy loss, the critic, the entropy."""
        advantage = batch["advantage"]
        if self.hp.norm_adv:
            advantage = (advantage - advantage.mean()) / (advantage.std(correction=0) + 1e-8)
        state = self.net.actor(batch["obs"])
        logits = self.net.logits(state)
        losses, metrics = self.policy_loss(state, logits, batch, advantage)
        log_pi = torch.log_softmax(logits, 1)
        entropy = -(log_pi.exp() * log_pi).sum(1).mean()
        v_loss = 0.5 * (self.net.value(batch["obs"], batch.get("hidden")) - batch["return"]).pow(2).mean()
        self.step(sum(losses.values()) + self.hp.vf_coef * v_loss - self.hp.ent_coef * entropy)
        losses.update(v_loss=v_loss, entropy=entropy)
        return {**{key: value.detach() for key, value in losses.items()}, **metrics}

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.hp.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.hp.max_grad_norm)
        self.optimizer.step()
        self.updates += 1

    def policy_loss(
        self, state: torch.Tensor, logits: torch.Tensor, batch: dict[str, Any], advantage: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(the loss terms to add, by name, and other metrics) of a minibatch; ``state`` is the shared actor state."""
        raise NotImplementedError

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "rollout": self.rollout,  # a checkpoint mid-rollout keeps it: resuming repeats the straight run
            "last": self.last,
            "metrics": self.metrics,
            "transitions_seen": self.transitions_seen,
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.rollout, self.last, self._acted = list(state["rollout"]), state["last"], None
        self.metrics = dict(state["metrics"])
        self.transitions_seen, self.updates = int(state["transitions_seen"]), int(state["updates"])


def take(rows: dict[str, Any], index: torch.Tensor) -> dict[str, Any]:
    """The rows ``index`` of every tensor in ``rows`` (nested one level for the observation)."""
    return {key: take(value, index) if isinstance(value, dict) else value[index] for key, value in rows.items()}


# ----------------------------------------------------------------------------- REINFORCE
@dataclass
class ReinforceConfig(PolicyGradientConfig):
    """Hyperparameters of :class:`ReinforceAgent` (``agent=reinforce``); the shared ones are documented
    in :class:`PolicyGradientConfig`."""

    lr: float = param(3e-4, gt=0)  # Adam's learning rate (1e-3 diverged at K = 5 on the default shop)
    # Discounted returns to the rollout's end, bootstrapped there by the critic, minus the critic's
    # V(s) as the baseline (1.0: Monte-Carlo; < 1 trades variance for the critic's bias as GAE does).
    gae_lambda: float = param(1.0, ge=0, le=1)
    lambda_cap: float = param(10.0, gt=0)  # cap of the top-K multiplier K (1 - pi)^(K-1) (<= K anyway)
    weight_cap: float = param(10.0, gt=0)  # cap of the importance weight pi / beta (Chen et al. cap it too)
    # beta, the behaviour policy's probability of each acted item: "logged" reads the propensity
    # that came with the data (in the shop: the agent's own probability when it acted, so the
    # weight is 1 on-policy); "learned" uses the behaviour head, fitted by maximum likelihood on the
    # acted items with its gradient stopped into the shared state (for logs without propensities).
    behaviour: str = param("logged", choices=("logged", "learned"))
    logged_batch_size: int = param(1024, ge=1)  # logged rows per gradient step (trainer.logged_data)
    # The baseline of logged rows (one step each, no critic return): their reward minus the minibatch's mean.
    logged_baseline: bool = True


class ReinforceAgent(OnPolicyAgent):
    """REINFORCE with the top-K off-policy correction (module docstring; hyperparameters: :class:`ReinforceConfig`)."""

    Config = ReinforceConfig
    epochs = 1  # REINFORCE: one pass over each rollout

    @property
    def gae_lambda(self) -> float:
        return self.hp.gae_lambda

    def beta(self, state: torch.Tensor, items: torch.Tensor, logged: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(beta [M, J] of the acted ``items``, the behaviour head's negative log-likelihood of them)."""
        log_beta = gather_rows(torch.log_softmax(self.net.behaviour_logits(state), 1), items)
        nll = -log_beta.sum(1).mean()
        return (log_beta.detach().exp() if self.hp.behaviour == "learned" else logged), nll

    def policy_loss(self, state, logits, batch, advantage):
        hp, items = self.hp, batch["slate"]
        beta, nll = self.beta(state, items, batch["beta"])
        log_pi_items = gather_rows(torch.log_softmax(logits, 1), items)
        loss = topk_corrected_loss(log_pi_items, beta, advantage, self.spec.slate_size, hp.lambda_cap, hp.weight_cap)
        return {"policy_loss": loss, "behaviour_nll": nll}, {}

    def learn_logged(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One gradient step on logged rows: ``obs``, ``item`` [M], ``reward`` [M], ``propensity`` [M].

        Each row is one shown item (a slot of a logged slate): the corrected gradient with the
        row's reward (minus the minibatch mean with ``logged_baseline``) as the advantage, K the
        shop's slate size in lambda_K, and beta the logged propensity or the learned behaviour head.
        """
        hp = self.hp
        items = batch["item"].unsqueeze(1)
        state = self.net.actor(batch["obs"])
        logits = self.net.logits(state)
        beta, nll = self.beta(state, items, batch["propensity"].unsqueeze(1).to(logits.dtype))
        log_pi = torch.log_softmax(logits, 1)
        advantage = batch["reward"] - batch["reward"].mean() if hp.logged_baseline else batch["reward"]
        loss = topk_corrected_loss(
            gather_rows(log_pi, items), beta, advantage, self.spec.slate_size, hp.lambda_cap, hp.weight_cap
        )
        entropy = -(log_pi.exp() * log_pi).sum(1).mean()
        self.step(loss + nll - hp.ent_coef * entropy)
        return {"policy_loss": loss.detach(), "behaviour_nll": nll.detach(), "entropy": entropy.detach()}


# ----------------------------------------------------------------------------- PPO
@dataclass
class PPOConfig(PolicyGradientConfig):
    """Hyperparameters of :class:`PPOAgent` (``agent=ppo``); the shared ones are documented in
    :class:`PolicyGradientConfig`."""

    lr: float = param(1e-3, gt=0)  # Adam's learning rate
    gae_lambda: float = probability(0.95)  # GAE's lambda (1: discounted returns minus V)
    epochs: int = param(4, ge=1)  # passes over each rollout
    clip: float = param(0.2, gt=0)  # the ratio of new to old slate probability is clipped to 1 +- clip


class PPOAgent(OnPolicyAgent):
    """PPO with GAE over Plackett-Luce slates (module docstring; hyperparameters: :class:`PPOConfig`)."""

    Config = PPOConfig

    @property
    def gae_lambda(self) -> float:
        return self.hp.gae_lambda

    @property
    def epochs(self) -> int:
        return self.hp.epochs

    def policy_loss(self, state, logits, batch, advantage):
        ratio = (plackett_luce_logp(logits, batch["slate"]) - batch["logp"]).exp()
        clip = self.hp.clip
        loss = -torch.minimum(ratio * advantage, ratio.clamp(1 - clip, 1 + clip) * advantage).mean()
        return {"policy_loss": loss}, {"clipfrac": ((ratio - 1).abs() > clip).float().mean().detach()}
