"""Surfaces of fitted shape fields as meshes: level sets, MISE or dense marching cubes, export.

Torch-free: :func:`export_shape_mesh` evaluates the checkpoint's field with
:mod:`fieldcraft.kernels.field` when it covers the field (the hash-grid and SIREN presets of
:mod:`fieldcraft.tasks.sdf` are covered), which keeps ``fieldcraft export mesh`` from spending
its first 1.4 s importing PyTorch; other fields are built as PyTorch modules.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fieldcraft.errors import FieldcraftError, check

TASK_NAME = "sdf"


def level_and_side(loss: str) -> tuple[float, str, float | None]:
    """Iso-level, which side is solid, and the Lipschitz bound MISE may assume, per loss.

    SDFs use 0.5, half the true bound of a distance field: it halves the refined band, and
    MISE's growth along the surface at the finest level restores any cell the optimistic test
    missed (the MISE-vs-dense Chamfer distance is measured in bench/shapes.py)."""
    if loss == "occupancy":
        return 0.0, "above", None  # logits: 0 = probability 1/2, solid where positive
    return 0.0, "below", 0.5


def extract_surface(fn: Callable[[np.ndarray], np.ndarray], loss: str, resolution: int, mise: bool = True,
                    base: int = 32) -> tuple[np.ndarray, np.ndarray, dict]:
    """Mesh of the level set of ``fn`` (normalised points ``[n, 3]`` -> values ``[n]``) for a
    field fitted with ``loss``, by MISE or dense marching cubes, cleaned (welded, no degenerate
    faces), with extraction seconds in the stats."""
    from fieldcraft.geometry.marching_cubes import clean_mesh, extract_dense
    from fieldcraft.geometry.mise import extract_mise

    level, side, lip = level_and_side(loss)
    t0 = time.perf_counter()
    if mise:
        while resolution % base or (resolution // base) & (resolution // base - 1):
            base //= 2
            check(base >= 2, f"MISE needs a resolution with a power-of-two factor, got {resolution}")
        v, f, stats = extract_mise(fn, resolution, level, 1.0, side, base=base, lipschitz=lip)
    else:
        v, f = extract_dense(fn, resolution, level, 1.0, side)
        stats = {"evaluations": (resolution + 1) ** 3}
    v, f = clean_mesh(v, f)
    stats["seconds"] = time.perf_counter() - t0
    stats["method"] = "mise" if mise else "dense"
    if len(f) == 0:
        raise FieldcraftError("the fitted field has no surface inside [-1, 1]^3 (nothing to export)")
    return v, f, stats


def shape_function(directory) -> tuple[Callable[[np.ndarray], np.ndarray], str, object, str]:
    """``(fn, loss, normalisation, backend)`` of a shape checkpoint: ``fn`` maps normalised
    points ``[n, 3]`` to values ``[n]``; ``backend`` is ``"numpy"`` or ``"torch"``."""
    from fieldcraft.geometry.mesh import Normalisation
    from fieldcraft.io.checkpoint import load_checkpoint_arrays
    from fieldcraft.kernels.field import numpy_field

    try:
        arrays, meta = load_checkpoint_arrays(Path(directory), "field")
    except FieldcraftError:
        arrays, meta = None, None  # e.g. bfloat16 weights: the PyTorch path reads (or reports) it
    if meta is not None:
        if meta.get("task") != TASK_NAME:
            raise FieldcraftError(f"{directory}: not a shape checkpoint (task {meta.get('task')!r}, expected {TASK_NAME!r})")
        config = meta.get("config") or {}
        field = numpy_field(config.get("field") or {}, arrays)
        if field is not None and config.get("loss") in ("regression", "eikonal", "occupancy") and "normalisation" in meta:
            return (lambda p: field(p).reshape(-1)), config["loss"], Normalisation.from_dict(meta["normalisation"]), "numpy"
    from fieldcraft.runtime import set_threads
    from fieldcraft.tasks.sdf import field_function, load_shape_field

    set_threads()
    module, task_config, norm, _ = load_shape_field(directory)
    return field_function(module), task_config.loss, norm, "torch"


def export_shape_mesh(directory, out_file, resolution: int = 256, mise: bool = True) -> dict:
    """Write the checkpoint's surface as PLY/OBJ with vertex normals, in input coordinates."""
    from fieldcraft.geometry.marching_cubes import vertex_normals
    from fieldcraft.geometry.mesh import save_mesh

    fn, loss, norm, backend = shape_function(directory)
    v, f, stats = extract_surface(fn, loss, resolution, mise)
    v_in = norm.inverse(v)
    save_mesh(out_file, v_in, f, vertex_normals(v_in, f))
    return {**stats, "vertices": len(v), "faces": len(f), "resolution": resolution, "backend": backend}
