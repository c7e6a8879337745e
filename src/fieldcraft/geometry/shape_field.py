"""A fitted shape field read back from its checkpoint, as a function of normalised points, and
its surface exported as a mesh in the input's coordinates.

A shape checkpoint (task ``"sdf"``, written by ``fit sdf`` and ``fit occupancy``) holds the
field's weights under ``field.``, the run config (``config.field``: the
:class:`~fieldcraft.fields.FieldConfig`, ``config.loss``) and the ``normalisation`` that maps
input coordinates into ``[-1, 1]^3`` (:class:`~fieldcraft.geometry.mesh.Normalisation`).

Backends of :func:`shape_function`:

- ``numpy``: the numpy/numba twin of the field (:mod:`fieldcraft.kernels.field`), used on the
  CPU whenever it covers the field (the hash-grid and SIREN shape presets are covered). It
  keeps ``fieldcraft export mesh`` from importing PyTorch (about 1.4 s of start-up).
- ``torch``: the :class:`~fieldcraft.fields.Field` module on a torch device, for fields the
  twin does not cover or when a device other than the CPU is asked for. Points go to the
  device in chunks, values come back to the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fieldcraft.errors import FieldcraftError, check, reading
from fieldcraft.geometry.mesh import Normalisation
from fieldcraft.geometry.surface import SHAPE_LOSSES, extract_surface

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

SHAPE_TASK = "sdf"  # the checkpoint task of 'fit sdf' and 'fit occupancy'

ShapeFn = Callable[[np.ndarray], np.ndarray]


def field_function(field: nn.Module, chunk: int = 262_144, latent: Tensor | None = None) -> ShapeFn:
    """``field`` (a module ``[n, 3] -> [n, 1]``, or ``(x, z) -> [n, 1]`` with a ``latent`` code
    ``[1, D]``) as a numpy function of normalised points ``[n, 3] -> float32 [n]``: chunked,
    without autograd, evaluated on the field's device, values copied to the CPU."""
    import torch

    device = next(field.parameters()).device
    z = None if latent is None else latent.detach().to(device).reshape(1, -1)

    def fn(points: np.ndarray) -> np.ndarray:
        out = np.empty(len(points), np.float32)
        with torch.no_grad():
            for s in range(0, len(points), chunk):
                x = torch.from_numpy(np.ascontiguousarray(points[s:s + chunk], dtype=np.float32)).to(device)
                y = field(x) if z is None else field(x, z.expand(len(x), -1))
                out[s:s + chunk] = y.reshape(-1).float().cpu().numpy()
        return out

    return fn


def _check_meta(directory: Path, meta: dict[str, Any]) -> None:
    if meta.get("task") != SHAPE_TASK:
        raise FieldcraftError(f"{directory}: not a shape checkpoint (task {meta.get('task')!r}, expected {SHAPE_TASK!r})")
    config = meta.get("config") or {}
    check(isinstance(config, dict) and config.get("loss") in SHAPE_LOSSES and "normalisation" in meta,
          f"{directory}: the shape checkpoint has no loss or normalisation")


def load_shape_module(directory: str | Path, device: str | torch.device | None = None
                      ) -> tuple[nn.Module, str, Normalisation, dict[str, Any]]:
    """``(field, loss, normalisation, meta)`` of a shape checkpoint, the field built as a
    PyTorch module on ``device`` (default: :func:`fieldcraft.runtime.default_device`), in eval mode."""
    from fieldcraft.config import Config
    from fieldcraft.fields import FieldConfig
    from fieldcraft.io.checkpoint import build_loaded, load_checkpoint
    from fieldcraft.runtime import default_device

    directory = Path(directory)
    device = device or default_device()
    tensors, meta = load_checkpoint(directory, device=device)
    with reading(directory, "checkpoint"):
        _check_meta(directory, meta)
        config = Config.from_dict(meta["config"]["field"])
        check(isinstance(config, FieldConfig), f"{directory}: the checkpoint's field config is not a Field")
        field = build_loaded(config.build, tensors, "field").to(device)
        norm = Normalisation.from_dict(meta["normalisation"])
    field.eval()
    return field, meta["config"]["loss"], norm, meta


def shape_function(directory: str | Path, device: str | None = None) -> tuple[ShapeFn, str, Normalisation, str]:
    """``(fn, loss, normalisation, backend)`` of a shape checkpoint: ``fn`` maps normalised
    points ``[n, 3]`` to values ``[n]``; ``backend`` is ``"numpy"`` or ``"torch"`` (module
    docstring). ``device``: None or ``"cpu"`` take the numpy twin when it covers the field
    (else PyTorch on the default device, or the CPU); any other device runs PyTorch there."""
    from fieldcraft.io.checkpoint import load_checkpoint_arrays
    from fieldcraft.kernels.field import numpy_field

    directory = Path(directory)
    if device in (None, "cpu"):
        try:
            arrays, meta = load_checkpoint_arrays(directory, "field")
        except FieldcraftError:
            arrays, meta = None, None  # e.g. bfloat16 weights: the PyTorch path reads (or reports) it
        if meta is not None:
            with reading(directory, "checkpoint"):
                _check_meta(directory, meta)
                field = numpy_field(meta["config"].get("field") or {}, arrays)
                norm = Normalisation.from_dict(meta["normalisation"])
            if field is not None:
                return (lambda p: field(p).reshape(-1)), meta["config"]["loss"], norm, "numpy"
    from fieldcraft.runtime import set_threads

    set_threads()
    module, loss, norm, _ = load_shape_module(directory, device)
    return field_function(module), loss, norm, "torch"


def export_shape_mesh(directory: str | Path, out_file: str | Path, resolution: int = 256, mise: bool = True,
                      device: str | None = None) -> dict[str, Any]:
    """Write the checkpoint's surface to ``out_file`` (PLY or OBJ, by suffix) with vertex normals,
    in input coordinates. Returns the extraction stats (:func:`~fieldcraft.geometry.surface.extract_surface`)
    with ``vertices``, ``faces``, ``resolution`` and ``backend``."""
    from fieldcraft.geometry.marching_cubes import vertex_normals
    from fieldcraft.geometry.mesh import save_mesh

    fn, loss, norm, backend = shape_function(directory, device)
    v, f, stats = extract_surface(fn, loss, resolution, mise)
    v_in = norm.inverse(v)
    save_mesh(out_file, v_in, f, vertex_normals(v_in, f))
    return {**stats, "vertices": len(v), "faces": len(f), "resolution": resolution, "backend": backend}
