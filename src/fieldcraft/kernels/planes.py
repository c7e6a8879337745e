"""Numba kernels sampling stacks of feature planes (2-D) and feature lines (1-D): tri-planes and TensoRF.

A stack holds ``P`` grids of dimension ``D`` (2: planes, 1: lines), each ``R`` cells per axis
(``R + 1`` vertices) with ``C`` features per vertex, texel-major: ``table[p, v, c]`` with vertex
``(i, j)`` of plane ``p`` at row ``v = i + j (R + 1)`` (line vertex ``i`` at row ``i``). With a
``stride`` ``s`` (dividing ``R``) only the vertices at multiples of ``s`` are used: the grid then has
``r = R / s`` cells per axis (coarse-to-fine training starts with a large stride and halves it).

Point ``p``'s coordinates ``t[n, p, :D]`` lie in ``[0, 1]`` (clamped); along each axis ``x = t r``,
cell ``c = min(floor(x), r - 1)``, fraction ``f = x - c``; the feature is the (bi)linear
interpolation of the cell's corner features (vertices ``c s`` and ``(c + 1) s``). Output
``out[n, p, c]``. The backward kernels scatter ``grad_out`` into ``grad_table`` one plane per
thread (planes never share rows, so no two threads write the same row).

Torch-free: the PyTorch binding and the reference implementation (same formula, any device,
differentiable in the points too) live in :mod:`fieldcraft.encodings.triplane`.
"""

from __future__ import annotations

import numpy as np

try:
    from numba import njit, prange

    HAVE_NUMBA = True
except Exception:  # pragma: no cover - exercised only without numba
    HAVE_NUMBA = False


def _axis(x: float, r: int) -> tuple[int, float]:
    x = min(max(x, 0.0), 1.0) * r
    c = min(int(np.floor(x)), r - 1)
    return c, x - c


def _corners(x: float, y: float, r: int, stride: int, n1: int) -> tuple:
    """Rows and bilinear weights of the four corners of point ``(x, y)``'s cell (module docstring)."""
    cx, fx = _axis_nb(x, r)
    cy, fy = _axis_nb(y, r)
    v00 = cx * stride + cy * stride * n1
    v01 = v00 + stride * n1
    return (v00, v00 + stride, v01, v01 + stride, (1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy)


if HAVE_NUMBA:
    _axis_nb = njit(inline="always", cache=True)(_axis)
    _corners_nb = njit(inline="always", cache=True)(_corners)

    @njit(parallel=True, cache=True)
    def plane_forward(t, table, resolution, stride, out):  # pragma: no cover - compiled
        """``out[n, p, :] = bilinear(table[p], t[n, p, :2])`` (module docstring)."""
        n, planes, feats, r, n1 = t.shape[0], t.shape[1], table.shape[2], resolution // stride, resolution + 1
        for i in prange(n):
            for p in range(planes):
                v00, v10, v01, v11, w00, w10, w01, w11 = _corners_nb(t[i, p, 0], t[i, p, 1], r, stride, n1)
                for c in range(feats):
                    out[i, p, c] = (w00 * table[p, v00, c] + w10 * table[p, v10, c] + w01 * table[p, v01, c]
                                    + w11 * table[p, v11, c])

    @njit(parallel=True, cache=True)
    def plane_backward(t, grad_out, resolution, stride, grad_table):  # pragma: no cover - compiled
        """``grad_table[p] += bilinear^T(grad_out[:, p])``; ``grad_table`` must start zeroed."""
        n, planes, feats, r, n1 = t.shape[0], t.shape[1], grad_table.shape[2], resolution // stride, resolution + 1
        for p in prange(planes):
            for i in range(n):
                v00, v10, v01, v11, w00, w10, w01, w11 = _corners_nb(t[i, p, 0], t[i, p, 1], r, stride, n1)
                for c in range(feats):
                    g = grad_out[i, p, c]
                    grad_table[p, v00, c] += w00 * g
                    grad_table[p, v10, c] += w10 * g
                    grad_table[p, v01, c] += w01 * g
                    grad_table[p, v11, c] += w11 * g

    @njit(parallel=True, cache=True)
    def line_forward(t, table, resolution, stride, out):  # pragma: no cover - compiled
        """``out[n, p, :] = linear(table[p], t[n, p, 0])`` (module docstring)."""
        n, lines, feats, r = t.shape[0], t.shape[1], table.shape[2], resolution // stride
        for i in prange(n):
            for p in range(lines):
                cx, fx = _axis_nb(t[i, p, 0], r)
                v0, v1 = cx * stride, (cx + 1) * stride
                for c in range(feats):
                    out[i, p, c] = (1 - fx) * table[p, v0, c] + fx * table[p, v1, c]

    @njit(parallel=True, cache=True)
    def line_backward(t, grad_out, resolution, stride, grad_table):  # pragma: no cover - compiled
        """``grad_table[p] += linear^T(grad_out[:, p])``; ``grad_table`` must start zeroed."""
        lines, feats, r = t.shape[1], grad_table.shape[2], resolution // stride
        for p in prange(lines):
            for i in range(t.shape[0]):
                cx, fx = _axis_nb(t[i, p, 0], r)
                for c in range(feats):
                    grad_table[p, cx * stride, c] += (1 - fx) * grad_out[i, p, c]
                    grad_table[p, (cx + 1) * stride, c] += fx * grad_out[i, p, c]


def sample_forward(t: np.ndarray, table: np.ndarray, resolution: int, stride: int) -> np.ndarray:
    """``[n, P, C]`` features of points ``t`` ``[n, P, D]`` (float32, C-contiguous) in the stack ``table``
    ``[P, (R + 1)^D, C]`` (module docstring)."""
    out = np.empty((t.shape[0], t.shape[1], table.shape[2]), dtype=table.dtype)
    (plane_forward if t.shape[2] == 2 else line_forward)(t, table, resolution, stride, out)
    return out


def sample_backward(t: np.ndarray, grad_out: np.ndarray, resolution: int, stride: int, rows: int) -> np.ndarray:
    """The gradient ``[P, rows, C]`` of ``sum(sample_forward(t, table) * grad_out)`` with respect to ``table``."""
    grad = np.zeros((t.shape[1], rows, grad_out.shape[2]), dtype=grad_out.dtype)
    (plane_backward if t.shape[2] == 2 else line_backward)(t, grad_out, resolution, stride, grad)
    return grad
