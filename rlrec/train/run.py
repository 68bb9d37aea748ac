"""The run format: checkpoints (atomic save, load), the env fingerprint, resume checks, loading a run.

A run directory holds ``checkpoint.pt`` (written by :func:`save_checkpoint`), ``best.pt`` (the
checkpoint that scored best on the validation shop, with ``trainer.val_every``), ``.hydra/`` (the
run's config), TensorBoard events and reports. Training, evaluation and serving read a run
through :func:`load_run`; training resumes through :func:`check_resume`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from rlrec.config import env_config_from

CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"
FORMAT = "rlrec-3"  # rlrec-3: the catalog fingerprint, the catalog's clock, the agents' known-item masks

RUNTIME_KEYS = {
    "trainer.env_steps",
    "trainer.log_every",
    "trainer.checkpoint_every",
    "trainer.eval_users",
    "trainer.eval_seed",
    "trainer.eval_baselines",
    "trainer.resume",
    "trainer.allow_config_change",
    "trainer.progress",
    "trainer.val_every",
    "trainer.val_users",
    "trainer.val_seed",
    "trainer.val_shop",
    "trainer.compile",
    "trainer.compile_mode",
    "trainer.distributed",
    "env.check_actions",
    "env.compile",
    "logger.tensorboard",
    "logger.log_dir",
}
"""Keys that may change when a run resumes: how long and how it runs, not what it learns."""


class RunError(RuntimeError):
    """A run directory cannot be used: unreadable, unwritable, or its state does not fit the command."""


class CheckpointError(RunError):
    """A checkpoint is missing, unreadable, unwritable or does not belong to this configuration."""


# ----------------------------------------------------------------------------- files
def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a crash or a full disk leaves the previous checkpoint intact."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
        reason = (str(err).strip().splitlines() or [type(err).__name__])[-1]
        raise CheckpointError(
            f"could not write the checkpoint {path} ({reason}); the previous checkpoint is "
            "intact. Free disk space or make the directory writable, then run the same command "
            "to resume."
        ) from err
    finally:
        if tmp is not None and Path(tmp).exists():
            Path(tmp).unlink(missing_ok=True)


def remove_orphan_temp_files(run_dir: Path) -> list[Path]:
    """Delete temp files left by checkpoint writes that were killed (never the checkpoint itself)."""
    orphans = sorted(p for name in (CHECKPOINT_NAME, BEST_NAME) for p in Path(run_dir).glob(f".{name}.*.tmp"))
    for orphan in orphans:
        orphan.unlink(missing_ok=True)
    return orphans


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, with a clear error when it cannot be."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist: pass the checkpoint file of a train run "
            "(<run_dir>/checkpoint.pt) or its run directory."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for a damaged file
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a rlrec checkpoint ({type(err).__name__}: "
            f"{err}); delete it to start afresh, or point to another one."
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise CheckpointError(
            f"checkpoint {path} is not a {FORMAT} checkpoint (format {found!r}); train it again "
            "with this version of rlrec."
        )
    return state


def resolve_checkpoint(run_dir: str | Path | None, checkpoint: str | Path | None = None) -> Path:
    """The checkpoint file named by ``checkpoint`` or found in ``run_dir``; a clear error otherwise."""
    if checkpoint:
        return Path(checkpoint)
    if not run_dir:
        raise CheckpointError("say which run to use: run_dir=<a train run's directory> or checkpoint=<file>.")
    path = Path(run_dir)
    if not path.is_dir():
        raise CheckpointError(f"run_dir {path} is not a directory: pass the output directory of a train run.")
    return path / CHECKPOINT_NAME


def move_to(obj: Any, device: torch.device) -> Any:
    """Every tensor inside ``obj`` (nested dicts, lists) moved to ``device``; RNG states stay on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.dtype == torch.uint8 else obj.to(device)
    if isinstance(obj, dict):
        return {k: move_to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to(v, device) for v in obj)
    return obj


# ----------------------------------------------------------------------------- identity and resume
def env_fingerprint(env_cfg: Any) -> str:
    """A hash of the env fields that define the shop (not its batch size, device or runtime switches)."""
    values = {f.name: getattr(env_cfg, f.name) for f in fields(env_cfg)}
    shop = {k: v for k, v in values.items() if k not in ("num_users", "device", "check_actions", "compile")}
    return hashlib.sha256(json.dumps(shop, sort_keys=True, default=str).encode()).hexdigest()[:16]


def catalog_fingerprint(shop: Any) -> str:
    """A hash of what the agent knows of the shop's items: category, brand, price, content vectors and
    when each item enters the catalog. It catches a content file that changed under a run."""
    catalog = shop.catalog
    digest = hashlib.sha256()
    for tensor in (catalog.category, catalog.brand, catalog.price, catalog.content, shop.arrival):
        if tensor is not None:
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def check_catalog(saved: dict[str, Any], shop: Any, path: Path) -> None:
    """Refuse a shop whose items differ from those the checkpoint at ``path`` was trained with."""
    if saved.get("catalog_fingerprint") != catalog_fingerprint(shop):
        cfg = shop.cfg
        source = f"the content file {cfg.content_path}" if cfg.content_path else "the catalog"
        raise CheckpointError(
            f"checkpoint {path} was trained on another catalog than the one its config builds now: "
            f"{source} changed (item features, content vectors or new items differ). Restore the "
            "file the run was trained with (env.content_sha256 pins it), or train afresh."
        )


def config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: saved -> current`` for every leaf that differs, runtime keys (:data:`RUNTIME_KEYS`) excepted."""
    out = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        if name in RUNTIME_KEYS:
            continue
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{name}.")
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


def check_resume(saved: dict[str, Any], cfg: DictConfig, path: Path, world_size: int = 1) -> list[str]:
    """Refuse to resume from ``saved`` (read from ``path``) unless ``cfg`` continues the same run
    with the same number of ranks (``world_size``, see :mod:`rlrec.train.distributed`).

    Returns the accepted config changes (non-empty only with ``trainer.allow_config_change``).
    """
    ranks = int(saved.get("world_size", 1))
    if ranks != world_size:
        how = f"torchrun --nproc_per_node={ranks} train.py trainer.distributed=true" if ranks > 1 else "one process"
        raise CheckpointError(
            f"checkpoint {path} was written by {ranks} rank(s) and this run has {world_size}: each rank's "
            f"sessions and replay are in it, so resume with {ranks} ({how}), or set trainer.resume=never "
            "to start afresh."
        )
    current = OmegaConf.to_container(cfg, resolve=True)
    changes = config_differences(saved["config"], current)
    if changes and not cfg.trainer.allow_config_change:
        raise CheckpointError(
            f"checkpoint {path} was written with another run config ({'; '.join(changes)}); resume "
            "with the same settings, add trainer.allow_config_change=true to continue with the new "
            "ones (recorded in the checkpoint), or set trainer.resume=never to start afresh."
        )
    if int(cfg.trainer.env_steps) < int(saved["env_step"]):
        raise CheckpointError(
            f"checkpoint {path} already holds {saved['env_step']} environment steps, more than "
            f"trainer.env_steps = {cfg.trainer.env_steps}: ask for at least "
            f"trainer.env_steps={saved['env_step']}, or set trainer.resume=never to start afresh."
        )
    return changes


# ----------------------------------------------------------------------------- loading a run
@dataclass
class LoadedRun:
    """A trained run, ready to act: its checkpoint, config, shop and agent."""

    checkpoint: dict[str, Any]
    cfg: DictConfig
    shop: Any  # rlrec.sim.env.Shop
    agent: Any
    label: str  # e.g. "trained (dqn)"
    path: Path


def load_run(path: str | Path, **env_overrides: Any) -> LoadedRun:
    """The run saved at checkpoint ``path``: its shop (with ``env_overrides`` of runtime fields such as
    ``num_users`` or ``device``) and its agent with the trained state loaded.

    The shop is the one the agent was trained in; the checkpoint's fingerprint checks it.
    """
    from rlrec.agents import agent_name, build_agent
    from rlrec.agents.base import AgentSpec
    from rlrec.sim.env import Shop

    path = Path(path)
    saved = load_checkpoint(path)
    cfg = OmegaConf.create(saved["config"])
    env_cfg = env_config_from(cfg.env, **env_overrides)
    if env_fingerprint(env_cfg) != saved["env_fingerprint"]:
        raise CheckpointError(f"checkpoint {path} does not match its own env config; it was edited or damaged.")
    shop = Shop(env_cfg)
    check_catalog(saved, shop, path)
    agent = build_agent(
        cfg.agent,
        AgentSpec.from_shop(shop, num_users=int(saved["num_users"])),
        seed=int(cfg.seed),
        device=str(shop.device),
    )
    agent.load_state_dict(move_to(saved["agent"], shop.device))
    return LoadedRun(saved, cfg, shop, agent, f"trained ({agent_name(str(cfg.agent._target_))})", path)


def shop_state(shop: Any) -> dict[str, Any]:
    """What a resume needs of the shop: its sessions' state, its generator and its catalog's clock."""
    return {
        "state": vars(shop.state),
        "generator": shop.generator.get_state(),
        "catalog_step": shop.catalog_step,
        "catalog_open": shop.catalog_open,
    }


def restore_shop_state(shop: Any, saved: dict[str, Any]) -> None:
    from rlrec.sim.env import ShopState

    shop.state = ShopState(**{k: v.to(shop.device) for k, v in saved["state"].items()})
    shop.generator.set_state(saved["generator"])
    shop.restore_catalog(saved["catalog_step"], saved["catalog_open"])
