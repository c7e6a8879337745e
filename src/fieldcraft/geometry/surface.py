"""The surface of a fitted shape field as a mesh: which level set, which side is solid, and
extraction by MISE or dense marching cubes.

A shape field is any ``fn(points [n, 3]) -> values [n]`` over the normalised cube
``[-1, 1]^3`` (numpy in, numpy out). Fields fitted with the ``regression`` or ``eikonal``
loss are signed distances (solid where ``f < 0``); ``occupancy`` fields are logits (solid
where ``f > 0``, probability 1/2 at ``f = 0``). Numpy only (no PyTorch).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from jaxtyping import Float, Int

from fieldcraft.errors import FieldcraftError, check

SHAPE_LOSSES = ("regression", "eikonal", "occupancy")


def level_and_side(loss: str) -> tuple[float, str, float | None]:
    """Iso-level, which side is solid, and the Lipschitz bound MISE may assume, per loss.

    SDFs use 0.5, half the true bound of a distance field: it halves the refined band, and
    MISE's growth along the surface at the finest level restores any cell the optimistic test
    missed (the MISE-vs-dense Chamfer distance is measured in bench/shapes.py).

    >>> level_and_side("regression"), level_and_side("occupancy")
    ((0.0, 'below', 0.5), (0.0, 'above', None))
    """
    check(loss in SHAPE_LOSSES, f"unknown shape loss {loss!r} (use {'|'.join(SHAPE_LOSSES)})")
    if loss == "occupancy":
        return 0.0, "above", None  # logits: 0 = probability 1/2, solid where positive
    return 0.0, "below", 0.5


def mise_base(resolution: int, base: int = 32) -> int:
    """The largest ``base / 2^j`` with ``resolution = base / 2^j * 2^k`` (MISE's coarse grid).

    >>> mise_base(256), mise_base(16), mise_base(64, base=128)
    (32, 16, 64)
    """
    while resolution % base or (resolution // base) & (resolution // base - 1):
        base //= 2
        check(base >= 2, f"MISE needs a resolution with a power-of-two factor, got {resolution}")
    return base


def extract_surface(fn: Callable[[np.ndarray], np.ndarray], loss: str, resolution: int, mise: bool = True,
                    base: int = 32) -> tuple[Float[np.ndarray, "v 3"], Int[np.ndarray, "f 3"], dict]:
    """Mesh of the level set of ``fn`` (normalised points ``[n, 3]`` -> values ``[n]``) for a
    field fitted with ``loss``, by MISE or dense marching cubes at ``resolution`` cells per
    axis, cleaned (welded, no degenerate faces), in normalised coordinates. ``stats``:
    ``evaluations``, ``seconds``, ``method`` (``mise`` | ``dense``), and MISE's own.

    >>> sphere = lambda p: np.linalg.norm(p, axis=-1) - 0.5
    >>> v, f, stats = extract_surface(sphere, "regression", 32)
    >>> bool(np.allclose(np.linalg.norm(v, axis=-1), 0.5, atol=0.01)), stats["method"]
    (True, 'mise')
    """
    from fieldcraft.geometry.marching_cubes import clean_mesh, extract_dense
    from fieldcraft.geometry.mise import extract_mise

    level, side, lip = level_and_side(loss)
    t0 = time.perf_counter()
    if mise:
        v, f, stats = extract_mise(fn, resolution, level, 1.0, side, base=mise_base(resolution, base), lipschitz=lip)
    else:
        v, f = extract_dense(fn, resolution, level, 1.0, side)
        stats = {"evaluations": (resolution + 1) ** 3}
    v, f = clean_mesh(v, f)
    stats["seconds"] = time.perf_counter() - t0
    stats["method"] = "mise" if mise else "dense"
    if len(f) == 0:
        raise FieldcraftError("the fitted field has no surface inside [-1, 1]^3 (nothing to export)")
    return v, f, stats
