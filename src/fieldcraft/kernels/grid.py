"""Fast CPU kernels (numba) for the multiresolution grid encoding.

Same semantics as :func:`fieldcraft.encodings.grid.grid_encode_reference` (cell
``min(floor(u N), N - 1)``, local coordinates ``u N - cell``, corner ``k`` with bit ``i`` on
axis ``i``, dense rows ``sum_i v_i (N + 1)^i``, hashed rows ``xor_i (v_i P_i mod 2^32) mod
size``), for 1-4 dimensions and any ``F``, float32 only: features of points and the gradient
with respect to the table (not the points). Points outside ``[0, 1]^d`` are clamped; NaN coordinates give NaN
features (never an out-of-range read).

How it is fast (measured in ``docs/performance.md``):

- Forward, *level-major*: each thread takes a contiguous block of points and runs all of
  them through level 0, then level 1, ..., so one level's table (4 MB for ``2^19 x 2``) is what
  the caches hold, instead of all levels (48 MB). Results go to a ``[L, n, F]`` scratch that
  one blocked transpose turns into ``[n, L * F]``.
- Backward, *levels owned by threads*: thread ``t`` scatters the gradient of levels
  ``t, t + T, t + 2T, ...`` (over all points, from a ``[L, n, F]`` transposed copy of the
  output gradient), so there are no atomics and no per-thread copies of the table, and the
  result is bitwise the same for any thread count. With fewer levels than threads (a dense
  grid), points are split instead and per-thread partial tables are summed.
- The binding (:mod:`fieldcraft.encodings.grid_autograd`) writes the table gradient into a
  buffer reused across steps (no 50 MB allocation per step); rows untouched by the batch
  are exact zeros, which :mod:`fieldcraft.train.row_sparse_adam` uses to skip them.
- ``D`` and ``F`` are compile-time constants (passed as tuple lengths), so the inner loops
  unroll; kernels are compiled once per ``(D, F)`` and cached on disk (``cache=True``).

This module needs numpy and numba only (no PyTorch), so one-shot inference such as a mesh
export (:mod:`fieldcraft.fields.inference`) can run without importing torch. The PyTorch
autograd binding, with its fallback to the reference when numba is missing, is
:mod:`fieldcraft.encodings.grid_autograd`.
"""

from __future__ import annotations

import functools
import os
import threading

import numpy as np

from fieldcraft.kernels.grid_layout import PRIMES, GridLayout

try:  # numba is a declared dependency, but a broken install must not break the package
    import numba
    from numba import njit, prange

    _NUMBA_ERROR: str | None = None
except Exception as exc:  # pragma: no cover - exercised only without numba
    numba = None
    _NUMBA_ERROR = f"{type(exc).__name__}: {exc}"

    def njit(*args, **kwargs):  # type: ignore[no-redef]
        return (lambda f: f) if not (len(args) == 1 and callable(args[0])) else args[0]

    prange = range  # type: ignore[assignment]

_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)
_P1, _P2, _P3 = PRIMES[1], PRIMES[2], PRIMES[3]
_M32 = 0xFFFFFFFF


# ----------------------------------------------------------------------------- per-point math
@njit(inline="always", error_model="numpy")
def _axis(x, nf, nm1):
    """Clamped cell index and local coordinate along one axis (float32 math)."""
    if x > _ONE:  # comparisons, not min/max: a NaN must pass through (see below)
        x = _ONE
    if x < _ZERO:
        x = _ZERO
    p = x * nf
    if p != p:  # NaN: a valid cell, NaN weights
        return 0, p
    c = int(np.floor(p))
    if c > nm1:
        c = nm1
    return c, p - np.float32(c)


@njit(inline="always", error_model="numpy")
def _wrap(h, size, pow2):
    return h & (size - 1) if pow2 else h % size


def _corners(u, i, dtup, nf, nm1, n1, hashed, size, pow2, off, rows, ws, cells, fracs):
    """Fill ``rows[k]`` (table row) and ``ws[k]`` (weight) for the ``2^D`` corners of point ``i``
    (``D = len(dtup)``; only the matching implementation below is compiled)."""
    raise NotImplementedError  # pragma: no cover - replaced by the numba overload


@njit(inline="always", error_model="numpy")
def _corners3(u, i, nf, nm1, n1, hashed, size, pow2, off, rows, ws):
    c0, f0 = _axis(u[i, 0], nf, nm1)
    c1, f1 = _axis(u[i, 1], nf, nm1)
    c2, f2 = _axis(u[i, 2], nf, nm1)
    g0 = _ONE - f0
    g1 = _ONE - f1
    g2 = _ONE - f2
    if hashed:
        a0 = c0
        b0 = c0 + 1
        a1 = (c1 * _P1) & _M32
        b1 = ((c1 + 1) * _P1) & _M32
        a2 = (c2 * _P2) & _M32
        b2 = ((c2 + 1) * _P2) & _M32
        rows[0] = off + _wrap(a0 ^ a1 ^ a2, size, pow2)
        rows[1] = off + _wrap(b0 ^ a1 ^ a2, size, pow2)
        rows[2] = off + _wrap(a0 ^ b1 ^ a2, size, pow2)
        rows[3] = off + _wrap(b0 ^ b1 ^ a2, size, pow2)
        rows[4] = off + _wrap(a0 ^ a1 ^ b2, size, pow2)
        rows[5] = off + _wrap(b0 ^ a1 ^ b2, size, pow2)
        rows[6] = off + _wrap(a0 ^ b1 ^ b2, size, pow2)
        rows[7] = off + _wrap(b0 ^ b1 ^ b2, size, pow2)
    else:
        s2 = n1 * n1
        base = off + c0 + n1 * c1 + s2 * c2
        rows[0] = base
        rows[1] = base + 1
        rows[2] = base + n1
        rows[3] = base + n1 + 1
        rows[4] = base + s2
        rows[5] = base + s2 + 1
        rows[6] = base + s2 + n1
        rows[7] = base + s2 + n1 + 1
    # same multiplication order as the reference's product over axes 0, 1, 2
    ws[0] = g0 * g1 * g2
    ws[1] = f0 * g1 * g2
    ws[2] = g0 * f1 * g2
    ws[3] = f0 * f1 * g2
    ws[4] = g0 * g1 * f2
    ws[5] = f0 * g1 * f2
    ws[6] = g0 * f1 * f2
    ws[7] = f0 * f1 * f2


@njit(inline="always", error_model="numpy")
def _corners2(u, i, nf, nm1, n1, hashed, size, pow2, off, rows, ws):
    c0, f0 = _axis(u[i, 0], nf, nm1)
    c1, f1 = _axis(u[i, 1], nf, nm1)
    g0 = _ONE - f0
    g1 = _ONE - f1
    if hashed:
        a0 = c0
        b0 = c0 + 1
        a1 = (c1 * _P1) & _M32
        b1 = ((c1 + 1) * _P1) & _M32
        rows[0] = off + _wrap(a0 ^ a1, size, pow2)
        rows[1] = off + _wrap(b0 ^ a1, size, pow2)
        rows[2] = off + _wrap(a0 ^ b1, size, pow2)
        rows[3] = off + _wrap(b0 ^ b1, size, pow2)
    else:
        base = off + c0 + n1 * c1
        rows[0] = base
        rows[1] = base + 1
        rows[2] = base + n1
        rows[3] = base + n1 + 1
    ws[0] = g0 * g1
    ws[1] = f0 * g1
    ws[2] = g0 * f1
    ws[3] = f0 * f1


@njit(inline="always", error_model="numpy")
def _corners_any(u, i, D, nf, nm1, n1, hashed, size, pow2, off, rows, ws, cells, fracs):
    for d in range(D):
        c, f = _axis(u[i, d], nf, nm1)
        cells[d] = c
        fracs[d] = f
    for k in range(1 << D):
        w = _ONE
        idx = 0
        stride = 1
        for d in range(D):
            bit = (k >> d) & 1
            v = cells[d] + bit
            w = w * (fracs[d] if bit else _ONE - fracs[d])
            if hashed:
                prime = 1 if d == 0 else (_P1 if d == 1 else (_P2 if d == 2 else _P3))
                idx = idx ^ ((v * prime) & _M32)
            else:
                idx += v * stride
                stride *= n1
        rows[k] = off + (_wrap(idx, size, pow2) if hashed else idx)
        ws[k] = w


if numba is not None:
    from numba.extending import overload

    @overload(_corners, inline="always")
    def _corners_overload(u, i, dtup, nf, nm1, n1, hashed, size, pow2, off, rows, ws, cells, fracs):
        dim = len(dtup)
        if dim == 3:
            def impl3(u, i, dtup, nf, nm1, n1, hashed, size, pow2, off, rows, ws, cells, fracs):
                _corners3(u, i, nf, nm1, n1, hashed, size, pow2, off, rows, ws)
            return impl3
        if dim == 2:
            def impl2(u, i, dtup, nf, nm1, n1, hashed, size, pow2, off, rows, ws, cells, fracs):
                _corners2(u, i, nf, nm1, n1, hashed, size, pow2, off, rows, ws)
            return impl2

        def impl(u, i, dtup, nf, nm1, n1, hashed, size, pow2, off, rows, ws, cells, fracs):
            _corners_any(u, i, len(dtup), nf, nm1, n1, hashed, size, pow2, off, rows, ws, cells, fracs)
        return impl


# ----------------------------------------------------------------------------- kernels
@njit(parallel=True, cache=True, error_model="numpy")
def _forward_kernel(u, table, out_l, dtup, ftup, res, sizes, hashed, pow2, offsets, nparts):
    """``out_l[l, i, :]`` = level-``l`` feature of point ``i``; thread ``p`` owns a block of points."""
    D = len(dtup)
    F = len(ftup)
    C = 1 << D
    n = u.shape[0]
    L = res.shape[0]
    for part in prange(nparts):
        rows = np.empty(C, np.int64)
        ws = np.empty(C, np.float32)
        cells = np.empty(D, np.int64)
        fracs = np.empty(D, np.float32)
        acc = np.empty(F, np.float32)
        lo = n * part // nparts
        hi = n * (part + 1) // nparts
        for lev in range(L):
            nres = res[lev]
            nf = np.float32(nres)
            off = offsets[lev]
            size = sizes[lev]
            hsh = hashed[lev]
            p2 = pow2[lev]
            for i in range(lo, hi):
                _corners(u, i, dtup, nf, nres - 1, nres + 1, hsh, size, p2, off, rows, ws, cells, fracs)
                for j in range(F):
                    acc[j] = _ZERO
                for k in range(C):
                    r = rows[k]
                    w = ws[k]
                    for j in range(F):
                        acc[j] += w * table[r, j]
                for j in range(F):
                    out_l[lev, i, j] = acc[j]


@njit(parallel=True, cache=True, error_model="numpy")
def _levels_to_points(out_l, out, ftup, nparts):
    """``out[i, l F + j] = out_l[l, i, j]`` (blocked so both sides stay in cache)."""
    F = len(ftup)
    L, n, _ = out_l.shape
    for part in prange(nparts):
        lo = n * part // nparts
        hi = n * (part + 1) // nparts
        for i0 in range(lo, hi, 512):
            i1 = min(hi, i0 + 512)
            for lev in range(L):
                for i in range(i0, i1):
                    for j in range(F):
                        out[i, lev * F + j] = out_l[lev, i, j]


@njit(parallel=True, cache=True, error_model="numpy")
def points_to_levels(g, g_l, ftup, nparts):
    """``g_l[l, i, j] = g[i, l F + j]``."""
    F = len(ftup)
    L, n, _ = g_l.shape
    for part in prange(nparts):
        lo = n * part // nparts
        hi = n * (part + 1) // nparts
        for i0 in range(lo, hi, 512):
            i1 = min(hi, i0 + 512)
            for lev in range(L):
                for i in range(i0, i1):
                    for j in range(F):
                        g_l[lev, i, j] = g[i, lev * F + j]


@njit(inline="always", error_model="numpy")
def _scatter_level(u, g_l, grad, lev, lo, hi, dtup, ftup, nres, off, size, hsh, p2, rows, ws, cells, fracs):
    D = len(dtup)
    F = len(ftup)
    C = 1 << D
    nf = np.float32(nres)
    for i in range(lo, hi):
        _corners(u, i, dtup, nf, nres - 1, nres + 1, hsh, size, p2, off, rows, ws, cells, fracs)
        for k in range(C):
            r = rows[k]
            w = ws[k]
            for j in range(F):
                grad[r, j] += w * g_l[lev, i, j]


@njit(parallel=True, cache=True, error_model="numpy")
def backward_kernel(u, g_l, grad, dtup, ftup, res, sizes, hashed, pow2, offsets, nworkers):
    """Table gradient; worker ``w`` zeroes and accumulates levels ``w, w + W, ...`` (no races)."""
    D = len(dtup)
    F = len(ftup)
    C = 1 << D
    n = u.shape[0]
    L = res.shape[0]
    for wkr in prange(nworkers):
        rows = np.empty(C, np.int64)
        ws = np.empty(C, np.float32)
        cells = np.empty(D, np.int64)
        fracs = np.empty(D, np.float32)
        for lev in range(wkr, L, nworkers):
            off = offsets[lev]
            for r in range(off, off + sizes[lev]):
                for j in range(F):
                    grad[r, j] = _ZERO
            _scatter_level(u, g_l, grad, lev, 0, n, dtup, ftup, res[lev], off, sizes[lev], hashed[lev], pow2[lev],
                           rows, ws, cells, fracs)


@njit(parallel=True, cache=True, error_model="numpy")
def _backward_split_kernel(u, g_l, grad, partial, dtup, ftup, res, sizes, hashed, pow2, offsets):
    """Table gradient when there are fewer levels than threads: part ``p`` of the points
    accumulates into ``partial[p]``, then the parts are summed in order."""
    D = len(dtup)
    F = len(ftup)
    C = 1 << D
    n = u.shape[0]
    L = res.shape[0]
    nparts = partial.shape[0]
    rows_total = grad.shape[0]
    for part in prange(nparts):
        rows = np.empty(C, np.int64)
        ws = np.empty(C, np.float32)
        cells = np.empty(D, np.int64)
        fracs = np.empty(D, np.float32)
        acc = partial[part]
        acc[:] = _ZERO
        lo = n * part // nparts
        hi = n * (part + 1) // nparts
        for lev in range(L):
            _scatter_level(u, g_l, acc, lev, lo, hi, dtup, ftup, res[lev], offsets[lev], sizes[lev], hashed[lev],
                           pow2[lev], rows, ws, cells, fracs)
    nblocks = nparts * 8
    for b in prange(nblocks):
        r0 = rows_total * b // nblocks
        r1 = rows_total * (b + 1) // nblocks
        for r in range(r0, r1):
            for j in range(F):
                s = partial[0, r, j]
                for part in range(1, nparts):
                    s += partial[part, r, j]
                grad[r, j] = s


# ----------------------------------------------------------------------------- plumbing
@functools.lru_cache(maxsize=64)
def layout_arrays(layout: GridLayout) -> tuple[np.ndarray, ...]:
    res = np.asarray(layout.resolutions, np.int64)
    sizes = np.asarray(layout.sizes, np.int64)
    hashed = np.asarray(layout.hashed, np.bool_)
    pow2 = np.asarray([(s & (s - 1)) == 0 for s in layout.sizes], np.bool_)
    offsets = np.asarray(layout.offsets, np.int64)
    return res, sizes, hashed, pow2, offsets


def usable_cores() -> int:
    """CPU cores this process may run on (``os.sched_getaffinity``, else ``os.cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def kernel_threads(requested: int | None = None) -> int:
    """Set and return the kernels' thread count: ``requested`` (default: the usable cores),
    capped by numba's pool size (``NUMBA_NUM_THREADS``)."""
    n = usable_cores() if requested is None else int(requested)
    if numba is not None:
        n = max(1, min(n, numba.config.NUMBA_NUM_THREADS))
        numba.set_num_threads(n)
    return max(1, n)


_state_lock = threading.Lock()
_forward_failures: dict[tuple[int, int], str] = {}
_forward_ready: set[tuple[int, int]] = set()


def warm_up_problem(dim: int, features: int) -> tuple[np.ndarray, np.ndarray, GridLayout]:
    """Points, table and layout of a tiny problem that makes numba compile (or load) the
    kernels for ``(dim, features)``; deterministic, so it never touches a user's RNG stream."""
    layout = GridLayout(dim, features, (2,), (16,), (True,))
    u = np.linspace(0.1, 0.9, 3 * dim, dtype=np.float32).reshape(3, dim)
    return u, np.ones((16, features), np.float32), layout


def describe_failure(exc: BaseException) -> str:
    """One line naming why a kernel could not be compiled."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


def forward_fallback_reason(dim: int, features: int) -> str | None:
    """None when the forward kernel for ``dim``-D points with ``features`` features compiles
    (or loads from numba's on-disk cache), else why not."""
    if _NUMBA_ERROR is not None:
        return f"numba unavailable ({_NUMBA_ERROR})"
    key = (dim, features)
    if key in _forward_ready:
        return None
    with _state_lock:
        if key in _forward_failures:
            return _forward_failures[key]
        try:  # compile (or load from the on-disk cache) on a tiny problem
            u, table, lay = warm_up_problem(dim, features)
            run_forward(u, table, lay, 1)
        except Exception as exc:  # noqa: BLE001 - any compiler failure means "use the reference"
            _forward_failures[key] = describe_failure(exc)
            return _forward_failures[key]
        _forward_ready.add(key)
    return None


def run_forward(u: np.ndarray, table: np.ndarray, layout: GridLayout, nthreads: int) -> np.ndarray:
    """Features ``[n, L * F]`` of float32 points ``u [n, dim]`` in ``[0, 1]^d`` (clamped) from ``table``."""
    n, L, F = u.shape[0], layout.n_levels, layout.n_features
    out_l = np.empty((L, n, F), np.float32)
    out = np.empty((n, L * F), np.float32)
    if n == 0:
        return out
    res, sizes, hashed, pow2, offsets = layout_arrays(layout)
    dtup, ftup = (0,) * layout.dim, (0,) * F
    _forward_kernel(u, table, out_l, dtup, ftup, res, sizes, hashed, pow2, offsets, nthreads)
    _levels_to_points(out_l, out, ftup, nthreads)
    return out


def run_backward_split(u: np.ndarray, g_l: np.ndarray, layout: GridLayout, nparts: int, grad: np.ndarray) -> None:
    partial = np.empty((nparts, layout.n_rows, layout.n_features), np.float32)
    res, sizes, hashed, pow2, offsets = layout_arrays(layout)
    _backward_split_kernel(u, g_l, grad, partial, (0,) * layout.dim, (0,) * layout.n_features,
                           res, sizes, hashed, pow2, offsets)
