"""Fast CPU kernel (numba) for the gradient of a 3-D grid encoding with respect to its points.

The kernels of :mod:`fieldcraft.kernels.grid` differentiate with respect to the table only. Camera
refinement (:mod:`fieldcraft.render.pose_refinement`) also needs the gradient with respect to the
points (they move with the poses): for point ``i`` and axis ``a``,

``dL/du_ia = sum_levels N_l sum_corners (d w_k / d f_a) sum_j g[i, l F + j] table[row_k, j]``

with ``w_k = prod_b (f_b if bit b of k else 1 - f_b)`` and ``f = u N_l - cell`` (same cells, rows
and corner order as :func:`fieldcraft.encodings.grid.grid_encode_reference`, through the same
inlined helpers as the forward kernel); zero along an axis where the point lies outside
``[0, 1]`` (the reference clamps). Points are split into blocks, one per thread.

numpy and numba only (no PyTorch); the autograd binding is
:mod:`fieldcraft.encodings.grid_points`.
"""

from __future__ import annotations

import numpy as np

from fieldcraft.kernels.grid import _ONE, _ZERO, _axis, _corners3, layout_arrays, njit, prange
from fieldcraft.kernels.grid_layout import GridLayout


@njit(parallel=True, cache=True, error_model="numpy")
def _point_gradient_kernel3(u, table, g, out, ftup, res, sizes, hashed, pow2, offsets, nparts):
    F = len(ftup)
    n = u.shape[0]
    L = res.shape[0]
    for part in prange(nparts):
        rows = np.empty(8, np.int64)
        ws = np.empty(8, np.float32)
        v = np.empty(8, np.float32)
        lo = n * part // nparts
        hi = n * (part + 1) // nparts
        for i in range(lo, hi):
            d0 = _ZERO
            d1 = _ZERO
            d2 = _ZERO
            for lev in range(L):
                nres = res[lev]
                nf = np.float32(nres)
                _corners3(u, i, nf, nres - 1, nres + 1, hashed[lev], sizes[lev], pow2[lev], offsets[lev], rows, ws)
                c0, f0 = _axis(u[i, 0], nf, nres - 1)
                c1, f1 = _axis(u[i, 1], nf, nres - 1)
                c2, f2 = _axis(u[i, 2], nf, nres - 1)
                g0 = _ONE - f0
                g1 = _ONE - f1
                g2 = _ONE - f2
                base = lev * F
                for k in range(8):
                    s = _ZERO
                    r = rows[k]
                    for j in range(F):
                        s += g[i, base + j] * table[r, j]
                    v[k] = s
                # corner k: bit 0 -> axis 0, bit 1 -> axis 1, bit 2 -> axis 2
                e0 = (v[1] - v[0]) * g1 * g2 + (v[3] - v[2]) * f1 * g2 + (v[5] - v[4]) * g1 * f2 + (v[7] - v[6]) * f1 * f2
                e1 = (v[2] - v[0]) * g0 * g2 + (v[3] - v[1]) * f0 * g2 + (v[6] - v[4]) * g0 * f2 + (v[7] - v[5]) * f0 * f2
                e2 = (v[4] - v[0]) * g0 * g1 + (v[5] - v[1]) * f0 * g1 + (v[6] - v[2]) * g0 * f1 + (v[7] - v[3]) * f0 * f1
                d0 += nf * e0
                d1 += nf * e1
                d2 += nf * e2
            out[i, 0] = d0 if _ZERO <= u[i, 0] <= _ONE else _ZERO
            out[i, 1] = d1 if _ZERO <= u[i, 1] <= _ONE else _ZERO
            out[i, 2] = d2 if _ZERO <= u[i, 2] <= _ONE else _ZERO


def run_point_gradient(u: np.ndarray, table: np.ndarray, g: np.ndarray, layout: GridLayout,
                       nthreads: int) -> np.ndarray:
    """``dL/du`` ``[n, 3]`` (float32) of 3-D points ``u`` given ``g = dL/d features`` ``[n, L * F]``."""
    if layout.dim != 3:
        raise ValueError(f"the point-gradient kernel is for 3-D points, got {layout.dim}-D")
    out = np.zeros((u.shape[0], 3), np.float32)
    if u.shape[0] == 0:
        return out
    res, sizes, hashed, pow2, offsets = layout_arrays(layout)
    _point_gradient_kernel3(u, table, g, out, (0,) * layout.n_features, res, sizes, hashed, pow2, offsets, nthreads)
    return out
