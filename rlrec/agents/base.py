"""What every agent shares: the spec it is built from, the protocol it follows, the transition it takes in.

Every agent, learned or not, has one constructor shape::

    Agent(spec: AgentSpec, *, seed: int = 0, device: str = "auto", **hyperparameters)

``spec`` is what the shop exposes to an agent (catalog features, feature sizes, slate size,
batch size); the hyperparameters are the fields of the agent's ``Config`` dataclass, which
holds their defaults and documents them. :func:`rlrec.agents.build_agent` builds any agent
from a Hydra config; :class:`AgentBase` turns the keyword arguments into the checked config.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from rlrec.config import ConfigError, build_config
from rlrec.sim.env import Observation, StepResult, available_random_slates
from rlrec.utils import make_generator, resolve_device

Transition = dict[str, Any]
"""One environment step of B users: ``obs``, ``slate`` [B, K], ``action`` [B] (the item acted
on: the clicked one, or the first shown when the slate was ignored), ``choice`` [B] (the slot
clicked, -1 for none), ``reward`` [B], ``next_obs`` (the true successor, before any reset),
``done`` [B], ``purchase`` [B]."""


def make_transition(obs: Observation, slate: torch.Tensor, result: StepResult) -> Transition:
    """Package ``Shop.step``'s result for ``Agent.observe``."""
    return {
        "obs": obs,
        "slate": slate,
        "action": result.info["item"],
        "choice": result.info["choice"],
        "reward": result.reward,
        "next_obs": result.info["final_obs"],
        "done": result.done,
        "purchase": result.info["purchase"],
    }


@dataclass(frozen=True)
class AgentSpec:
    """What the shop shows an agent: sizes and the observable item features, never hidden traits.

    ``item_content`` holds the items' content vectors (image or text embeddings; None when the
    shop has none): learned agents take them through a learned projection, and an exported
    policy needs them as inputs. ``item_available`` says which items are in the catalog now
    (None: all of them, always): the shop's own tensor, updated in place as new items arrive.
    """

    n_items: int  # N, catalog size
    slate_size: int  # K, items per slate
    num_users: int  # B, rows per environment step (sizes replay buffers)
    user_feature_sizes: tuple[int, ...]  # categories of each user feature column (age band, gender, region)
    history_len: int  # H, recent (item, response) pairs in the observation
    horizon: int  # session length cap; the observed step count runs 0..horizon
    observe_satisfaction: bool  # the observation carries ``satisfaction``
    satisfaction_levels: int  # L, its levels (when observed)
    n_categories: int
    n_brands: int
    item_category: torch.Tensor  # [N] long
    item_brand: torch.Tensor  # [N] long
    item_price: torch.Tensor  # [N] float
    item_content: torch.Tensor | None = None  # [N, C] float content vectors, or None
    item_available: torch.Tensor | None = None  # [N] bool, live: the items in the catalog now (None: all)

    @property
    def content_dim(self) -> int:
        """C, the width of the content vectors (0 without content)."""
        return 0 if self.item_content is None else int(self.item_content.shape[1])

    @classmethod
    def from_shop(cls, shop: Any, num_users: int | None = None) -> AgentSpec:
        """The spec of a :class:`~rlrec.sim.env.Shop` (``num_users``: rows per step, default the shop's)."""
        cfg, catalog = shop.cfg, shop.catalog
        return cls(
            n_items=cfg.n_items,
            slate_size=cfg.slate_size,
            num_users=cfg.num_users if num_users is None else num_users,
            user_feature_sizes=tuple(cfg.user_feature_sizes),
            history_len=cfg.history_len,
            horizon=cfg.horizon,
            observe_satisfaction=cfg.observe_satisfaction,
            satisfaction_levels=cfg.satisfaction_levels,
            n_categories=cfg.n_categories,
            n_brands=cfg.n_brands,
            item_category=catalog.category,
            item_brand=catalog.brand,
            item_price=catalog.price,
            item_content=catalog.content,
            item_available=shop.item_available,
        )


@runtime_checkable
class Agent(Protocol):
    """What the trainer and the evaluator need from a policy."""

    def act(self, obs: Observation, explore: bool = False) -> torch.Tensor:
        """A slate [B, K] of item ids for each user; ``explore`` turns on exploration."""

    def action_probs(self, obs: Observation, slot: torch.Tensor | None = None) -> torch.Tensor:
        """[B, N] float64: the probability that the greedy policy (``explore=False``) shows each item
        in slot ``slot[b]`` of row b's slate (default: the first slot). Off-policy evaluation on
        position-wise logs reads these, with each logged row's position as its slot."""

    def observe(self, transition: Transition) -> None:
        """Take in one environment step (store it, count it...)."""

    def update(self) -> dict[str, torch.Tensor]:
        """Learn from what was observed; return metrics as 0-d tensors (no host sync)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: parameters, optimiser, buffers, RNG states, counters."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""


@dataclass
class NoHyperparameters:
    """The ``Config`` of an agent without hyperparameters."""


class AgentBase:
    """The constructor every agent shares: spec, seed, device and the checked hyperparameters.

    Subclasses set ``Config`` (their hyperparameter dataclass: defaults and comments live
    there, once) and may override :meth:`check_spec` to refuse a shop they cannot serve.
    After ``super().__init__`` the agent has ``spec``, ``device``, ``seed``, ``hp`` (the
    config) and ``generator`` (exploration randomness on the agent's device).
    """

    Config: ClassVar[type] = NoHyperparameters
    learns: ClassVar[bool] = True  # False for fixed policies (they may serve as evaluation baselines)

    def __init__(self, spec: AgentSpec, *, seed: int = 0, device: str = "auto", **hyperparameters: Any) -> None:
        self.spec, self.seed, self.device = spec, seed, resolve_device(device)
        self.hp = build_config(self.Config, hyperparameters, "agent")
        self.check_spec(spec)
        self.generator = make_generator(seed, self.device)
        self.item_available: torch.Tensor | None = spec.item_available

    def check_spec(self, spec: AgentSpec) -> None:
        """Raise :class:`ConfigError` if this agent cannot serve the shop described by ``spec``."""

    # ------------------------------------------------------------------ the catalog it recommends from
    def use_catalog(self, available: torch.Tensor | None) -> torch.Tensor | None:
        """Recommend from the items ``available`` ([N] bool, a shop's live ``item_available``; None: all)
        from now on; returns the mask used before. The evaluator calls it to play the agent in
        another shop of the same catalog (new items open, say)."""
        previous, self.item_available = self.item_available, available
        return previous

    def mask_unavailable(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` [B, N] with the items not in the catalog set to -inf (unchanged when all are in)."""
        if self.item_available is None:
            return scores
        return scores.masked_fill(~self.item_available.to(scores.device), float("-inf"))

    def random_slates(self, b: int) -> torch.Tensor:
        """[b, K] uniformly random slates of distinct items in the catalog, from the agent's generator."""
        available = None if self.item_available is None else self.item_available.to(self.device)
        return available_random_slates(b, available, self.spec.n_items, self.spec.slate_size, self.generator)

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The agent's hyperparameters as a plain dict (for logging and tests)."""
        return {f.name: getattr(self.hp, f.name) for f in fields(self.hp)}

    def action_probs(self, obs: Observation, slot: torch.Tensor | None = None) -> torch.Tensor:
        """A deterministic greedy policy's probabilities: all mass on the item its slate shows in ``slot``."""
        return slate_probs(self.act(obs), slot, self.spec.n_items)

    def scoring_module(self) -> torch.nn.Module:
        """The agent in servable form: a module mapping an observation to [B, N] item scores.

        Its top K (ties aside) is the greedy slate, ``act(obs, explore=False)``; a service
        adds its own exploration on top (:mod:`rlrec.serve.exploration`). The module holds
        copies, not references, so training on does not change a served model, and it must
        trace with ``torch.jit.trace`` (no control flow that depends on the data).
        :mod:`rlrec.serve.export` turns it into a self-contained artifact.
        """
        raise NotServable(
            f"agent {type(self).__name__} cannot be served: it has no scoring_module() giving [B, N] item "
            "scores; serve a dqn, bandit, popular, random or tabular_q run."
        )

    def observe(self, transition: Transition) -> None:
        pass

    def update(self) -> dict[str, torch.Tensor]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class NotServable(ConfigError):
    """The agent has no servable form (see :meth:`AgentBase.scoring_module`)."""


class ItemScores(torch.nn.Module):
    """The servable form of a policy that scores items the same way for every user: ``scores`` [N]
    broadcast to [B, N]."""

    def __init__(self, scores: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scores", scores.detach().clone().float())

    def forward(self, obs: Observation) -> torch.Tensor:
        return self.scores.unsqueeze(0).expand(obs["user_features"].shape[0], -1)


def require_spec(condition: bool, what: str, fix: str) -> None:
    """Raise :class:`ConfigError` ``this agent needs <what>; <fix>`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"this agent needs {what}; {fix}.")


def slate_probs(slate: torch.Tensor, slot: torch.Tensor | None, n_items: int) -> torch.Tensor:
    """[B, N] float64: a deterministic policy's ``action_probs``, all mass on the item its slate
    [B, K] shows in ``slot`` [B] (default 0; slots past K read the last one)."""
    if slot is None:
        items = slate[:, 0]
    else:
        items = slate.gather(1, slot.to(slate.device).clamp(0, slate.shape[1] - 1).view(-1, 1)).squeeze(1)
    return torch.nn.functional.one_hot(items, n_items).double()


def batch_size(obs: Observation) -> int:
    """Rows in an observation: simulator observations and logged contexts both carry ``user_features``."""
    return obs["user_features"].shape[0]


@torch.no_grad()
def update_target_network(
    online: torch.nn.Module, target: torch.nn.Module, *, tau: float, interval: int, updates: int | torch.Tensor
) -> None:
    """The target network after ``updates`` gradient steps: Polyak averaging (``target += tau (online -
    target)``) after every update when tau < 1, else a hard copy every ``interval`` updates. ``updates``
    may be a 0-d device counter (the compiled step's): the copy is then chosen on the device
    (``torch.where``), without a host branch. Buffers (which item ids are known) follow the online network."""
    if tau < 1.0:
        for p, p_target in zip(online.parameters(), target.parameters()):
            p_target.lerp_(p, tau)
        for b, b_target in zip(online.buffers(), target.buffers()):
            b_target.copy_(b)
    elif isinstance(updates, torch.Tensor):
        due = updates % interval == 0
        for p, p_target in zip(online.parameters(), target.parameters()):
            p_target.copy_(torch.where(due, p, p_target))
    elif updates % interval == 0:
        target.load_state_dict(online.state_dict())


def linear_schedule(start: float, end: float, duration: int, t: int | torch.Tensor) -> float | torch.Tensor:
    """``start`` moving linearly to ``end`` over ``duration`` steps, then ``end``.

    ``t`` may be a 0-d integer tensor (the compiled step's counter): the result is then a float64
    tensor with the value the int gives, computed on the device.
    """
    if duration <= 0:
        return end
    if isinstance(t, torch.Tensor):
        return start + (end - start) * (t.double() / duration).clamp_max(1.0)
    return start + (end - start) * min(t / duration, 1.0)


def explore_rows(
    greedy: torch.Tensor,
    random: torch.Tensor,
    epsilon: float | torch.Tensor,
    generator: torch.Generator | None = None,
    uniform: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each row of ``greedy`` [B, K] replaced by the row of ``random`` with probability ``epsilon``.

    The coin of row b is ``uniform[b] < epsilon``; ``uniform`` [B] is drawn from ``generator`` unless given.
    """
    if uniform is None:
        uniform = torch.rand(greedy.shape[0], generator=generator, device=greedy.device)
    return torch.where((uniform < epsilon).unsqueeze(-1), random, greedy)
