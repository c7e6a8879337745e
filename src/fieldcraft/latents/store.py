"""``latents.safetensors``: latent vectors of a dataset, with its labels when it has them.

Tensors: ``latents`` float32 ``[N, latent]`` and, when the source had labels, ``labels`` int64
``[N]``. Metadata (safetensors string metadata, key ``fieldcraft``): JSON with ``source``,
``names`` (the dataset's image names, in order) and whatever the writer adds (the functa run).
A directory argument means the file of that name inside it (the output of ``encode functa``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fieldcraft.errors import FieldcraftError

LATENTS_NAME = "latents.safetensors"


def latents_path(path: str | Path) -> Path:
    path = Path(path)
    return path / LATENTS_NAME if path.is_dir() else path


def write_latents(path: str | Path, latents: np.ndarray, labels: np.ndarray | None = None,
                  meta: dict[str, Any] | None = None) -> Path:
    """Write ``latents`` ``[N, D]`` (and ``labels`` ``[N]``) atomically to ``path`` (a file or a directory)."""
    from safetensors.numpy import save_file

    from fieldcraft.io.checkpoint import atomic_write
    from fieldcraft.io.records import dumps

    path = latents_path(path) if Path(path).is_dir() else Path(path)
    tensors = {"latents": np.ascontiguousarray(latents, np.float32)}
    if labels is not None:
        tensors["labels"] = np.ascontiguousarray(labels, np.int64)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"fieldcraft": dumps(meta or {}, indent=None)}))
    return path


def read_latents(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """``(latents [N, D] float32, labels [N] int64 or None, meta)`` from a file or an ``encode functa`` directory."""
    from safetensors import safe_open

    file = latents_path(path)
    if not file.exists():
        raise FieldcraftError(f"{file}: no latents here (expected {LATENTS_NAME} written by 'fieldcraft encode functa')")
    try:
        with safe_open(str(file), framework="numpy") as f:
            keys = set(f.keys())
            if "latents" not in keys:
                raise FieldcraftError(f"{file}: holds no 'latents' tensor")
            latents = f.get_tensor("latents")
            labels = f.get_tensor("labels") if "labels" in keys else None
            meta = json.loads((f.metadata() or {}).get("fieldcraft", "{}"))
    except FieldcraftError:
        raise
    except Exception as exc:
        raise FieldcraftError(f"{file}: unreadable latents file ({exc})") from None
    if latents.ndim != 2 or (labels is not None and labels.shape != (latents.shape[0],)):
        raise FieldcraftError(f"{file}: latents must be [N, D] with labels [N], got {list(latents.shape)} "
                              f"and {None if labels is None else list(labels.shape)}")
    return latents.astype(np.float32), (None if labels is None else labels.astype(np.int64)), meta
