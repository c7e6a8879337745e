"""Numba kernels that march rays through a baked sparse voxel grid (:mod:`fieldcraft.io.octree_file`).

Each ray is clipped to the grid's box and ``[near, far]``, then walked with a two-level DDA
(Amanatides & Woo): over the coarse grid of bricks, skipping empty bricks in one step each, and
through the voxels of occupied bricks. A voxel's density is constant inside it, so a ray
segment of length ``s`` in a voxel of density ``sigma`` has opacity ``1 - exp(-sigma s)`` exactly;
colour is ``clamp(sum_k sh[c, k] Y_k(d), 0, 1)`` with the SH basis of the ray's direction computed
once per ray. A ray stops when its transmittance falls below ``eps`` (early ray termination).

Outputs per ray: colour composited over the background, opacity, and expected depth (the
weighted mean of segment midpoints, as :meth:`fieldcraft.tasks.nerf.NerfModel.render`).

- :func:`render_view`: every pixel of one pinhole camera (rays through pixel centres, OpenGL
  axes, :mod:`fieldcraft.data.cameras`), in parallel over image rows;
- :func:`max_weights`: for baking, the largest weight each voxel receives from the rays of a
  set of cameras (visibility pruning);
- :func:`ray_segments`: the voxel segments each of a batch of rays composites (fine-tuning
  renders them differentiably with PyTorch, :class:`fieldcraft.render.octree.OctreeLeaves`).

Needs numpy and numba only (no PyTorch). Kernels are compiled on first use and cached on disk
(``cache=True``); :func:`warm_up` compiles them on a tiny problem. The PyTorch reference of
the same arithmetic is :class:`fieldcraft.render.octree.ReferenceGrid`.
"""

from __future__ import annotations

import math

import numpy as np
from jaxtyping import Float, Int

from fieldcraft.kernels.grid import _NUMBA_ERROR as NUMBA_ERROR  # noqa: F401 (numba or stand-ins; read by render.octree)
from fieldcraft.kernels.grid import njit, numba, prange

# fastmath without 'nnan'/'ninf': the DDA compares against large sentinels
_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}
_BIG = 1e30
RENDER, RECORD, SEGMENTS, OCCUPIED_SEGMENTS = 0, 1, 2, 3  # what trace() does with each segment

C0 = 0.28209479177387814
C1 = 0.48860251190291987
C2 = (1.0925484305920792, -1.0925484305920792, 0.94617469575755997, -0.31539156525251999, -1.0925484305920792,
      0.54627421529603959)
C3 = (0.59004358992664352, 2.8906114426405538, 0.45704579946446572, 0.3731763325901154, 1.4453057213202769)


@njit(cache=True, fastmath=_FAST)
def sh_basis(x: float, y: float, z: float, k: int, out: np.ndarray) -> None:  # pragma: no cover - numba
    """The first ``k`` (1, 4, 9 or 16) real SH values of unit direction ``(x, y, z)`` into ``out``
    (the constants and order of :func:`fieldcraft.encodings.spherical_harmonics.spherical_harmonics`)."""
    out[0] = C0
    if k > 1:
        out[1] = -C1 * y
        out[2] = C1 * z
        out[3] = -C1 * x
    if k > 4:
        xx, yy, zz = x * x, y * y, z * z
        out[4] = C2[0] * x * y
        out[5] = C2[1] * y * z
        out[6] = C2[2] * zz + C2[3]
        out[7] = C2[4] * x * z
        out[8] = C2[5] * (xx - yy)
        if k > 9:
            out[9] = C3[0] * y * (3.0 * xx - yy)
            out[10] = C3[1] * x * y * z
            out[11] = C3[2] * y * (1.0 - 5.0 * zz)
            out[12] = C3[3] * z * (5.0 * zz - 3.0)
            out[13] = C3[2] * x * (1.0 - 5.0 * zz)
            out[14] = C3[4] * z * (xx - yy)
            out[15] = C3[0] * x * (xx - 3.0 * yy)


@njit(cache=True, fastmath=_FAST)
def clip_ray(ox, oy, oz, dx, dy, dz, lo, hi, near, far):  # pragma: no cover - numba
    """``(t_enter, t_exit)`` of a ray through the box ``lo..hi`` within ``[near, far]`` (slab method,
    directions below 1e-12 in size treated as 1e-12, as :func:`fieldcraft.render.rays.ray_aabb`)."""
    t0, t1 = near, far
    for a in range(3):
        o = ox if a == 0 else (oy if a == 1 else oz)
        d = dx if a == 0 else (dy if a == 1 else dz)
        if abs(d) < 1e-12:
            d = 1e-12
        inv = 1.0 / d
        ta = (lo[a] - o) * inv
        tb = (hi[a] - o) * inv
        if ta > tb:
            ta, tb = tb, ta
        t0 = max(t0, ta)
        t1 = min(t1, tb)
    return t0, t1


@njit(cache=True, fastmath=_FAST, inline="always")
def _sh_sum(sh, off, basis, k):  # pragma: no cover - numba
    """The three channels' ``sum_q basis[q] sh[off + c k + q]`` (``k`` a literal at the call sites
    for 4, 9 and 16 coefficients, so the loops unroll)."""
    cr = 0.0
    cg = 0.0
    cb = 0.0
    for q in range(k):
        bq = basis[q]
        cr += bq * sh[off + q]
        cg += bq * sh[off + k + q]
        cb += bq * sh[off + 2 * k + q]
    return cr, cg, cb


@njit(cache=True, fastmath=_FAST, error_model="numpy")
def trace(ox, oy, oz, dx, dy, dz, ts, te, lo, inv_vs, bmin, bmax, c, b, index, density, sh, k, basis, eps,
          weights, dir_weights, n_dirs, dir_bin, mode, seg_voxel, seg_t, result):  # pragma: no cover - numba
    """March one unit-direction ray over ``[ts, te]`` (see the module docstring). ``result`` gets
    ``r, g, b, opacity, weighted depth sum``. ``mode``: 0 renders colour; 1 (``RECORD``) max-accumulates
    the weight of each voxel sample into ``weights`` (flat over bricks x voxels) and sums it into
    ``dir_weights[voxel * n_dirs + dir_bin]``, skipping colour; 2 (``SEGMENTS``) lists every segment
    inside an occupied brick (empty voxels too) up to early termination, 3 (``OCCUPIED_SEGMENTS``)
    only those in voxels of positive density: segment ``n = result[5]`` (then ``result[5] += 1``) is
    written as flat voxel ``seg_voxel[n]`` and ``seg_t[n] = (t_start, t_end)`` when
    ``n < len(seg_voxel)`` (an empty buffer counts only), skipping colour."""
    gx, gy, gz = (ox - lo[0]) * inv_vs[0], (oy - lo[1]) * inv_vs[1], (oz - lo[2]) * inv_vs[2]
    ux, uy, uz = dx * inv_vs[0], dy * inv_vs[1], dz * inv_vs[2]  # voxel units per unit of t
    sx = 1 if ux > 0 else -1
    sy = 1 if uy > 0 else -1
    sz = 1 if uz > 0 else -1
    ax, ay, az = abs(ux), abs(uy), abs(uz)
    # fine steps (one voxel) per axis
    fdx = 1.0 / ax if ax > 1e-12 else _BIG
    fdy = 1.0 / ay if ay > 1e-12 else _BIG
    fdz = 1.0 / az if az > 1e-12 else _BIG
    cb = float(b)
    b3 = b * b * b
    r_ = 0.0
    g_ = 0.0
    bl = 0.0
    opacity = 0.0
    depth = 0.0
    trans = 1.0
    t = ts
    # coarse cell of the entry point
    cx = min(max(int(math.floor((gx + t * ux) / cb)), bmin[0]), bmax[0])
    cy = min(max(int(math.floor((gy + t * uy) / cb)), bmin[1]), bmax[1])
    cz = min(max(int(math.floor((gz + t * uz) / cb)), bmin[2]), bmax[2])
    tmx = ((cx + (1 if sx > 0 else 0)) * cb - gx) / ux if ax > 1e-12 else _BIG
    tmy = ((cy + (1 if sy > 0 else 0)) * cb - gy) / uy if ay > 1e-12 else _BIG
    tmz = ((cz + (1 if sz > 0 else 0)) * cb - gz) / uz if az > 1e-12 else _BIG
    done = False
    while t < te and not done:
        tn = min(tmx, tmy, tmz, te)
        blk = index[(cx * c + cy) * c + cz]
        if blk >= 0 and tn > t:
            x0, y0, z0 = cx * b, cy * b, cz * b
            tm = 0.5 * (t + min(tn, t + 1e-6))
            vx = min(max(int(math.floor(gx + tm * ux)), x0), x0 + b - 1)
            vy = min(max(int(math.floor(gy + tm * uy)), y0), y0 + b - 1)
            vz = min(max(int(math.floor(gz + tm * uz)), z0), z0 + b - 1)
            fmx = ((vx + (1 if sx > 0 else 0)) - gx) / ux if ax > 1e-12 else _BIG
            fmy = ((vy + (1 if sy > 0 else 0)) - gy) / uy if ay > 1e-12 else _BIG
            fmz = ((vz + (1 if sz > 0 else 0)) - gz) / uz if az > 1e-12 else _BIG
            base = blk * b3
            tt = t
            while tt < tn:
                t2 = min(fmx, fmy, fmz, tn)
                seg = t2 - tt
                if seg > 0.0:
                    li = base + ((vx - x0) * b + (vy - y0)) * b + (vz - z0)
                    sigma = density[li]
                    if sigma > 0.0 or mode == SEGMENTS:
                        alpha = 1.0 - math.exp(-sigma * seg)
                        w = trans * alpha
                        if mode == RECORD:
                            if w > weights[li]:
                                weights[li] = w
                            dir_weights[li * n_dirs + dir_bin] += w
                        elif mode >= SEGMENTS:
                            n = int(result[5])
                            if n < seg_voxel.shape[0]:
                                seg_voxel[n] = li
                                seg_t[n, 0] = tt
                                seg_t[n, 1] = t2
                            result[5] = n + 1
                        else:
                            off = li * 3 * k
                            if k == 9:
                                cr, cg, cbl = _sh_sum(sh, off, basis, 9)
                            elif k == 4:
                                cr, cg, cbl = _sh_sum(sh, off, basis, 4)
                            elif k == 16:
                                cr, cg, cbl = _sh_sum(sh, off, basis, 16)
                            else:
                                cr, cg, cbl = _sh_sum(sh, off, basis, k)
                            r_ += w * min(max(cr, 0.0), 1.0)
                            g_ += w * min(max(cg, 0.0), 1.0)
                            bl += w * min(max(cbl, 0.0), 1.0)
                        opacity += w
                        depth += w * 0.5 * (tt + t2)
                        trans *= 1.0 - alpha
                        if trans < eps:
                            done = True
                            break
                tt = t2
                if fmx <= fmy and fmx <= fmz:
                    vx += sx
                    fmx += fdx
                    if vx < x0 or vx >= x0 + b:
                        break
                elif fmy <= fmz:
                    vy += sy
                    fmy += fdy
                    if vy < y0 or vy >= y0 + b:
                        break
                else:
                    vz += sz
                    fmz += fdz
                    if vz < z0 or vz >= z0 + b:
                        break
        t = tn
        if tmx <= tmy and tmx <= tmz:
            cx += sx
            tmx += cb * fdx
            if cx < bmin[0] or cx > bmax[0]:
                break
        elif tmy <= tmz:
            cy += sy
            tmy += cb * fdy
            if cy < bmin[1] or cy > bmax[1]:
                break
        else:
            cz += sz
            tmz += cb * fdz
            if cz < bmin[2] or cz > bmax[2]:
                break
    result[0] = r_
    result[1] = g_
    result[2] = bl
    result[3] = opacity
    result[4] = depth


@njit(cache=True, fastmath=_FAST)
def _camera_ray(c2w, fx, fy, cx, cy, u, v):  # pragma: no cover - numba
    """Origin and unit direction of the ray through pixel coordinates ``(u, v)``."""
    lx = (u - cx) / fx
    ly = -(v - cy) / fy
    dx = c2w[0, 0] * lx + c2w[0, 1] * ly - c2w[0, 2]
    dy = c2w[1, 0] * lx + c2w[1, 1] * ly - c2w[1, 2]
    dz = c2w[2, 0] * lx + c2w[2, 1] * ly - c2w[2, 2]
    n = math.sqrt(dx * dx + dy * dy + dz * dz)
    return c2w[0, 3], c2w[1, 3], c2w[2, 3], dx / n, dy / n, dz / n


@njit(cache=True, parallel=True, fastmath=_FAST, nogil=True, error_model="numpy")
def render_view_kernel(c2w, fx, fy, cx, cy, height, width, near, far, box_lo, box_hi, tight_lo, tight_hi, lo, inv_vs,
                       bmin, bmax, c, b, index, density, sh, k, eps, background, rgb, depth, opacity
                       ):  # pragma: no cover - numba
    dummy = np.zeros(1, np.float32)
    no_voxels = np.zeros(0, np.int64)
    no_t = np.zeros((0, 2))
    for i in prange(height):
        basis = np.zeros(16)
        res = np.zeros(6)
        for j in range(width):
            ox, oy, oz, dx, dy, dz = _camera_ray(c2w, fx, fy, cx, cy, j + 0.5, i + 0.5)
            t0, t1 = clip_ray(ox, oy, oz, dx, dy, dz, box_lo, box_hi, near, far)
            ts, te = clip_ray(ox, oy, oz, dx, dy, dz, tight_lo, tight_hi, t0, t1)
            if te > ts:
                sh_basis(dx, dy, dz, k, basis)
                trace(ox, oy, oz, dx, dy, dz, ts, te, lo, inv_vs, bmin, bmax, c, b, index, density, sh, k, basis,
                      eps, dummy, dummy, 1, 0, RENDER, no_voxels, no_t, res)
            else:
                res[:] = 0.0
            a = res[3]
            rgb[i, j, 0] = res[0] + (1.0 - a) * background[0]
            rgb[i, j, 1] = res[1] + (1.0 - a) * background[1]
            rgb[i, j, 2] = res[2] + (1.0 - a) * background[2]
            opacity[i, j] = a
            depth[i, j] = res[4] / max(a, 1e-10)


@njit(cache=True, parallel=True, fastmath=_FAST)
def max_weights_kernel(c2ws, fxs, fys, cxs, cys, height, width, scale, near, far, box_lo, box_hi, tight_lo, tight_hi,
                       lo, inv_vs, bmin, bmax, c, b, index, density, eps, dirs, weights, dir_weights
                       ):  # pragma: no cover - numba
    """Per thread ``T`` block of cameras: ``weights [T, N * B^3]`` the max weight of each voxel,
    ``dir_weights [T, N * B^3 * D]`` the sum of its weights over rays whose direction is nearest
    to each of ``dirs [D, 3]``."""
    n_cam = c2ws.shape[0]
    n_threads = weights.shape[0]
    n_dirs = dirs.shape[0]
    sh = np.zeros(1, np.float32)
    no_voxels = np.zeros(0, np.int64)
    no_t = np.zeros((0, 2))
    hs, ws = height * scale, width * scale
    for part in prange(n_threads):
        basis = np.zeros(16)
        res = np.zeros(6)
        w = weights[part]
        dw = dir_weights[part]
        for cam in range(part, n_cam, n_threads):
            for i in range(hs):
                for j in range(ws):
                    ox, oy, oz, dx, dy, dz = _camera_ray(c2ws[cam], fxs[cam], fys[cam], cxs[cam], cys[cam],
                                                         (j + 0.5) / scale, (i + 0.5) / scale)
                    t0, t1 = clip_ray(ox, oy, oz, dx, dy, dz, box_lo, box_hi, near, far)
                    ts, te = clip_ray(ox, oy, oz, dx, dy, dz, tight_lo, tight_hi, t0, t1)
                    if te > ts:
                        best = 0
                        top = -2.0
                        for q in range(n_dirs):
                            dot = dx * dirs[q, 0] + dy * dirs[q, 1] + dz * dirs[q, 2]
                            if dot > top:
                                top = dot
                                best = q
                        trace(ox, oy, oz, dx, dy, dz, ts, te, lo, inv_vs, bmin, bmax, c, b, index, density, sh, 1,
                              basis, eps, w, dw, n_dirs, best, RECORD, no_voxels, no_t, res)


@njit(cache=True, parallel=True, fastmath=_FAST, error_model="numpy")
def segments_kernel(origins, dirs, near, far, box_lo, box_hi, tight_lo, tight_hi, lo, inv_vs, bmin, bmax, c, b,
                    index, density, eps, mode, offsets, seg_voxel, seg_t, counts):  # pragma: no cover - numba
    """Per ray ``i`` (``origins``, unit ``dirs`` ``[m, 3]``): its segments (``trace`` mode ``SEGMENTS``
    or ``OCCUPIED_SEGMENTS``) written from ``offsets[i]`` on, and their number into ``counts[i]``
    (empty buffers: count only)."""
    sh = np.zeros(1, np.float32)
    dummy = np.zeros(1, np.float32)
    for i in prange(origins.shape[0]):
        basis = np.zeros(1)
        res = np.zeros(6)
        res[5] = offsets[i]
        ox, oy, oz = origins[i, 0], origins[i, 1], origins[i, 2]
        dx, dy, dz = dirs[i, 0], dirs[i, 1], dirs[i, 2]
        t0, t1 = clip_ray(ox, oy, oz, dx, dy, dz, box_lo, box_hi, near, far)
        ts, te = clip_ray(ox, oy, oz, dx, dy, dz, tight_lo, tight_hi, t0, t1)
        if te > ts:
            trace(ox, oy, oz, dx, dy, dz, ts, te, lo, inv_vs, bmin, bmax, c, b, index, density, sh, 1, basis, eps,
                  dummy, dummy, 1, 0, mode, seg_voxel, seg_t, res)
        counts[i] = int(res[5]) - offsets[i]


class Grid:
    """The arrays the kernels read, prepared once from an :class:`~fieldcraft.io.octree_file.Octree`:
    flat brick index, float32 densities and SH (flat), the box, voxel sizes and the tight box of
    the occupied bricks."""

    def __init__(self, tree) -> None:
        self.c, self.b, self.k = tree.coarse, tree.brick, (tree.sh_degree + 1) ** 2
        self.index = tree.brick_index()
        self.density = np.ascontiguousarray(tree.density, np.float32).reshape(-1)
        self.sh = np.ascontiguousarray(tree.sh, np.float32).reshape(-1)
        aabb = np.asarray(tree.aabb, np.float64)
        self.box_lo, self.box_hi = aabb[0].copy(), aabb[1].copy()
        vs = (aabb[1] - aabb[0]) / tree.resolution
        self.lo, self.inv_vs = aabb[0].copy(), 1.0 / vs
        if len(tree.bricks):
            self.bmin = tree.bricks.min(0).astype(np.int64)
            self.bmax = tree.bricks.max(0).astype(np.int64)
        else:
            self.bmin = np.zeros(3, np.int64)
            self.bmax = -np.ones(3, np.int64)
        self.tight_lo = aabb[0] + self.bmin * self.b * vs
        self.tight_hi = aabb[0] + (self.bmax + 1) * self.b * vs
        self.background = np.asarray(tree.background, np.float64)
        self.near, self.far = float(tree.near), float(tree.far)


def render_view(grid: Grid, c2w: np.ndarray, fx: float, fy: float, cx: float, cy: float, height: int, width: int,
                eps: float = 1e-3, background: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Render one camera (``c2w`` ``[3, 4]`` or ``[4, 4]``): ``rgb`` ``[H, W, 3]``, ``depth`` and
    ``opacity`` ``[H, W]``, float32. ``background`` defaults to the grid's."""
    rgb = np.empty((height, width, 3), np.float32)
    depth = np.empty((height, width), np.float32)
    opacity = np.empty((height, width), np.float32)
    bg = grid.background if background is None else np.asarray(background, np.float64)
    render_view_kernel(np.ascontiguousarray(c2w[:3, :4], np.float64), float(fx), float(fy), float(cx), float(cy),
                       int(height), int(width), grid.near, grid.far, grid.box_lo, grid.box_hi, grid.tight_lo,
                       grid.tight_hi, grid.lo, grid.inv_vs, grid.bmin, grid.bmax, grid.c, grid.b, grid.index,
                       grid.density, grid.sh, grid.k, float(eps), bg, rgb, depth, opacity)
    return {"rgb": rgb, "depth": depth, "opacity": opacity}


def max_weights(grid: Grid, c2ws: np.ndarray, fx: np.ndarray, fy: np.ndarray, cx: np.ndarray, cy: np.ndarray,
                height: int, width: int, scale: int = 1, eps: float = 1e-4, dirs: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """What the rays of the cameras (``scale^2`` rays per pixel, on a regular sub-pixel lattice) give
    each voxel: ``float32 [N, B^3]`` its largest weight, and ``float32 [N, B^3, D]`` the sum of its
    weights over the rays whose direction is nearest to each of ``dirs [D, 3]`` (default: one bin)."""
    threads = numba.get_num_threads() if numba is not None else 1
    dirs = np.ones((1, 3)) if dirs is None else np.ascontiguousarray(dirs, np.float64)
    weights = np.zeros((threads, grid.density.size), np.float32)
    dir_weights = np.zeros((threads, grid.density.size * len(dirs)), np.float32)
    max_weights_kernel(np.ascontiguousarray(c2ws[:, :3, :4], np.float64),
                       *(np.asarray(a, np.float64) for a in (fx, fy, cx, cy)), int(height), int(width), int(scale),
                       grid.near, grid.far, grid.box_lo, grid.box_hi, grid.tight_lo, grid.tight_hi, grid.lo,
                       grid.inv_vs, grid.bmin, grid.bmax, grid.c, grid.b, grid.index, grid.density, float(eps), dirs,
                       weights, dir_weights)
    v = grid.b**3
    return weights.max(0).reshape(-1, v), dir_weights.sum(0).reshape(-1, v, len(dirs))


def ray_segments(grid: Grid, origins: Float[np.ndarray, "m 3"], dirs: Float[np.ndarray, "m 3"], eps: float = 1e-3,
                 density: Float[np.ndarray, " NV"] | None = None, empty: bool = True
                 ) -> tuple[Int[np.ndarray, " n"], Int[np.ndarray, " n"], Float[np.ndarray, "n 2"]]:
    """The segments the marcher composites for each ray (unit ``dirs``): ``ray [n]`` (non-decreasing),
    flat voxel ``voxel [n]`` (brick ``voxel // B^3``, voxel ``voxel % B^3``) and ``t [n, 2]`` (start,
    end), in marching order. Every segment inside an occupied brick is listed (``empty``: voxels of
    zero density too), up to the segment whose compositing takes the transmittance below ``eps``
    (with ``density`` ``[N B^3]``, default the grid's). Two passes: count, then fill."""
    o = np.ascontiguousarray(origins, np.float64)
    d = np.ascontiguousarray(dirs, np.float64)
    dens = grid.density if density is None else np.ascontiguousarray(density, np.float32).reshape(-1)
    m = len(o)
    counts = np.zeros(m, np.int64)
    args = (grid.near, grid.far, grid.box_lo, grid.box_hi, grid.tight_lo, grid.tight_hi, grid.lo, grid.inv_vs,
            grid.bmin, grid.bmax, grid.c, grid.b, grid.index, dens, float(eps), SEGMENTS if empty else OCCUPIED_SEGMENTS)
    segments_kernel(o, d, *args, np.zeros(m, np.int64), np.zeros(0, np.int64), np.zeros((0, 2)), counts)
    offsets = np.zeros(m, np.int64)
    np.cumsum(counts[:-1], out=offsets[1:])
    total = int(counts.sum())
    voxel, t = np.empty(total, np.int64), np.empty((total, 2))
    segments_kernel(o, d, *args, offsets, voxel, t, counts)
    return np.repeat(np.arange(m), counts), voxel, t


def warm_up() -> None:
    """Compile (or load from numba's cache) :func:`render_view`'s kernel on a one-brick grid, so a
    later command's first view does not pay for it."""
    from fieldcraft.io.octree_file import Octree

    tree = Octree(np.zeros((1, 3), np.int32), np.ones((1, 8), np.float32), np.zeros((1, 8, 3, 1), np.float32),
                  2, 2, np.array([[-1.0] * 3, [1.0] * 3]), 0, np.ones(3, np.float32), 0.0, 10.0)
    c2w = np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3]])
    render_view(Grid(tree), c2w, 2.0, 2.0, 1.0, 1.0, 2, 2)
