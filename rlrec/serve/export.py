"""Export a trained policy as a self-contained artifact a service loads without rlrec's training code.

``python -m rlrec.serve.export --run-dir <run> --out models/v1 [--publish models/current]``

An artifact is a directory:

- ``model.pt``: TorchScript of the agent's scoring module (:meth:`AgentBase.scoring_module`):
  ``scores = model(user_features, history_items, history_codes, step[, satisfaction])``, all
  int64 with a leading batch dimension, ``scores`` [B, N] float. ``torch.jit.load`` is all it takes.
- ``model.onnx``: the same graph in ONNX (opset 17) where the exporter manages it, for ONNX
  Runtime or any other ONNX engine; ``null`` in the manifest otherwise.
- ``catalog.json``: the observable item features (category, brand, price and, for a shop with
  item content, the content vectors) in id order. The model reads the content through its item
  vectors, computed once at export (:class:`rlrec.agents.nets.ServingQ`): a new content vector
  means a new export.
- ``manifest.json``: what a client and the service need: the model version, the env
  fingerprint and config, catalog size, user feature names and sizes, history length, slate
  size, the exploration the model is served with, the rlrec and torch versions, the inputs,
  and a sha256 of every file (a damaged copy is refused at load).

The directory is written under a temporary name and renamed when complete, and ``--publish``
points a symlink at it atomically, so a service watching the link never sees half an artifact.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import rlrec
from rlrec.config import ConfigError, ExplorationConfig, build_config
from rlrec.sim import response

FORMAT = "rlrec-served-model-1"
INPUTS = ("user_features", "history_items", "history_codes", "step", "satisfaction")
RESPONSES = {"ignored": response.IGNORED, "clicked": response.CLICKED, "purchased": response.PURCHASED}
"""History entries of a request: the response code of each kind (a purchase adds rating - 1)."""


class ScoringInputs(torch.nn.Module):
    """The scoring module behind positional tensor inputs, the form TorchScript and ONNX export."""

    def __init__(self, module: torch.nn.Module, observe_satisfaction: bool) -> None:
        super().__init__()
        self.module, self.observe_satisfaction = module, observe_satisfaction

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.module(dict(zip(input_names(self.observe_satisfaction), inputs)))


def input_names(observe_satisfaction: bool) -> tuple[str, ...]:
    """The model's inputs, in order (``satisfaction`` only for shops that observe it)."""
    return INPUTS if observe_satisfaction else INPUTS[:-1]


def example_observation(spec: Any, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A random observation valid for ``spec`` (every field in range, padding included): export's
    tracing example, and the tests' inputs."""
    rand = lambda high, *shape: torch.randint(high, shape, generator=generator)
    obs = {
        "user_features": torch.stack([rand(n, batch) for n in spec.user_feature_sizes], 1),
        "history_items": rand(spec.n_items + 1, batch, spec.history_len),  # n_items pads
        "history_codes": rand(response.N_RESPONSE_CODES, batch, spec.history_len),
        "step": rand(spec.horizon + 1, batch),
    }
    if spec.observe_satisfaction:
        obs["satisfaction"] = rand(spec.satisfaction_levels, batch)
    return obs


def export_agent(
    agent: Any,
    env_cfg: Any,
    out_dir: str | Path,
    *,
    exploration: ExplorationConfig | None = None,
    onnx: bool = True,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write the artifact of ``agent`` (trained in the shop ``env_cfg``) into ``out_dir``.

    ``exploration``: how the model is served (default :class:`ExplorationConfig` as
    epsilon-greedy); ``onnx``: also try the ONNX export; ``provenance``: recorded in the manifest.
    Returns ``out_dir``. Raises :class:`ConfigError` if it exists and is not empty.
    """
    from rlrec.agents import agent_name
    from rlrec.train.run import env_fingerprint

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} exists and is not empty: export into a new directory (one per version).")
    exploration = exploration or ExplorationConfig(kind="epsilon_greedy")
    if exploration.kind == "manifest":
        raise ConfigError("an export needs exploration.kind = greedy, epsilon_greedy or softmax (not 'manifest').")
    spec = agent.spec
    module = ScoringInputs(agent.scoring_module().cpu().eval(), spec.observe_satisfaction).eval()
    names = input_names(spec.observe_satisfaction)
    example = example_observation(spec, 8, torch.Generator().manual_seed(0))
    args = tuple(example[name] for name in names)
    with torch.no_grad():
        expected = module(*args)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notices about tracing and TorchScript's future
            traced = torch.jit.trace(module, args, check_trace=False)
        if not torch.allclose(traced(*args), expected, atol=1e-5, rtol=1e-5):
            raise RuntimeError("the traced model does not reproduce the agent's scores (a bug in its scoring_module)")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    staging.chmod(0o755)  # mkdtemp makes it private; an artifact is meant to be read by a service
    try:
        traced.save(str(staging / "model.pt"))
        onnx_file = _export_onnx(module, args, names, staging / "model.onnx") if onnx else None
        catalog = {
            "category": spec.item_category.tolist(),
            "brand": spec.item_brand.tolist(),
            "price": spec.item_price.tolist(),
        }
        if spec.item_content is not None:  # the model's item vectors were computed from these
            catalog["content"] = spec.item_content.tolist()
        (staging / "catalog.json").write_text(json.dumps(catalog))
        name = agent_name(type(agent))
        settings = {f.name: getattr(exploration, f.name) for f in fields(exploration)}
        weights = hashlib.sha256()
        for key, tensor in sorted(module.state_dict().items()):
            weights.update(key.encode())
            weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        weights.update(json.dumps(settings, sort_keys=True).encode())
        files = ["model.pt", "catalog.json"] + ([onnx_file] if onnx_file else [])
        manifest = {
            "format": FORMAT,
            "model_version": f"{name}-{weights.hexdigest()[:12]}",
            "agent": name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "rlrec_version": rlrec.__version__,
            "torch_version": torch.__version__,
            "env_fingerprint": env_fingerprint(env_cfg),
            "env": {f.name: getattr(env_cfg, f.name) for f in fields(env_cfg)},
            "n_items": spec.n_items,
            "slate_size": spec.slate_size,
            "history_len": spec.history_len,
            "horizon": spec.horizon,
            "user_features": {"names": _user_feature_names(env_cfg), "sizes": list(spec.user_feature_sizes)},
            "observe_satisfaction": spec.observe_satisfaction,
            "satisfaction_levels": spec.satisfaction_levels,
            "responses": RESPONSES,
            "inputs": list(names),
            "output": {"name": "scores", "shape": ["batch", spec.n_items], "dtype": str(expected.dtype)[6:]},
            "exploration": settings,
            "files": {"torchscript": "model.pt", "onnx": onnx_file, "catalog": "catalog.json"},
            "sha256": {f: hashlib.sha256((staging / f).read_bytes()).hexdigest() for f in files},
            "provenance": provenance or {},
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _export_onnx(module: torch.nn.Module, args: tuple, names: tuple[str, ...], path: Path) -> str | None:
    """``model.onnx`` with a dynamic batch dimension, or None (with a warning) if the exporter fails.

    The TorchScript-based exporter takes a fraction of a second; torch.export's (the default
    from torch 2.9) takes ~15 s on the same network, so it is the fallback.
    """
    axes = {name: {0: "batch"} for name in (*names, "scores")}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    module,
                    args,
                    str(path),
                    input_names=list(names),
                    output_names=["scores"],
                    dynamic_axes=axes,
                    opset_version=17,
                    dynamo=False,
                )
            except (TypeError, RuntimeError, ValueError):  # a torch without the TorchScript-based exporter
                batch = torch.export.Dim("batch", min=1, max=1 << 16)
                torch.onnx.export(
                    module,
                    args,
                    str(path),
                    input_names=list(names),
                    output_names=["scores"],
                    dynamic_shapes=tuple({0: batch} for _ in names),
                    dynamo=True,
                )
    except Exception as err:  # an operator ONNX lacks: TorchScript still serves the model
        warnings.warn(f"no ONNX export ({type(err).__name__}: {err}); the model is served through TorchScript")
        path.unlink(missing_ok=True)
        return None
    return path.name


def _user_feature_names(env_cfg: Any) -> list[str]:
    if getattr(env_cfg, "logs", "") == "obd":
        return [f"user_feature_{i}" for i in range(3)]
    return ["age_band", "gender", "region"]


def export_run(
    run: str | Path,
    out_dir: str | Path,
    *,
    exploration: ExplorationConfig | None = None,
    onnx: bool = True,
) -> Path:
    """Export the trained agent of a run directory or checkpoint file into ``out_dir``."""
    from rlrec.train.run import load_run, resolve_checkpoint

    run = Path(run)
    path = resolve_checkpoint(None, run) if run.is_file() else resolve_checkpoint(run, None)
    loaded = load_run(path, num_users=1, device="cpu")
    provenance = {
        "checkpoint": str(path.resolve()),
        "env_step": int(loaded.checkpoint["env_step"]),
        "seed": int(loaded.cfg.seed),
        "agent_config": {k: v for k, v in dict(loaded.cfg.agent).items() if not str(k).startswith("_")},
    }
    return export_agent(
        loaded.agent, loaded.shop.cfg, out_dir, exploration=exploration, onnx=onnx, provenance=provenance
    )


def publish(artifact: str | Path, link: str | Path) -> None:
    """Point the symlink ``link`` at ``artifact`` atomically (a service watching ``link`` swaps to it)."""
    artifact, link = Path(artifact).resolve(), Path(link)
    if link.exists() and not link.is_symlink():
        raise ConfigError(f"{link} exists and is not a symlink: publish to a new path, or remove it first.")
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(artifact, tmp)
    os.replace(tmp, link)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlrec.serve.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, help="a train run's directory (or its checkpoint file)")
    parser.add_argument("--out", required=True, help="the new artifact's directory (one per version)")
    parser.add_argument("--publish", help="then point this symlink at it (the path a service watches)")
    parser.add_argument("--no-onnx", action="store_true", help="TorchScript only")
    defaults = ExplorationConfig(kind="epsilon_greedy")
    parser.add_argument("--kind", default=defaults.kind, choices=["greedy", "epsilon_greedy", "softmax"])
    for f in fields(ExplorationConfig):
        if f.name != "kind":  # the rest of the exploration settings (see ExplorationConfig)
            parser.add_argument(f"--{f.name}", type=type(getattr(defaults, f.name)), default=getattr(defaults, f.name))
    args = parser.parse_args(argv)

    from rlrec.cli import friendly_errors

    with friendly_errors():
        settings = build_config(ExplorationConfig, {f.name: getattr(args, f.name) for f in fields(defaults)}, "")
        out = export_run(args.run_dir, args.out, exploration=settings, onnx=not args.no_onnx)
        manifest = json.loads((out / "manifest.json").read_text())
        print(f"exported {manifest['model_version']} to {out} ({', '.join(manifest['sha256'])})")
        if args.publish:
            publish(out, args.publish)
            print(f"published: {args.publish} -> {out}")


if __name__ == "__main__":
    main()
