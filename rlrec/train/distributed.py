"""Data-parallel training on torch.distributed: ``torchrun --nproc_per_node=G train.py trainer.distributed=true``.

Each of the G ranks (processes) runs the training loop of :mod:`rlrec.train.loop` on its own
device (``cuda:<LOCAL_RANK>`` with NCCL, or the CPU with gloo):

- **its own users**: every rank builds the same shop (catalog and user model come from
  ``env.seed``) and plays its own ``env.num_users`` sessions, with its own replay buffer; its
  sessions, exploration and replay samples come from ``seed + RANK_SEED_STRIDE * rank``
  (rank 0 plays exactly what a single-process run with that seed plays);
- **one network**: the DQN's loss runs through :class:`~torch.nn.parallel.DistributedDataParallel`,
  which starts every rank from rank 0's weights and averages the gradients over the ranks in the
  backward pass, so every rank takes the same optimizer step and the networks stay identical (the
  target network is broadcast from rank 0 at the start too);
- **rank 0 alone writes**: TensorBoard, ``train.log``, the run config, checkpoints and the final
  evaluation. The episode metrics and losses it logs are summed (averaged) over all ranks first.
- **one checkpoint file**: rank 0's state as a single-process run writes it, plus each other
  rank's agent state (its replay buffer and random-number states) and shop state gathered into
  ``ranks`` (on rank 0, through the CPU), written atomically by rank 0. A resume restores every
  rank from that file and needs the same number of ranks. One file keeps a checkpoint consistent
  (all ranks at the same step, written or not as one) at the price of rank 0 holding every
  rank's replay buffer while it writes.

Batch and learning rate: per optimizer step, each rank samples ``agent.batch_size`` transitions
and the gradients are averaged, so the effective batch is ``G * agent.batch_size`` and each
environment step collects ``G * env.num_users`` transitions. ``agent.lr`` is not scaled for you:
with Adam keep it (the larger batch mostly lowers the gradient noise), or try ``sqrt(G)`` times it;
with SGD the linear rule (``G`` times) is the usual start. ``learning_starts``,
``exploration_steps`` and ``buffer_size`` count one rank's transitions, so the schedules run over
the same environment steps as a single-process run with ``env.num_users`` users.

Launchers: torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; under SLURM (Hydra's submitit launcher with ``tasks_per_node=G``, see
``conf/hydra/launcher/slurm_ddp.yaml``) submitit's ``TorchDistributedEnvironment`` sets them from
SLURM's variables. There is no process pool or parameter server of rlrec's own.
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any

import torch
import torch.distributed as dist

from rlrec.config import ConfigError
from rlrec.utils import resolve_device

RANK_SEED_STRIDE = 1_000_000
"""Rank r seeds its sessions, exploration and replay with ``seed + RANK_SEED_STRIDE * r``."""


class World:
    """The ranks of a run: this process's rank, their number, its device, and whether a process group
    joins them (``trainer.distributed``; a group may have one rank).

    A single-process run is a world of one without a group, whose collectives return at once: the
    training loop is written once for both.
    """

    def __init__(self, rank: int = 0, size: int = 1, device: torch.device | None = None, group: bool = False) -> None:
        self.rank, self.size, self.device, self.group = rank, size, device, group

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, checkpoints and evaluates."""
        return self.rank == 0

    def seed(self, seed: int) -> int:
        """This rank's seed for its sessions, exploration and replay sampling."""
        return seed + RANK_SEED_STRIDE * self.rank

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (any picklable object), on every rank."""
        if self.size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj``, in rank order, on rank 0; None on the others. Tensors must be on the CPU."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, in place."""
        if self.size > 1:
            dist.all_reduce(tensor)
        return tensor

    def all_true(self, flag: bool) -> bool:
        """``flag`` holds on every rank (so that all ranks take the same branch)."""
        if self.size == 1:
            return flag
        count = self.sum_(torch.tensor([float(flag)], device=self._collective_device()))
        return int(count.item()) == self.size

    def _collective_device(self) -> torch.device:
        return self.device if self.device is not None and self.device.type == "cuda" else torch.device("cpu")

    def close(self) -> None:
        if self.group and dist.is_initialized():
            dist.destroy_process_group()


def init_world(distributed: bool, device: str) -> World:
    """Join the process group when ``trainer.distributed`` is set (a world of one otherwise).

    ``device`` is ``env.device``: ``auto`` or ``cuda`` put rank r on ``cuda:<LOCAL_RANK>`` (NCCL),
    ``cpu`` keeps every rank on the CPU (gloo).
    """
    if not distributed:
        return World()
    if "RANK" not in os.environ and os.environ.get("SUBMITIT_EXECUTOR"):  # a SLURM (or local) submitit task
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ConfigError(
            "trainer.distributed = true needs a launcher that starts one process per rank: "
            "torchrun --nproc_per_node=<G> train.py trainer.distributed=true, or "
            "python train.py -m hydra/launcher=slurm_ddp trainer.distributed=true on SLURM."
        )
    if device.startswith("cuda:"):
        raise ConfigError(
            f"env.device = {device!r} is invalid with trainer.distributed = true: it must be 'auto', 'cuda' or "
            "'cpu' (each rank takes the GPU of its LOCAL_RANK)."
        )
    rank, size, local_rank = (
        int(os.environ["RANK"]),
        int(os.environ["WORLD_SIZE"]),
        int(os.environ.get("LOCAL_RANK", 0)),
    )
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        # A task may see every GPU of its node or only its own (SLURM's gpus_per_task).
        resolved = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(resolved)
    dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    if rank > 0:  # rank 0 alone logs: the others keep warnings and errors, on the console only
        root = logging.getLogger()
        for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            root.removeHandler(handler)
            handler.close()
        logging.getLogger("rlrec").setLevel(logging.WARNING)
    return World(rank, size, resolved, group=True)


def wrap_agent(agent: Any, world: World) -> None:
    """Make ``agent`` train data-parallel: its loss's forward through DistributedDataParallel, and the
    target network rank 0's. Agents with a Q network (``q``, ``q_target``, ``q_train``) are supported."""
    if not world.group:
        return
    if not all(hasattr(agent, name) for name in ("q", "q_target", "q_train")):
        raise ConfigError(
            f"trainer.distributed = true trains agents with a Q network (agent=dqn); this agent is a "
            f"{type(agent).__name__}: use agent=dqn or set trainer.distributed=false."
        )
    if agent.spec.item_available is not None:  # each rank's network would learn other ids (the known items)
        raise ConfigError(
            "trainer.distributed = true trains on a fixed catalog, and this shop's changes (env.holdout_items > 0): "
            "set env.holdout_items=0 or trainer.distributed=false."
        )
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [world.device.index] if world.device is not None and world.device.type == "cuda" else None
    # The network's buffers are the catalog's fixed features, the same on every rank: no sync per forward
    # (torch >= 2.13 names the switch forward_sync_buffers, older versions broadcast_buffers).
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    quiet = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    agent.q_train = DistributedDataParallel(agent.q, device_ids=device_ids, **quiet)
    with torch.no_grad():
        for tensor in agent.q_target.state_dict().values():
            dist.broadcast(tensor, src=0)


def quiet_rank_overrides(argv: list[str]) -> list[str]:
    """Hydra overrides for a torchrun rank other than 0, which must write nothing: no log file, and no
    run directory of its own (each rank would otherwise name one from its own clock)."""
    if int(os.environ.get("RANK", "0")) == 0 or {"-m", "--multirun"} & set(argv):
        return []
    extra = ["hydra/job_logging=none", "hydra/hydra_logging=none"]
    if not any(arg.startswith("hydra.run.dir=") for arg in argv):
        extra.append("hydra.run.dir=.")
    return extra
