"""The one small protocol every policy follows, and the transition it observes."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from rlrec.sim.env import Observation, StepResult

Transition = dict[str, Any]
"""One environment step of B users: ``obs``, ``slate`` [B, K], ``action`` [B] (the item acted
on: the clicked one, or the first shown when the slate was ignored), ``reward`` [B],
``next_obs`` (the true successor, before any reset), ``done`` [B], ``purchase`` [B]."""


def make_transition(obs: Observation, slate: torch.Tensor, result: StepResult) -> Transition:
    """Package ``Shop.step``'s result for ``Agent.observe``."""
    return {
        "obs": obs,
        "slate": slate,
        "action": result.info["item"],
        "reward": result.reward,
        "next_obs": result.info["final_obs"],
        "done": result.done,
        "purchase": result.info["purchase"],
    }


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


def linear_schedule(start: float, end: float, duration: int, t: int) -> float:
    """``start`` moving linearly to ``end`` over ``duration`` steps, then ``end``."""
    if duration <= 0:
        return end
    return start + (end - start) * min(t / duration, 1.0)


def explore_rows(greedy: torch.Tensor, random: torch.Tensor, epsilon: float, generator: torch.Generator) -> torch.Tensor:
    """Each row of ``greedy`` [B, K] replaced by the row of ``random`` with probability ``epsilon``."""
    pick = torch.rand(greedy.shape[0], generator=generator, device=greedy.device) < epsilon
    return torch.where(pick.unsqueeze(-1), random, greedy)
