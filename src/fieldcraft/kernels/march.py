"""Fast CPU kernel (numba) for marching rays through an occupancy grid.

Same intervals, in the same order, as the PyTorch reference
:func:`fieldcraft.render.occupancy_grid.march` (the code a GPU runs): ray ``r`` takes the
fixed-step intervals ``[t_min + (k + offset) s, t_min + (k + 1 + offset) s]``, ``k = 0, 1, ...``,
that end before ``t_max`` (at most ``n_max`` of them) and whose midpoint falls in an occupied
cell of the ``R^3`` grid over ``[lo, hi]``. The reference builds the dense ``[rays, n_max]``
table of candidates and filters it; here each ray is walked once to count its intervals and
once to write them, in parallel over rays, with the reference's float32 arithmetic.

numpy and numba only (no PyTorch); the caller is :func:`fieldcraft.render.occupancy_grid.march`.
"""

from __future__ import annotations

import numpy as np

from fieldcraft.kernels.grid import _NUMBA_ERROR, njit, prange

NUMBA_ERROR = _NUMBA_ERROR


@njit(inline="always")
def _occupied(o, d, r, mid, binary, lo, ext, res):
    """Whether the point ``o[r] + mid d[r]`` lies in an occupied cell (outside the box: empty)."""
    idx = 0
    for a in range(3):
        u = (o[r, a] + mid * d[r, a] - lo[a]) / ext[a]
        if not (u >= 0 and u < 1):
            return False
        c = int(u * np.float32(res))
        if c > res - 1:
            c = res - 1
        idx = idx * res + c
    return binary[idx]


@njit(parallel=True, cache=True)
def _march_count(o, d, t_min, t_max, offset, step, half, n_max, binary, lo, ext, res, use_grid, counts):
    for r in prange(t_min.shape[0]):
        c = 0
        for k in range(n_max):
            t0 = t_min[r] + (np.float32(k) + offset[r]) * step
            if not (t0 + step <= t_max[r]):
                break
            if not use_grid or _occupied(o, d, r, t0 + half, binary, lo, ext, res):
                c += 1
        counts[r] = c


@njit(parallel=True, cache=True)
def _march_fill(o, d, t_min, t_max, offset, step, half, n_max, binary, lo, ext, res, use_grid, starts, ray_idx,
                t_starts):
    for r in prange(t_min.shape[0]):
        j = starts[r]
        for k in range(n_max):
            t0 = t_min[r] + (np.float32(k) + offset[r]) * step
            if not (t0 + step <= t_max[r]):
                break
            if not use_grid or _occupied(o, d, r, t0 + half, binary, lo, ext, res):
                ray_idx[j] = r
                t_starts[j] = t0
                j += 1


def march(origins: np.ndarray, dirs: np.ndarray, t_min: np.ndarray, t_max: np.ndarray, offset: np.ndarray,
          step_size: float, n_max: int, binary: np.ndarray | None, lo: np.ndarray, hi: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """Packed intervals (module docstring): ``ray_idx`` (int64) and ``t_starts`` (float32), ray-major;
    ``binary`` the ``[R, R, R]`` occupancy (x-major, bool) or None to keep every interval.

    >>> ri, t0 = march(np.zeros((1, 3), np.float32), np.array([[1.0, 0, 0]], np.float32), np.zeros(1, np.float32),
    ...                np.ones(1, np.float32), np.zeros(1, np.float32), 0.25, 4, None, np.zeros(3), np.ones(3))
    >>> ri.tolist(), t0.tolist()
    ([0, 0, 0, 0], [0.0, 0.25, 0.5, 0.75])
    """
    n = origins.shape[0]
    use_grid = binary is not None
    res = binary.shape[0] if use_grid else 1
    grid = np.ascontiguousarray(binary).reshape(-1) if use_grid else np.zeros(1, np.bool_)
    lo32 = np.asarray(lo, np.float32)
    ext = np.asarray(hi, np.float32) - lo32
    step, half = np.float32(step_size), np.float32(0.5 * step_size)
    args = (origins, dirs, t_min, t_max, offset, step, half, int(n_max), grid, lo32, ext, res, use_grid)
    counts = np.empty(n, np.int64)
    _march_count(*args, counts)
    starts = np.zeros(n, np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    total = int(starts[-1] + counts[-1]) if n else 0
    ray_idx = np.empty(total, np.int64)
    t_starts = np.empty(total, np.float32)
    if total:
        _march_fill(*args, starts, ray_idx, t_starts)
    return ray_idx, t_starts
