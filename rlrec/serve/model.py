"""The model a service runs: an exported artifact loaded for scoring, and the holder that swaps it live.

:func:`load_model` reads an artifact written by :mod:`rlrec.serve.export` with nothing but
torch (or ONNX Runtime) and the manifest: it checks the format and every file's sha256,
loads the scorer, and runs it once on a valid batch before anyone is served by it.

:class:`ModelHolder` keeps the current :class:`ServedModel`. A request takes the current
model once, at its start, and uses that object to the end (scores, exploration, the version
it logs), so swapping in a new model never disturbs a request in flight: the swap is one
reference assignment, made after the new model has loaded and passed its checks.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlrec.config import ConfigError, ExplorationConfig
from rlrec.serve.export import FORMAT

INTERFACE = ("n_items", "history_len", "horizon", "user_features", "observe_satisfaction", "satisfaction_levels")
"""Manifest fields that make up the request format; a hot swap must keep them (and the catalog)."""


class ModelError(ConfigError):
    """An artifact is missing, damaged, of another format, or does not fit the one being served."""


@dataclass
class ServedModel:
    """A loaded artifact: ``scores(inputs) -> [B, N]`` plus its manifest and serving settings."""

    path: Path  # the artifact's own directory (symlinks resolved)
    manifest: dict[str, Any]
    exploration: ExplorationConfig  # resolved: the manifest's, or the service's override
    backend: str
    scorer: Any = field(repr=False)  # a TorchScript module or an ONNX Runtime session

    @property
    def version(self) -> str:
        return self.manifest["model_version"]

    @property
    def n_items(self) -> int:
        return int(self.manifest["n_items"])

    @property
    def inputs(self) -> list[str]:
        return list(self.manifest["inputs"])

    @torch.no_grad()
    def scores(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, N] scores of every item for a batch of observations (int64 tensors named as ``inputs``)."""
        if self.backend == "onnx":  # the ONNX graph keeps only the inputs it reads
            feed = {i.name: inputs[i.name].numpy() for i in self.scorer.get_inputs()}
            return torch.from_numpy(self.scorer.run(None, feed)[0])
        return self.scorer(*(inputs[name] for name in self.inputs))

    def example_inputs(self, batch: int) -> dict[str, torch.Tensor]:
        """A valid batch (a fresh session of the first user of every feature): the warm-up input."""
        m = self.manifest
        h = int(m["history_len"])
        return {
            "user_features": torch.zeros(batch, len(m["user_features"]["sizes"]), dtype=torch.long),
            "history_items": torch.full((batch, h), self.n_items, dtype=torch.long),
            "history_codes": torch.zeros(batch, h, dtype=torch.long),
            "step": torch.zeros(batch, dtype=torch.long),
            "satisfaction": torch.zeros(batch, dtype=torch.long),
        }


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the artifact at ``path``, with a clear error if there is none."""
    file = Path(path) / "manifest.json"
    try:
        manifest = json.loads(file.read_text())
    except FileNotFoundError:
        raise ModelError(
            f"{file} not found: model= must be a directory written by python -m rlrec.serve.export "
            "(or serve a train run with run_dir=)."
        ) from None
    except (OSError, ValueError) as err:
        raise ModelError(f"{file} cannot be read ({err}); export the model again.") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ModelError(f"{file} is not a {FORMAT} manifest (format {found!r}); export the model again.")
    return manifest


def load_model(
    path: str | Path, backend: str = "torchscript", exploration: ExplorationConfig | None = None
) -> ServedModel:
    """Load, verify and warm up the artifact at ``path`` (a directory, or a symlink to one).

    ``exploration``: the service's setting; ``kind="manifest"`` (or None) serves the model
    with the exploration it was exported with.
    """
    path = Path(path).resolve()
    manifest = read_manifest(path)
    for name, digest in manifest["sha256"].items():
        try:
            actual = hashlib.sha256((path / name).read_bytes()).hexdigest()
        except OSError as err:
            raise ModelError(f"{path / name} cannot be read ({err}); export the model again.") from err
        if actual != digest:
            raise ModelError(f"{path / name} does not match its sha256 in the manifest: the copy is damaged.")
    settings = (exploration or ExplorationConfig()).resolved(manifest["exploration"])
    if settings.kind == "manifest":
        raise ModelError(f"{path}/manifest.json names no exploration; export the model again.")
    if backend == "auto":
        backend = "onnx" if manifest["files"].get("onnx") and importlib.util.find_spec("onnxruntime") else "torchscript"
    if backend == "onnx":
        scorer = _onnx_session(path, manifest)
    else:
        scorer = torch.jit.load(str(path / manifest["files"]["torchscript"]), map_location="cpu").eval()
    model = ServedModel(path, manifest, settings, backend, scorer)
    try:
        scores = model.scores(model.example_inputs(2))
    except Exception as err:  # a model that cannot score is never swapped in
        raise ModelError(f"the model at {path} fails on a valid input ({type(err).__name__}: {err}).") from err
    if tuple(scores.shape) != (2, model.n_items) or not bool(torch.isfinite(scores).all()):
        raise ModelError(f"the model at {path} returns scores of shape {tuple(scores.shape)} or non-finite ones.")
    return model


def _onnx_session(path: Path, manifest: dict[str, Any]) -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ModelError(
            "backend=onnx needs ONNX Runtime: pip install onnxruntime (or serve with backend=torchscript)."
        ) from None
    if not manifest["files"].get("onnx"):
        raise ModelError(f"{path} has no ONNX export (its exporter failed); serve it with backend=torchscript.")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(torch.get_num_threads(), 1)
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(
        str(path / manifest["files"]["onnx"]), options, providers=["CPUExecutionProvider"]
    )


def check_compatible(current: ServedModel, new: ServedModel) -> None:
    """Refuse a swap that would change the request format or the catalog (clients and logs rely on both)."""
    changed = [key for key in INTERFACE if current.manifest[key] != new.manifest[key]]
    if current.manifest["sha256"]["catalog.json"] != new.manifest["sha256"]["catalog.json"]:
        changed.append("catalog")
    if changed:
        raise ModelError(
            f"model {new.version} at {new.path} does not fit the service of {current.version}: its "
            f"{', '.join(changed)} differ. A new catalog or request format needs a new service and store."
        )


class ModelHolder:
    """The current model, swapped live by :meth:`reload` (from the watched path, or another one)."""

    def __init__(self, path: str | Path, backend: str, exploration: ExplorationConfig) -> None:
        self.watched, self.backend, self.exploration = Path(path), backend, exploration
        self.current = load_model(path, backend, exploration)
        self._lock = threading.Lock()  # one reload at a time

    def pending_version(self) -> str | None:
        """The version at the watched path if it differs from the one served (a cheap manifest read)."""
        try:
            version = read_manifest(self.watched)["model_version"]
        except ModelError:
            return None  # mid-publish or removed: keep serving, look again later
        return None if version == self.current.version else version

    def reload(
        self, path: str | Path | None = None, before_swap: Callable[[ServedModel], None] | None = None
    ) -> tuple[str, str]:
        """Load the artifact at ``path`` (default: the watched one) and swap it in; (old, new) versions.

        ``before_swap(new)`` runs once the new model has passed its checks (the service records
        it in the store there). Raises :class:`ModelError` (the current model keeps serving) if
        it cannot be loaded or does not fit. A ``path`` given becomes the watched path.
        """
        with self._lock:
            old = self.current
            new = load_model(path or self.watched, self.backend, self.exploration)
            check_compatible(old, new)
            if before_swap is not None:
                before_swap(new)
            if path is not None:
                self.watched = Path(path)
            self.current = new  # the swap: requests in flight keep their reference to `old`
            return old.version, new.version
