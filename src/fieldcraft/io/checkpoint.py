"""Checkpoints: one safetensors file, no pickle anywhere.

A checkpoint is ``<dir>/checkpoint.safetensors``: tensors (model weights under ``field.`` or
``model.``, optimiser state under ``optim.``, random-generator states under ``rng.``, task state
under ``extra.``) plus a JSON header stored in the safetensors metadata under the key
``"fieldcraft"``: the checkpoint ``format`` version (:data:`FORMAT_VERSION`), the library version,
task, configs, step, fitting seconds, budget and task metadata. The header is strict JSON (no
NaN or infinity). The checkpoint file alone is the checkpoint: a copy of its header is written
beside it as ``config.json`` for people to read, and nothing reads it back.

Writes go to a temporary file in the same directory, are flushed to disk, then renamed over
the old file, so a crash or a kill at any moment leaves the previous checkpoint or the new one,
never a half-written file. Loading checks the format version: a checkpoint written by a newer
format is refused with one line; format 1 (no ``format`` key) reads as is.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import safe_open

import fieldcraft
from fieldcraft.errors import FieldcraftError

if TYPE_CHECKING:  # torch is imported where it is used: reading a checkpoint's JSON or arrays does not need it
    import numpy as np
    import torch
    from torch import Tensor

CHECKPOINT_NAME = "checkpoint.safetensors"
_UMASK = os.umask(0)
os.umask(_UMASK)
META_KEY = "fieldcraft"
FORMAT_VERSION = 2


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it, then rename it
    over ``path``; on any failure the temporary file is removed and ``path`` is untouched. An
    ``OSError`` (disk full, no permission) is raised again with ``path`` as its file name (the
    command line prints ``<path>: <reason>``); a directory in the way is a
    :class:`~fieldcraft.errors.FieldcraftError`."""
    path = Path(path)
    try:
        _atomic_write(path, write)
    except OSError as exc:
        kept = "; the previous file is unchanged" if path.is_file() else ""
        raise OSError(exc.errno, f"{exc.strerror or exc}{kept}", str(path)) from None


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    if path.is_dir():
        raise FieldcraftError(f"{path}: is a directory, cannot write a file in its place")
    blocker = next((p for p in path.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise FieldcraftError(f"{path}: cannot write ({blocker} is not a directory)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def save_checkpoint(directory: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Atomically write ``tensors`` and JSON ``meta`` to ``directory/checkpoint.safetensors``."""
    from safetensors.torch import save_file

    from fieldcraft.io.records import dumps

    directory = Path(directory)
    meta = {"format": FORMAT_VERSION, "fieldcraft_version": fieldcraft.__version__, **meta}
    header = dumps(meta, indent=None)
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    path = directory / CHECKPOINT_NAME
    atomic_write(path, lambda tmp: save_file(cpu, tmp, metadata={META_KEY: header}))
    atomic_write_bytes(directory / "config.json", (dumps(meta) + "\n").encode())
    return path


def load_checkpoint(directory: Path, device: str | torch.device = "cpu") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(tensors, meta)``."""
    return _read(directory, "pt", str(device), None)


def load_checkpoint_arrays(directory: Path, prefix: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(arrays, meta)`` like :func:`load_checkpoint`, as numpy arrays and only the tensors
    under ``prefix.`` (e.g. ``field``), without importing torch. Raises
    :class:`~fieldcraft.errors.FieldcraftError` for a missing or unreadable checkpoint, and
    for tensors numpy cannot hold (bfloat16)."""
    return _read(directory, "numpy", "cpu", prefix + ".")


def read_headed_safetensors(path: Path, key: str, kind: str, framework: str = "numpy", device: str = "cpu",
                            prefix: str | None = None) -> tuple[dict, dict[str, Any]]:
    """``(tensors, header)`` of a safetensors file whose string metadata ``key`` holds a JSON object
    (checkpoints, octree files). Only tensors whose names start with ``prefix`` when given. A
    missing, corrupt or header-less file raises :class:`~fieldcraft.errors.FieldcraftError` naming
    ``path`` and ``kind`` (e.g. ``"checkpoint"``); the caller checks the header's version."""
    try:
        kwargs = {"device": device} if framework == "pt" else {}
        with safe_open(str(path), framework=framework, **kwargs) as f:
            text = (f.metadata() or {}).get(key)
            tensors = {k: f.get_tensor(k) for k in f.keys() if prefix is None or k.startswith(prefix)}
    except Exception as exc:  # noqa: BLE001 (safetensors raises several types for corrupt files)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FieldcraftError(f"{path}: unreadable {kind} ({first})") from None
    if text is None:
        raise FieldcraftError(f"{path}: not a fieldcraft {kind} (no '{key}' metadata)")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FieldcraftError(f"{path}: malformed {kind} metadata ({exc.msg})") from None
    if not isinstance(meta, dict):
        raise FieldcraftError(f"{path}: malformed {kind} metadata (not a JSON object)")
    return tensors, meta


def _read(directory: Path, framework: str, device: str, prefix: str | None) -> tuple[dict, dict[str, Any]]:
    directory = Path(directory)
    path = directory / CHECKPOINT_NAME if directory.is_dir() else directory
    if not path.exists():
        raise FieldcraftError(f"{path}: no checkpoint here (expected {CHECKPOINT_NAME} written by 'fieldcraft fit')")
    tensors, meta = read_headed_safetensors(path, META_KEY, "checkpoint", framework, device, prefix)
    version = meta.get("format", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise FieldcraftError(f"{path}: checkpoint format {version!r} is newer than this fieldcraft "
                              f"{fieldcraft.__version__} reads (up to {FORMAT_VERSION}); upgrade fieldcraft")
    return tensors, meta


def module_tensors(module: torch.nn.Module, prefix: str) -> dict[str, Tensor]:
    """The module's state dict with keys prefixed by ``prefix.``."""
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def load_module_tensors(module: torch.nn.Module, tensors: dict[str, Tensor], prefix: str) -> None:
    state = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    module.load_state_dict(state)


def build_loaded(build: Callable[[], torch.nn.Module], tensors: dict[str, Tensor], prefix: str) -> torch.nn.Module:
    """``build()`` with its parameters and buffers taken from ``tensors`` (keys ``prefix.<name>``),
    without first initialising them: the module is built on the ``meta`` device and the loaded
    tensors are assigned. Falls back to an ordinary build + load when the module keeps a tensor
    the checkpoint does not hold."""
    import torch

    state = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    with torch.device("meta"):
        module = build()
    if set(module.state_dict()) == set(state):
        module.load_state_dict(state, assign=True)
        if not any(t.is_meta for t in (*module.parameters(), *module.buffers())):
            return module
    module = build()
    module.load_state_dict(state)
    return module


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str = "optim") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimiser's state dict into tensors (for safetensors) and JSON (param groups,
    non-tensor state)."""
    from torch import Tensor

    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"{prefix}.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any],
                           prefix: str = "optim") -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if not key.startswith(prefix + "."):
            continue
        idx, name = key[len(prefix) + 1:].split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
