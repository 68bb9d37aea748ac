"""The launch-free training step (``trainer.compile=true``): one DQN step without host synchronisation.

:func:`rlrec.train.loop.train_steps` is the reference: readable, eager, and it asks the device
for a count once per step (the shop's reset of finished rows). :class:`TrainStep` does the same
work (act, shop transition, reset of finished rows, replay write, minibatch sample, TD loss,
backward, Adam, target update, the episode metrics) in a form that ``torch.compile`` captures:

- no host synchronisation: finished rows take a fresh user drawn for every row
  (:meth:`rlrec.sim.env.Shop.step_from`), the agent's slates are not checked (they are ids it
  drew from the catalog), metrics stay on the device until the trainer logs them;
- static shapes and static storage: the shop's state, the replay buffer, the counters and the
  metrics are written in place, so CUDA graphs can replay the step on the same memory;
- the counters that gate work inside the step are tensors: the replay slot, epsilon (from the
  transitions seen) and the target network's copy (from the updates done);
- the random numbers are drawn eagerly from the same ``torch.Generator`` objects and in the
  same order as the eager loop (``torch.compile`` cannot trace a generator) and enter the
  graph as inputs: about a dozen small kernels per step (K + 2 for exploration, 4 for the shop,
  2 per update for the replay), then the captured graphs.

The counters also advance on the host, as plain ints computed from the step index (never read
back from the device), so ``learning_starts`` picks which graph runs (collect only, or
collect and learn) and checkpoints hold the same ints as the eager loop's.

The random numbers are the eager loop's except for the fresh users: the same seed gives a
different (equally distributed) run than ``trainer.compile=false``. Run eagerly
(``compile=False``) this class is the reference for its compiled self: tests hold the two to
the same transitions and to parameters within float rounding (inductor fuses the loss and
Adam's arithmetic into kernels whose sums and multiply-adds round differently).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

import torch

from rlrec.agents.base import explore_rows, linear_schedule, make_transition
from rlrec.agents.dqn import DQNAgent
from rlrec.agents.replay import ReplayBuffer
from rlrec.config import ConfigError
from rlrec.sim.env import Shop, StepDraws, random_slate_uniforms, slates_from_uniforms


class _HideProfilerNote(logging.Filter):
    """Drops dynamo's note that it ignores the profiler label of ``Optimizer.step``: harmless, and
    alarming in a training log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Profiler record function")


logging.getLogger("torch._dynamo.variables.ctx_manager").addFilter(_HideProfilerNote())


@contextlib.contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """Inductor's CPU kernels scatter-add gradients (embedding and index backward) with atomic adds
    across threads, so two runs of one seed round differently. With deterministic algorithms on,
    inductor leaves those ops to ATen's serial kernels: compiled CPU runs repeat bit for bit and a
    resumed run ends where a straight one does. Scoped to the step (the flag is process-wide)."""
    if not enabled:
        yield
        return
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
    )
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # NaN-filling every torch.empty costs time
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.utils.deterministic.fill_uninitialized_memory = before[2]


def compile_mode(mode: str, device: torch.device) -> str:
    """``trainer.compile_mode`` resolved: ``"auto"`` is CUDA graphs on CUDA, inductor's default elsewhere."""
    if mode == "auto":
        return "reduce-overhead" if device.type == "cuda" else "default"
    return mode


class TrainStep:
    """Environment steps of DQN training without host synchronisation, compiled or not.

    Args:
        shop: the shop; its state is updated in place.
        agent: a :class:`~rlrec.agents.dqn.DQNAgent` (restored from a checkpoint first, if resuming).
        tracker: an :class:`~rlrec.train.loop.EpisodeTracker`, fed inside the step (optional).
        compile: capture the step with ``torch.compile``; False runs the same code eagerly.
        mode: ``torch.compile`` mode, or ``"auto"`` (see :func:`compile_mode`).

    Each call is one environment step; it returns the last update's metrics (0-d tensors
    written in place, empty before ``learning_starts``).
    """

    def __init__(
        self, shop: Shop, agent: Any, tracker: Any = None, *, compile: bool = True, mode: str = "auto"
    ) -> None:
        if not isinstance(agent, DQNAgent):
            raise ConfigError(
                f"trainer.compile = true runs the DQN's training step, and this agent is a {type(agent).__name__}: "
                "use agent=dqn or set trainer.compile=false."
            )
        if shop.item_available is not None:
            raise ConfigError(
                f"trainer.compile = true runs on a fixed catalog, and this shop's changes (env.holdout_items = "
                f"{shop.cfg.holdout_items}, env.new_item_rate = {shop.cfg.new_item_rate}): set env.holdout_items=0 "
                "or trainer.compile=false."
            )
        if agent.hp.dropout > 0 or agent.hp.id_dropout > 0:  # dropout draws from a generator, which a graph cannot
            raise ConfigError(
                f"trainer.compile = true does not take dropout (agent.dropout = {agent.hp.dropout}, agent.id_dropout "
                f"= {agent.hp.id_dropout}): set both to 0 or trainer.compile=false."
            )
        self.shop, self.agent, self.tracker = shop, agent, tracker
        self.hp, self.device = agent.hp, shop.device
        buffer: ReplayBuffer = agent.buffer
        # The replay's storage must exist before the step is captured: shaped like a transition.
        obs = shop.observation()
        step = obs["step"]
        buffer.allocate({"obs": obs, "action": step, "reward": step.float(), "next_obs": obs, "done": step > 0})
        # Device mirrors of the host's counters, advanced inside the step.
        self.added = torch.tensor(buffer.added, device=self.device)  # replay slots written
        self.seen = torch.tensor(agent.transitions_seen, device=self.device)  # transitions observed (epsilon)
        self.updates = torch.tensor(agent.updates, device=self.device)  # gradient steps (target copies)
        self.metrics = {"td_loss": torch.zeros((), device=self.device), "q_values": torch.zeros((), device=self.device)}
        mode = compile_mode(mode, self.device)
        if compile and mode == "reduce-overhead" and self.device.type == "cuda":
            # CUDA graphs replay on fixed memory: keep the same storage across steps, and make
            # Adam's step counters device tensors (capturable) so that its update is captured too.
            for group in agent.optimizer.param_groups:
                group["capturable"] = True
            for state in agent.optimizer.state.values():
                if "step" in state:
                    state["step"] = state["step"].to(self.device, torch.float32)
            static = [*vars(shop.state).values(), *buffer.storage.values(), self.added, self.seen, self.updates]
            static += [*self.metrics.values(), *(vars(tracker).values() if tracker is not None else ())]
            for tensor in static:
                torch._dynamo.mark_static_address(tensor)
        self.collect, self.forward, self.apply = self._collect, self._forward, self._apply
        if compile:
            self.collect = torch.compile(self._collect, mode=mode, dynamic=False, fullgraph=True)
            # Under DistributedDataParallel (trainer.distributed) the network's forward is compiled on its
            # own, inside DDP's (which runs eagerly to schedule the all-reduce of the gradients).
            whole = agent.q_train is agent.q
            self.forward = torch.compile(self._forward, mode=mode, dynamic=False, fullgraph=whole)
            self.apply = torch.compile(self._apply, mode=mode, dynamic=False)

    # ------------------------------------------------------------------ one step
    def __call__(self) -> dict[str, torch.Tensor]:
        with deterministic_kernels(self.device.type == "cpu"):
            return self._step()

    def _step(self) -> dict[str, torch.Tensor]:
        shop, agent, hp = self.shop, self.agent, self.hp
        try:
            # The step's random numbers, in the eager loop's order: exploration, then the shop.
            picks, order = random_slate_uniforms(shop.num_users, agent.spec.slate_size, agent.generator)
            coins = torch.rand(shop.num_users, generator=agent.generator, device=self.device)
            self.collect(picks, order, coins, shop.draw_step())
            agent.buffer.added += 1
            agent.transitions_seen += shop.num_users
            if agent.transitions_seen < hp.learning_starts:
                return {}
            for _ in range(hp.updates_per_step):
                loss = self.forward(*agent.buffer.draw(hp.batch_size))
                agent.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.apply()
                agent.updates += 1
        except Exception as err:  # torch.compile fails lazily, at the first call
            if type(err).__module__.startswith("torch._"):
                raise RuntimeError(
                    f"trainer.compile=true, but torch.compile could not build the training step on {self.device} "
                    f"({type(err).__name__}: {str(err).splitlines()[0]}). On CPU it needs a working C++ "
                    "compiler; set trainer.compile=false to train eagerly."
                ) from err
            raise
        return self.metrics

    # ------------------------------------------------------------------ the captured parts
    @torch.no_grad()
    def _collect(self, picks: list[torch.Tensor], order: torch.Tensor, coins: torch.Tensor, draws: StepDraws) -> None:
        """Act (epsilon-greedy), step the shop, reset finished rows, store the transition, track metrics."""
        shop, agent, hp, buffer = self.shop, self.agent, self.hp, self.agent.buffer
        obs = shop.observation()
        greedy = agent.greedy(obs)
        epsilon = linear_schedule(hp.eps_start, hp.eps_end, hp.exploration_steps, self.seen)
        slate = explore_rows(greedy, slates_from_uniforms(agent.spec.n_items, picks, order), epsilon, uniform=coins)
        next_state, result = shop.step_from(shop.state, slate, draws)
        transition = make_transition(obs, slate, result)
        buffer.write({key: transition[key] for key in agent.STORED}, self.added % buffer.steps)
        for f in fields(next_state):  # in place, after the replay read obs (which aliases the state)
            getattr(shop.state, f.name).copy_(getattr(next_state, f.name))
        if self.tracker is not None:
            self.tracker.add(result)
        self.added += 1
        self.seen += shop.num_users

    def _forward(self, age: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        """The TD loss of a minibatch of replay windows (its backward is captured with it)."""
        loss, q_values = self.agent.td_loss(self.agent.buffer.windows(age, user, self.added))
        with torch.no_grad():
            self.metrics["td_loss"].copy_(loss)
            self.metrics["q_values"].copy_(q_values.mean())
        return loss

    def _apply(self) -> None:
        """Clip the gradients, take the optimizer's step, let the target network follow."""
        agent = self.agent
        if self.hp.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(agent.q.parameters(), self.hp.max_grad_norm)
        agent.optimizer.step()
        self.updates += 1
        agent._update_target(self.updates)

    # ------------------------------------------------------------------ the loop
    def run(self, env_steps: int, on_step: Any = None, start: int = 0) -> None:
        """Environment steps ``start .. env_steps - 1``; ``on_step(step, metrics, None)`` after each
        (the metrics are tracked inside the step, so there is no step result to hand over)."""
        for step in range(start, env_steps):
            metrics = self()
            if on_step is not None:
                on_step(step, metrics, None)
