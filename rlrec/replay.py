"""A replay buffer for a batched environment, resident on the model's device.

Rows arrive B at a time (one per user), so storage is laid out ``[capacity_steps, B]``:
slot ``t`` holds the B transitions of one environment step. That layout makes n-step
returns a matter of looking ``n - 1`` slots ahead in the same column.
"""

from __future__ import annotations

import torch

from rlrec.sim.env import Observation

Batch = dict[str, torch.Tensor | Observation]
"""Keys: ``obs`` and ``next_obs`` (observation dicts), ``action`` [.] long, ``reward`` [.],
``done`` [.] bool, ``discount`` [.] (gamma^k for an n-step return, gamma for one step)."""


class ReplayBuffer:
    """Circular buffer of the last ``capacity`` transitions of B parallel users.

    Args:
        capacity: transitions kept (rounded down to a multiple of ``num_users``).
        num_users: B, the rows added per call.
        device: where the storage and the samples live.
        gamma: discount, used to build n-step returns.
        n_step: 1 for ordinary one-step transitions; n > 1 samples n-step returns that stop
            at the first ``done`` (never bootstrapping across a session's end).
        seed: seeds the sampling generator.
    """

    def __init__(self, capacity: int, num_users: int, device: torch.device | str = "cpu", gamma: float = 0.99,
                 n_step: int = 1, seed: int = 0) -> None:
        if capacity < num_users:
            raise ValueError(f"agent.buffer_size = {capacity} must be >= the number of users {num_users}.")
        if n_step < 1:
            raise ValueError(f"agent.n_step = {n_step} must be >= 1.")
        self.steps = capacity // num_users  # slots, each holding B transitions
        self.num_users, self.device, self.gamma, self.n_step = num_users, torch.device(device), gamma, n_step
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.storage: dict[str, torch.Tensor] = {}
        self.added = 0  # environment steps added so far (slot = added % steps)

    def __len__(self) -> int:
        return min(self.added, self.steps) * self.num_users

    def _allocate(self, transition: dict[str, torch.Tensor]) -> None:
        for key, value in transition.items():
            self.storage[key] = torch.zeros((self.steps, *value.shape), dtype=value.dtype, device=self.device)

    @staticmethod
    def flatten(obs: Observation, next_obs: Observation, action: torch.Tensor, reward: torch.Tensor,
                done: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {f"obs.{k}": v for k, v in obs.items()}
        out.update({f"next_obs.{k}": v for k, v in next_obs.items()})
        out.update(action=action, reward=reward.float(), done=done)
        return out

    def add(self, obs: Observation, action: torch.Tensor, reward: torch.Tensor, next_obs: Observation,
            done: torch.Tensor) -> None:
        """Store one environment step: B transitions. ``next_obs`` must be the true successor
        (the shop's ``final_obs``), not the fresh user that replaced a finished row."""
        transition = self.flatten(obs, next_obs, action, reward, done)
        if not self.storage:
            self._allocate(transition)
        slot = self.added % self.steps
        for key, value in transition.items():
            self.storage[key][slot] = value.to(self.device)
        self.added += 1

    def sample(self, batch_size: int) -> Batch:
        """``batch_size`` transitions drawn uniformly, as a :data:`Batch` on the buffer's device."""
        held = min(self.added, self.steps)
        usable = held - (self.n_step - 1)  # the n-step window must lie inside what is held
        if usable <= 0:
            raise RuntimeError(f"the buffer holds {len(self)} transitions: too few to sample (n_step = {self.n_step}).")
        oldest = self.added - held
        age = torch.randint(usable, (batch_size,), generator=self.generator, device=self.device)
        t0 = oldest + age  # absolute step index
        user = torch.randint(self.num_users, (batch_size,), generator=self.generator, device=self.device)

        def at(key: str, t: torch.Tensor) -> torch.Tensor:
            return self.storage[key][t % self.steps, user]

        reward = torch.zeros(batch_size, device=self.device)
        discount = torch.ones(batch_size, device=self.device)
        done = torch.zeros(batch_size, dtype=torch.bool, device=self.device)
        last = t0.clone()  # the step whose next_obs bootstraps
        for k in range(self.n_step):  # loops over the n-step window, never over users or items
            t = t0 + k
            live = ~done
            reward += live * discount * at("reward", t)
            discount = torch.where(live, discount * self.gamma, discount)
            last = torch.where(live, t, last)
            done = done | at("done", t)
        obs_keys = [k[4:] for k in self.storage if k.startswith("obs.")]
        return {
            "obs": {k: at(f"obs.{k}", t0) for k in obs_keys},
            "action": at("action", t0),
            "reward": reward,
            "next_obs": {k: at(f"next_obs.{k}", last) for k in obs_keys},
            "done": done,
            "discount": discount,
        }

    def state_dict(self) -> dict:
        return {"storage": self.storage, "added": self.added, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.storage = {k: v.to(self.device) for k, v in state["storage"].items()}
        self.added = int(state["added"])
        self.generator.set_state(state["generator"].cpu() if self.device.type == "cpu" else state["generator"])
