"""Bounding volume hierarchy over a triangle mesh, with numba kernels for exact closest
points and fast generalised winding numbers.

The tree is built top-down by median splits of triangle centroids along the longest axis
of the node's centroid box, down to leaves of at most ``leaf_size`` triangles. Node ``k``
stores its axis-aligned box, its children (``-1`` for leaves) or its triangle range in
``order``, and the data of the far-field winding-number approximation (Barill et al. 2018,
"Fast Winding Numbers for Soups and Clouds"): the sum of the area-weighted normals of its
triangles (a dipole moment), their area-weighted centre and the radius of a ball around
that centre containing them.

Queries run in parallel over points (``numba.prange``):

- :func:`closest_points`: exact Euclidean distance, closest point and triangle index
  (branch-and-bound descent, nearer child first; point-triangle distance after Ericson,
  "Real-Time Collision Detection", 5.1.5).
- :func:`winding_numbers`: ``w(q) = sum_t Omega_t(q) / 4 pi`` with the exact solid angle
  (Van Oosterom & Strackee 1983) for near triangles, and the first-order (dipole) expansion
  ``sum (a n) . (c - q) / (4 pi |c - q|^3)`` for nodes with ``|c - q| > beta r``.
"""

from __future__ import annotations

import dataclasses
import math

import numba
import numpy as np
from jaxtyping import Float, Int

_STACK = 128


@dataclasses.dataclass(frozen=True)
class BVH:
    """Arrays of a triangle BVH (see module docstring). ``vertices [V, 3]`` and ``faces [F, 3]``
    are float64/int64 copies of the mesh."""

    vertices: Float[np.ndarray, "V 3"]
    faces: Int[np.ndarray, "F 3"]
    order: Int[np.ndarray, " F"]
    box_min: Float[np.ndarray, "K 3"]
    box_max: Float[np.ndarray, "K 3"]
    left: Int[np.ndarray, " K"]
    right: Int[np.ndarray, " K"]
    start: Int[np.ndarray, " K"]
    count: Int[np.ndarray, " K"]
    dipole: Float[np.ndarray, "K 3"]
    centre: Float[np.ndarray, "K 3"]
    radius: Float[np.ndarray, " K"]


def build_bvh(vertices: Float[np.ndarray, "V 3"], faces: Int[np.ndarray, "F 3"], leaf_size: int = 8) -> BVH:
    """Build the tree of a triangle mesh (``faces`` index ``vertices``; at least one face)."""
    v = np.ascontiguousarray(vertices, dtype=np.float64)
    f = np.ascontiguousarray(faces, dtype=np.int64)
    tri = v[f]  # [F, 3, 3]
    centroids = tri.mean(1)
    area_n = 0.5 * np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    areas = np.linalg.norm(area_n, axis=1)
    n_max = max(1, 2 * (len(f) // max(1, leaf_size // 2)) + 1)
    arrays = _build(centroids, tri, area_n, areas, int(leaf_size), n_max)
    order, bmin, bmax, left, right, start, count, dip, cen, rad, n = arrays
    return BVH(v, f, order, bmin[:n], bmax[:n], left[:n], right[:n], start[:n], count[:n], dip[:n], cen[:n], rad[:n])


@numba.njit(cache=True)
def _build(centroids, tri, area_n, areas, leaf_size, n_max):
    nf = centroids.shape[0]
    order = np.arange(nf)
    bmin = np.empty((n_max, 3))
    bmax = np.empty((n_max, 3))
    left = -np.ones(n_max, np.int64)
    right = -np.ones(n_max, np.int64)
    start = np.zeros(n_max, np.int64)
    count = np.zeros(n_max, np.int64)
    stack = np.empty(n_max, np.int64)
    n_nodes = 1
    start[0], count[0] = 0, nf
    sp = 0
    stack[sp] = 0
    sp += 1
    while sp > 0:
        sp -= 1
        k = stack[sp]
        s, c = start[k], count[k]
        idx = order[s:s + c]
        for a in range(3):
            lo, hi = np.inf, -np.inf
            for t in idx:
                for j in range(3):
                    x = tri[t, j, a]
                    lo = min(lo, x)
                    hi = max(hi, x)
            bmin[k, a], bmax[k, a] = lo, hi
        if c <= leaf_size:
            continue
        cmin = np.full(3, np.inf)
        cmax = np.full(3, -np.inf)
        for t in idx:
            for a in range(3):
                cmin[a] = min(cmin[a], centroids[t, a])
                cmax[a] = max(cmax[a], centroids[t, a])
        axis = np.argmax(cmax - cmin)
        keys = centroids[idx, axis]
        perm = np.argsort(keys, kind="mergesort")
        order[s:s + c] = idx[perm]
        half = c // 2
        l, r = n_nodes, n_nodes + 1
        n_nodes += 2
        left[k], right[k] = l, r
        start[l], count[l] = s, half
        start[r], count[r] = s + half, c - half
        stack[sp] = l
        stack[sp + 1] = r
        sp += 2
    dip = np.zeros((n_nodes, 3))
    cen = np.zeros((n_nodes, 3))
    rad = np.zeros(n_nodes)
    for k in range(n_nodes - 1, -1, -1):  # children have larger indices than parents
        s, c = start[k], count[k]
        wsum = 0.0
        for i in range(s, s + c):
            t = order[i]
            for a in range(3):
                dip[k, a] += area_n[t, a]
                cen[k, a] += areas[t] * centroids[t, a]
            wsum += areas[t]
        if wsum > 0:
            for a in range(3):
                cen[k, a] /= wsum
        else:
            for a in range(3):
                cen[k, a] = 0.5 * (bmin[k, a] + bmax[k, a])
        r2 = 0.0
        if left[k] < 0:
            for i in range(s, s + c):
                t = order[i]
                for j in range(3):
                    d = 0.0
                    for a in range(3):
                        d += (tri[t, j, a] - cen[k, a]) ** 2
                    r2 = max(r2, d)
            rad[k] = math.sqrt(r2)
        else:
            for ch in (left[k], right[k]):
                d = 0.0
                for a in range(3):
                    d += (cen[ch, a] - cen[k, a]) ** 2
                rad[k] = max(rad[k], math.sqrt(d) + rad[ch])
    return order, bmin, bmax, left, right, start, count, dip, cen, rad, n_nodes


@numba.njit(cache=True, inline="always")
def _closest_on_triangle(px, py, pz, a, b, c):
    """Squared distance from ``p`` to triangle ``abc`` and the closest point (Ericson 5.1.5),
    in scalars (no allocation). Returns (d2, x, y, z)."""
    abx, aby, abz = b[0] - a[0], b[1] - a[1], b[2] - a[2]
    acx, acy, acz = c[0] - a[0], c[1] - a[1], c[2] - a[2]
    apx, apy, apz = px - a[0], py - a[1], pz - a[2]
    d1 = abx * apx + aby * apy + abz * apz
    d2 = acx * apx + acy * apy + acz * apz
    if d1 <= 0.0 and d2 <= 0.0:
        x, y, z = a[0], a[1], a[2]
    else:
        bpx, bpy, bpz = px - b[0], py - b[1], pz - b[2]
        d3 = abx * bpx + aby * bpy + abz * bpz
        d4 = acx * bpx + acy * bpy + acz * bpz
        vc = d1 * d4 - d3 * d2
        cpx, cpy, cpz = px - c[0], py - c[1], pz - c[2]
        d5 = abx * cpx + aby * cpy + abz * cpz
        d6 = acx * cpx + acy * cpy + acz * cpz
        vb = d5 * d2 - d1 * d6
        va = d3 * d6 - d5 * d4
        if d3 >= 0.0 and d4 <= d3:
            x, y, z = b[0], b[1], b[2]
        elif vc <= 0.0 and d1 >= 0.0 and d3 <= 0.0:
            den = d1 - d3
            v = d1 / den if den != 0.0 else 0.0
            x, y, z = a[0] + v * abx, a[1] + v * aby, a[2] + v * abz
        elif d6 >= 0.0 and d5 <= d6:
            x, y, z = c[0], c[1], c[2]
        elif vb <= 0.0 and d2 >= 0.0 and d6 <= 0.0:
            den = d2 - d6
            w = d2 / den if den != 0.0 else 0.0
            x, y, z = a[0] + w * acx, a[1] + w * acy, a[2] + w * acz
        elif va <= 0.0 and (d4 - d3) >= 0.0 and (d5 - d6) >= 0.0:
            den = (d4 - d3) + (d5 - d6)
            w = (d4 - d3) / den if den != 0.0 else 0.0
            x, y, z = b[0] + w * (c[0] - b[0]), b[1] + w * (c[1] - b[1]), b[2] + w * (c[2] - b[2])
        else:
            den = va + vb + vc
            if den == 0.0:  # degenerate triangle
                x, y, z = a[0], a[1], a[2]
            else:
                v = vb / den
                w = vc / den
                x = a[0] + abx * v + acx * w
                y = a[1] + aby * v + acy * w
                z = a[2] + abz * v + acz * w
    return (x - px) ** 2 + (y - py) ** 2 + (z - pz) ** 2, x, y, z


@numba.njit(cache=True, parallel=True)
def _closest_kernel(points, verts, faces, order, bmin, bmax, left, right, start, count):
    n = points.shape[0]
    dist = np.empty(n)
    closest = np.empty((n, 3))
    face = np.empty(n, np.int64)
    for i in numba.prange(n):
        px, py, pz = points[i, 0], points[i, 1], points[i, 2]
        best = np.inf
        bx = by = bz = 0.0
        best_f = -1
        stack = np.empty(_STACK, np.int64)
        sp = 1
        stack[0] = 0
        while sp > 0:
            sp -= 1
            k = stack[sp]
            d2 = 0.0
            for a, pa in ((0, px), (1, py), (2, pz)):
                if pa < bmin[k, a]:
                    d2 += (bmin[k, a] - pa) ** 2
                elif pa > bmax[k, a]:
                    d2 += (pa - bmax[k, a]) ** 2
            if d2 >= best:
                continue
            if left[k] < 0:
                for j in range(start[k], start[k] + count[k]):
                    t = order[j]
                    e, x, y, z = _closest_on_triangle(px, py, pz, verts[faces[t, 0]], verts[faces[t, 1]],
                                                      verts[faces[t, 2]])
                    if e < best:
                        best, bx, by, bz, best_f = e, x, y, z, t
            else:
                # push the farther child first so the nearer one is visited next
                l, r = left[k], right[k]
                dl = 0.0
                dr = 0.0
                for a, pa in ((0, px), (1, py), (2, pz)):
                    cl = 0.5 * (bmin[l, a] + bmax[l, a]) - pa
                    cr = 0.5 * (bmin[r, a] + bmax[r, a]) - pa
                    dl += cl * cl
                    dr += cr * cr
                if dl < dr:
                    stack[sp] = r
                    stack[sp + 1] = l
                else:
                    stack[sp] = l
                    stack[sp + 1] = r
                sp += 2
        dist[i] = math.sqrt(best)
        closest[i, 0], closest[i, 1], closest[i, 2] = bx, by, bz
        face[i] = best_f
    return dist, closest, face


@numba.njit(cache=True, inline="always")
def _solid_angle(q, a, b, c):
    ax, ay, az = a[0] - q[0], a[1] - q[1], a[2] - q[2]
    bx, by, bz = b[0] - q[0], b[1] - q[1], b[2] - q[2]
    cx, cy, cz = c[0] - q[0], c[1] - q[1], c[2] - q[2]
    la = math.sqrt(ax * ax + ay * ay + az * az)
    lb = math.sqrt(bx * bx + by * by + bz * bz)
    lc = math.sqrt(cx * cx + cy * cy + cz * cz)
    det = ax * (by * cz - bz * cy) - ay * (bx * cz - bz * cx) + az * (bx * cy - by * cx)
    den = la * lb * lc + (ax * bx + ay * by + az * bz) * lc + (bx * cx + by * cy + bz * cz) * la \
        + (cx * ax + cy * ay + cz * az) * lb
    return 2.0 * math.atan2(det, den)


@numba.njit(cache=True, parallel=True)
def _winding_kernel(points, verts, faces, order, left, right, start, count, dip, cen, rad, beta):
    n = points.shape[0]
    out = np.empty(n)
    inv4pi = 1.0 / (4.0 * math.pi)
    for i in numba.prange(n):
        q = points[i].copy()
        w = 0.0
        stack = np.empty(_STACK, np.int64)
        sp = 1
        stack[0] = 0
        while sp > 0:
            sp -= 1
            k = stack[sp]
            dx, dy, dz = cen[k, 0] - q[0], cen[k, 1] - q[1], cen[k, 2] - q[2]
            d = math.sqrt(dx * dx + dy * dy + dz * dz)
            if d > beta * rad[k] and d > 0.0:
                w += (dip[k, 0] * dx + dip[k, 1] * dy + dip[k, 2] * dz) / (d * d * d) * inv4pi
            elif left[k] < 0:
                for j in range(start[k], start[k] + count[k]):
                    t = order[j]
                    w += _solid_angle(q, verts[faces[t, 0]], verts[faces[t, 1]], verts[faces[t, 2]]) * inv4pi
            else:
                stack[sp] = left[k]
                stack[sp + 1] = right[k]
                sp += 2
        out[i] = w
    return out


def closest_points(bvh: BVH, points: Float[np.ndarray, "n 3"]) -> tuple[
        Float[np.ndarray, " n"], Float[np.ndarray, "n 3"], Int[np.ndarray, " n"]]:
    """Exact unsigned distance, closest surface point and its triangle index for each point."""
    p = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 3)
    return _closest_kernel(p, bvh.vertices, bvh.faces, bvh.order, bvh.box_min, bvh.box_max, bvh.left, bvh.right,
                           bvh.start, bvh.count)


def winding_numbers(bvh: BVH, points: Float[np.ndarray, "n 3"], beta: float = 2.0) -> Float[np.ndarray, " n"]:
    """Generalised winding number of each point (1 inside, 0 outside a closed outward-oriented
    mesh; fractional near holes). ``beta``: far-field acceptance ratio |c - q| > beta r."""
    p = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 3)
    return _winding_kernel(p, bvh.vertices, bvh.faces, bvh.order, bvh.left, bvh.right, bvh.start, bvh.count,
                           bvh.dipole, bvh.centre, bvh.radius, float(beta))
