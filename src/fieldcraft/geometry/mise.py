"""Multiresolution isosurface extraction (MISE, Mescheder et al. 2019, "Occupancy Networks",
sec. 3.4), here for SDFs and occupancies.

1. Evaluate the field on the vertices of a coarse grid (``base`` cells per axis).
2. Mark *active* cells: cells whose corners straddle the level, and, for signed distances
   (``lipschitz`` set), cells with a corner value ``|f - level| <= lipschitz * diagonal / 2``
   (every point of a cell is within half a diagonal of its nearest corner, so a field with
   ``|grad f| <= lipschitz`` cannot reach the level inside the cell otherwise). Without a
   Lipschitz bound (occupancies) the active set is grown by ``dilate`` cells
   (26-neighbourhood) below the finest level, which catches parts thinner than a coarse cell.
3. Split active cells into 8 children and evaluate the field only at children's corners not
   yet known (one batched call per level, no autograd). With a Lipschitz bound a child is
   kept only if the parent corner it shares is within ``lipschitz`` times the child's diagonal
   of the level (no point of the child is farther from that corner). Repeat until
   ``resolution`` cells per axis.
4. At the finest level, grow the active set along the surface: a cell whose face straddles the
   level pulls in its neighbour across that face, until closed (this repairs what the
   Lipschitz test misses when the field is steeper than assumed).
5. Run marching cubes on the final grid restricted (``mask``) to the active cells, whose corners
   are all exact, so the mesh equals dense marching cubes whenever every cell that dense
   marching cubes meshes is active (guaranteed for fields with ``|grad f| <= lipschitz``).

All bookkeeping is sparse (arrays of active cells); the only dense arrays are the final
``(R + 1)^3`` float32 values and two boolean masks (about 100 MB at R = 256). Field
evaluations are O(surface area / h^2).
"""

from __future__ import annotations

import math

import numpy as np
from jaxtyping import Float, Int

from fieldcraft.errors import FieldcraftError
from fieldcraft.geometry.marching_cubes import FieldFn, evaluate_points, marching_cubes_volume

_CORNERS = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=np.int64)
_NEIGHBOURS = np.array([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)], dtype=np.int64)


def _linear(ijk: np.ndarray, n: int) -> np.ndarray:
    return (ijk[..., 0] * n + ijk[..., 1]) * n + ijk[..., 2]


def active_cells(corner_values: Float[np.ndarray, "n 8"], level: float, diagonal: float,
                 lipschitz: float | None) -> np.ndarray:
    """Which cells (rows of 8 corner values) may contain the level set.

    >>> active_cells(np.array([[1.0] * 8, [1.0] * 7 + [-1.0], [0.1] * 8]), 0.0, 0.2, 1.0).tolist()
    [False, True, True]
    """
    v = corner_values - level
    lo, hi = v.min(1), v.max(1)
    act = (lo <= 0) & (hi >= 0)
    if lipschitz is not None:
        act |= np.minimum(np.abs(lo), np.abs(hi)) <= 0.5 * lipschitz * diagonal
    return act


_FACES = [(axis, side) for axis in range(3) for side in (0, 1)]


def _grow_along_surface(cells: np.ndarray, ensure, flat_v: np.ndarray, n1: int, level: float, resolution: int
                        ) -> tuple[np.ndarray, int]:
    """Close the active set along the surface: while a cell's face straddles the level and the
    cell across that face is not active, evaluate and add that cell (repairs surface parts the
    Lipschitz test missed because the field is steeper than assumed). Returns (cells, evaluations)."""
    n_eval = 0
    active = np.zeros(resolution**3, bool)
    active[_linear(cells, resolution)] = True
    frontier = cells
    for _ in range(4 * resolution):
        if not len(frontier):
            break
        vals = flat_v[_linear(frontier[:, None, :] + _CORNERS[None], n1)] - level  # [n, 8]
        new = []
        for axis, side in _FACES:
            on_face = _CORNERS[:, axis] == side
            fv = vals[:, on_face]
            straddle = (fv.min(1) <= 0) & (fv.max(1) >= 0)
            nb = frontier[straddle].copy()
            nb[:, axis] += 1 if side else -1
            nb = nb[(nb[:, axis] >= 0) & (nb[:, axis] < resolution)]
            new.append(nb)
        nb = np.concatenate(new)
        lin = np.unique(_linear(nb, resolution))
        lin = lin[~active[lin]]
        if not len(lin):
            break
        active[lin] = True
        frontier = np.stack(np.unravel_index(lin, (resolution,) * 3), -1)
        n_eval += ensure(frontier[:, None, :] + _CORNERS[None])
    cells = np.stack(np.unravel_index(np.flatnonzero(active), (resolution,) * 3), -1)
    return cells, n_eval


def extract_mise(fn: FieldFn, resolution: int, level: float = 0.0, bound: float = 1.0, inside: str = "below",
                 base: int = 32, lipschitz: float | None = 1.0, dilate: int = 1, chunk: int = 1_048_576
                 ) -> tuple[Float[np.ndarray, "v 3"], Int[np.ndarray, "f 3"], dict]:
    """MISE mesh of ``fn`` at ``resolution`` cells per axis (``base`` times a power of two).

    ``lipschitz``: bound on ``|grad f|`` for the distance test (None for occupancies: sign
    changes only). Returns ``(vertices, faces, stats)``, ``stats = {"evaluations", "levels",
    "active_cells"}``.
    """
    ratio = resolution // base
    if resolution % base or ratio & (ratio - 1):
        raise FieldcraftError(f"MISE: resolution {resolution} must be base {base} times a power of two")
    n1 = resolution + 1
    values = np.zeros((n1, n1, n1), np.float32)
    known = np.zeros((n1, n1, n1), bool)
    flat_v, flat_k = values.reshape(-1), known.reshape(-1)
    scratch = np.zeros(n1**3, bool)
    h_final = 2.0 * bound / resolution

    def ensure(vertex_ijk: np.ndarray) -> int:
        """Evaluate the field at final-grid vertices not yet known; returns the number evaluated."""
        lin = _linear(vertex_ijk, n1).reshape(-1)
        lin = lin[~flat_k[lin]]
        if len(lin) == 0:
            return 0
        scratch[lin] = True  # dedupe without sorting
        lin = np.flatnonzero(scratch)
        scratch[lin] = False
        ijk = np.stack(np.unravel_index(lin, (n1, n1, n1)), -1)
        flat_v[lin] = evaluate_points(fn, ijk.astype(np.float64) * h_final - bound, chunk)
        flat_k[lin] = True
        return len(lin)

    # level 0: all cells of the base grid
    r, stride = base, ratio
    g = np.arange(base, dtype=np.int64)
    cells = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    n_eval, levels = 0, 1
    while True:
        corners = (cells[:, None, :] + _CORNERS[None]) * stride  # final-grid vertex indices
        n_eval += ensure(corners)
        diag = math.sqrt(3.0) * 2.0 * bound / r
        corner_values = flat_v[_linear(corners, n1)]
        act = active_cells(corner_values, level, diag, lipschitz)
        cells = cells[act]
        if r == resolution:
            cells, grown = _grow_along_surface(cells, ensure, flat_v, n1, level, resolution)
            n_eval += grown
            break
        if dilate and lipschitz is None and len(cells):
            grown = (cells[:, None, :] + (_NEIGHBOURS * dilate)[None]).reshape(-1, 3)
            grown = grown[((grown >= 0) & (grown < r)).all(1)]
            cells = np.stack(np.unravel_index(np.unique(_linear(grown, r)), (r, r, r)), -1)
            cells = (cells[:, None, :] * 2 + _CORNERS[None]).reshape(-1, 3)
        elif lipschitz is not None:
            # Child at offset o shares the parent's corner o; every point of the child is within one
            # child diagonal of it, so the child is skipped when that corner is farther from the level.
            near = np.abs(corner_values[act] - level) <= lipschitz * 0.5 * diag
            cells = (cells[:, None, :] * 2 + _CORNERS[None])[near]
        else:
            cells = (cells[:, None, :] * 2 + _CORNERS[None]).reshape(-1, 3)
        r, stride = 2 * r, stride // 2
        levels += 1
    mask = np.zeros((n1, n1, n1), bool)
    if len(cells):
        # skimage's mask flags a cell by its upper corner: mask[i, j, k] selects cell (i-1, j-1, k-1)
        mask.reshape(-1)[_linear(cells + 1, n1)] = True
    if not len(cells):
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64), {"evaluations": n_eval, "levels": levels, "active_cells": 0}
    lo = cells.min(0)
    hi = cells.max(0) + 2
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    verts, faces = marching_cubes_volume(values[sl], level, resolution, bound, inside, mask=mask[sl],
                                         origin=tuple(int(a) for a in lo))
    return verts, faces, {"evaluations": int(n_eval), "levels": levels, "active_cells": len(cells)}
