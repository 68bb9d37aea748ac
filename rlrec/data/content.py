"""A real catalog's content vectors: ``env.content_path`` (``.npy`` or ``.safetensors``).

Content vectors are what an image or text encoder (CLIP, a sentence-transformer...) computed
offline for each item: one row of floats per item, in item-id order. The env config names the
file, the expected shape (``[n_items, content_dim]``) and optionally its sha256. A file that is
missing, unreadable, of another shape, holding NaN or infinite values, or whose checksum
differs fails with one :class:`ContentFileError` naming the problem and the fix, before a
run writes anything.

Writing one::

    import numpy as np
    np.save("content.npy", embeddings.astype(np.float32))            # [n_items, d]
    # or: safetensors.torch.save_file({"content": tensor}, "content.safetensors")
    # python train.py env.content_path=content.npy env.content_dim=<d> [env.content_sha256=<sha256sum>]
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from rlrec.config import ConfigError

SAFETENSORS_KEY = "content"
"""The tensor a safetensors file is read from (or its only tensor, whatever its name)."""


class ContentFileError(ConfigError):
    """A content file is missing, unreadable, of the wrong shape, not finite, or fails its checksum."""


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, as ``sha256sum`` prints it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_content(path: str | Path, n_items: int, content_dim: int, sha256: str | None = None) -> torch.Tensor:
    """[n_items, content_dim] float32 content vectors read from ``path`` (CPU), checked."""
    path = Path(path).expanduser()
    fix_path = "set env.content_path to an existing .npy or .safetensors file"
    if not path.is_file():
        raise ContentFileError(f"env.content_path = {str(path)!r} does not exist: {fix_path}.")
    if path.suffix not in (".npy", ".safetensors"):
        raise ContentFileError(
            f"env.content_path = {str(path)!r} is neither .npy nor .safetensors: save the [n_items, "
            f"content_dim] array with numpy.save or safetensors.torch.save_file."
        )
    if sha256 is not None:
        found = file_sha256(path)
        if found != sha256.lower():
            raise ContentFileError(
                f"env.content_path = {str(path)!r} has sha256 {found}, not env.content_sha256 = {sha256}: "
                "the file changed since the checksum was taken. Point to the right file, or set "
                "env.content_sha256 to the new checksum if the change is intended."
            )
    content = _read_npy(path) if path.suffix == ".npy" else _read_safetensors(path)
    if tuple(content.shape) != (n_items, content_dim):
        raise ContentFileError(
            f"env.content_path = {str(path)!r} holds an array of shape {list(content.shape)}, but the shop "
            f"expects [n_items, content_dim] = [{n_items}, {content_dim}]: one row per item, in item-id "
            "order. Set env.content_dim (and env.n_items) to match the file, or write the file again."
        )
    finite = torch.isfinite(content)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        count = int((~finite).sum())
        raise ContentFileError(
            f"env.content_path = {str(path)!r} holds {count} NaN or infinite value(s), the first at item "
            f"{bad[0]}, column {bad[1]}: fill or drop them before training (e.g. zeros for a missing image)."
        )
    return content.float()


def _read_npy(path: Path) -> torch.Tensor:
    import numpy as np

    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ContentFileError(
            f"env.content_path = {str(path)!r} is not a readable .npy array ({err}): save it with numpy.save."
        ) from err
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiub":
        raise ContentFileError(f"env.content_path = {str(path)!r} does not hold a numeric array.")
    return torch.from_numpy(np.ascontiguousarray(array))


def _read_safetensors(path: Path) -> torch.Tensor:
    try:
        from safetensors.torch import load_file
    except ImportError as err:
        raise ContentFileError(
            f"env.content_path = {str(path)!r} is a safetensors file, but the safetensors package is not "
            "installed: pip install safetensors (or save the array as .npy)."
        ) from err
    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for a damaged header
        raise ContentFileError(f"env.content_path = {str(path)!r} is not a readable safetensors file ({err}).") from err
    if SAFETENSORS_KEY in tensors:
        return tensors[SAFETENSORS_KEY]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise ContentFileError(
        f"env.content_path = {str(path)!r} holds tensors {sorted(tensors)}; name the content vectors "
        f"{SAFETENSORS_KEY!r} (or keep only them in the file)."
    )
