"""A replay buffer for a batched environment, resident on the model's device.

Rows arrive B at a time (one per user), so storage is laid out ``[capacity_steps, B]``:
slot ``t`` holds the B transitions of one environment step. That layout makes n-step
windows a matter of looking ``n - 1`` slots ahead in the same column.
"""

from __future__ import annotations

from typing import Any

import torch

from rlrec.config import require

Batch = dict[str, Any]
"""What :meth:`ReplayBuffer.sample` returns: every stored key at the window's first step
(``obs`` as an observation dict, ``action``...), and for the n-step window ``rewards``
[batch, n] (zero after the window's end), ``steps`` [batch] long (k, the rewards in the
window: n, or fewer when the session ended), ``done`` [batch] bool (the window ended the
session) and ``next_obs`` (the observation after the window's last step)."""


def check_replay_settings(buffer_size: int, batch_size: int, n_step: int, num_users: int) -> None:
    """The ``agent.buffer_size`` / ``agent.batch_size`` an agent with a replay buffer needs on a shop of
    ``num_users`` rows: one clear error each, before any storage is allocated."""
    require(
        buffer_size >= num_users * n_step,
        "agent.buffer_size",
        buffer_size,
        f">= env.num_users * agent.n_step = {num_users * n_step} (the buffer stores whole environment steps of "
        "all users)",
    )
    require(batch_size <= buffer_size, "agent.batch_size", batch_size, f"<= agent.buffer_size = {buffer_size}")


class ReplayBuffer:
    """Circular buffer of the last ``capacity`` transitions of B parallel users.

    Args:
        capacity: transitions kept (rounded down to a multiple of ``num_users``).
        num_users: B, the rows added per call.
        device: where the storage and the samples live.
        n_step: 1 for ordinary one-step transitions; n > 1 samples windows of n steps that stop
            at the first ``done`` (never running across a session's end).
        seed: seeds the sampling generator.
    """

    def __init__(
        self, capacity: int, num_users: int, device: torch.device | str = "cpu", n_step: int = 1, seed: int = 0
    ) -> None:
        if capacity < num_users:
            raise ValueError(f"agent.buffer_size = {capacity} must be >= the number of users {num_users}.")
        if n_step < 1:
            raise ValueError(f"agent.n_step = {n_step} must be >= 1.")
        self.steps = capacity // num_users  # slots, each holding B transitions
        if self.steps < n_step:
            raise ValueError(
                f"agent.buffer_size = {capacity} holds {self.steps} steps of {num_users} users: "
                f"fewer than agent.n_step = {n_step}."
            )
        self.num_users, self.device, self.n_step = num_users, torch.device(device), n_step
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.storage: dict[str, torch.Tensor] = {}
        self.added = 0  # environment steps added so far (slot = added % steps)

    def __len__(self) -> int:
        return min(self.added, self.steps) * self.num_users

    @staticmethod
    def _flatten(transition: dict[str, Any]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for key, value in transition.items():
            if isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out

    def add(self, transition: dict[str, Any]) -> None:
        """Store one environment step: B transitions, each key a [B, ...] tensor or a dict of them.

        It must hold ``reward``, ``done`` and ``next_obs``, the true successor (the shop's
        ``final_obs``), not the fresh user that replaced a finished row.
        """
        self.allocate(transition)
        self.write(transition, self.added % self.steps)
        self.added += 1

    def allocate(self, transition: dict[str, Any]) -> None:
        """Make the storage for transitions shaped like ``transition``, unless it exists."""
        if not self.storage:
            for key, value in self._flatten(transition).items():
                dtype = torch.float32 if key == "reward" else value.dtype
                self.storage[key] = torch.zeros((self.steps, *value.shape), dtype=dtype, device=self.device)

    def write(self, transition: dict[str, Any], slot: int | torch.Tensor) -> None:
        """Store one environment step into ``slot``, an int or a 0-d long tensor on the buffer's device (the
        compiled step's counter: ``index_copy_`` then writes it without reading the index on the host)."""
        for key, value in self._flatten(transition).items():
            if isinstance(slot, torch.Tensor):
                store = self.storage[key]
                store.index_copy_(0, slot.view(1), value.to(store.dtype).unsqueeze(0))
            else:
                self.storage[key][slot] = value.to(self.device)

    def sample(self, batch_size: int) -> Batch:
        """``batch_size`` n-step windows drawn uniformly, as a :data:`Batch` on the buffer's device."""
        return self.windows(*self.draw(batch_size), self.added)

    def draw(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The random numbers of :meth:`sample`: each window's start (``age``, in steps after the oldest
        step held) and its user column, both [batch_size] long, from the buffer's generator."""
        held = min(self.added, self.steps)
        usable = held - (self.n_step - 1)  # the n-step window must lie inside what is held
        if usable <= 0:
            raise RuntimeError(f"the buffer holds {len(self)} transitions: too few to sample (n_step = {self.n_step}).")
        age = torch.randint(usable, (batch_size,), generator=self.generator, device=self.device)
        user = torch.randint(self.num_users, (batch_size,), generator=self.generator, device=self.device)
        return age, user

    def windows(self, age: torch.Tensor, user: torch.Tensor, added: int | torch.Tensor) -> Batch:
        """The n-step windows that start ``age`` steps after the oldest step held, in columns ``user``,
        when ``added`` environment steps have been added (an int, or the compiled step's 0-d tensor)."""
        batch_size = age.shape[0]
        if isinstance(added, torch.Tensor):
            oldest = (added - self.steps).clamp_min(0)
        else:
            oldest = added - min(added, self.steps)
        t0 = oldest + age  # absolute step index

        def at(key: str, t: torch.Tensor) -> torch.Tensor:
            return self.storage[key][t % self.steps, user]

        rewards = torch.zeros(batch_size, self.n_step, device=self.device)
        steps = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        done = torch.zeros(batch_size, dtype=torch.bool, device=self.device)
        last = t0.clone()  # the step whose next_obs ends the window
        for j in range(self.n_step):  # loops over the n-step window, never over users or items
            t = t0 + j
            live = ~done
            rewards[:, j] = torch.where(live, at("reward", t), rewards[:, j])
            steps += live.long()
            last = torch.where(live, t, last)
            done = done | at("done", t)
        batch: Batch = {}
        for key in self.storage:
            name, _, sub = key.partition(".")
            if name in ("reward", "done", "next_obs"):
                continue
            value = at(key, t0)
            if sub:
                batch.setdefault(name, {})[sub] = value
            else:
                batch[name] = value
        batch["next_obs"] = {
            key.partition(".")[2]: at(key, last) for key in self.storage if key.startswith("next_obs.")
        }
        batch.update(rewards=rewards, steps=steps, done=done)
        return batch

    def state_dict(self) -> dict:
        return {"storage": self.storage, "added": self.added, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.storage = {k: v.to(self.device) for k, v in state["storage"].items()}
        self.added = int(state["added"])
        self.generator.set_state(state["generator"].cpu() if self.device.type == "cpu" else state["generator"])
