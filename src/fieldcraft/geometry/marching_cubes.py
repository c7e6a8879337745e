"""Dense isosurface extraction: evaluate a field on a regular grid in chunks and run
scikit-image's marching cubes (Lewiner et al. 2003) block by block, so memory stays bounded
at any resolution.

Grid convention: ``resolution`` R cells per axis over the box ``[-bound, bound]^3``, i.e.
``R + 1`` vertices per axis at ``x_i = -bound + 2 bound i / R``. The field is any callable
``f(points [n, 3]) -> values [n]`` (numpy or torch in, array-like out); ``level`` is the
iso-value (0 for SDFs, 0.5 for occupancy probabilities). ``inside="below"`` means the solid is
where ``f < level`` (SDFs), ``"above"`` where ``f > level`` (occupancy); faces are wound
counter-clockwise seen from outside, so normals point out.

Memory: one block of ``(block + 1)^3`` values (float32) and one evaluation chunk at a time,
plus the output mesh.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from jaxtyping import Float, Int

FieldFn = Callable[[np.ndarray], np.ndarray]


def grid_coordinates(resolution: int, bound: float = 1.0) -> Float[np.ndarray, " R1"]:
    """The ``R + 1`` vertex coordinates along one axis.

    >>> grid_coordinates(4).tolist()
    [-1.0, -0.5, 0.0, 0.5, 1.0]
    """
    return np.linspace(-bound, bound, resolution + 1)


def evaluate_points(fn: FieldFn, points: Float[np.ndarray, "n 3"], chunk: int = 262_144) -> Float[np.ndarray, " n"]:
    """``fn`` on ``points`` in chunks of at most ``chunk`` points, as float32."""
    out = np.empty(len(points), np.float32)
    for s in range(0, len(points), chunk):
        out[s:s + chunk] = np.asarray(fn(points[s:s + chunk]), dtype=np.float32).reshape(-1)
    return out


def evaluate_block(fn: FieldFn, lo: tuple[int, int, int], shape: tuple[int, int, int], resolution: int,
                   bound: float = 1.0, chunk: int = 262_144) -> Float[np.ndarray, "a b c"]:
    """Field values on the vertices ``lo + [0, shape)`` (integer indices) of the grid."""
    axes = [(-bound + 2.0 * bound * (lo[i] + np.arange(shape[i])) / resolution) for i in range(3)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    return evaluate_points(fn, pts, chunk).reshape(shape)


def marching_cubes_volume(volume: Float[np.ndarray, "a b c"], level: float, resolution: int, bound: float = 1.0,
                          inside: str = "below", mask: np.ndarray | None = None, origin: tuple[int, int, int] = (0, 0, 0)
                          ) -> tuple[Float[np.ndarray, "v 3"], Int[np.ndarray, "f 3"]]:
    """skimage marching cubes on one block of grid values, vertices in world coordinates."""
    from skimage.measure import marching_cubes

    if not (volume.min() < level < volume.max()):
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    direction = "descent" if inside == "below" else "ascent"
    verts, faces, _, _ = marching_cubes(volume, level, gradient_direction=direction, mask=mask)
    h = 2.0 * bound / resolution
    verts = -bound + (verts.astype(np.float64) + np.asarray(origin)) * h
    return verts, faces.astype(np.int64)


def merge_blocks(parts: list[tuple[np.ndarray, np.ndarray]], resolution: int, bound: float = 1.0
                 ) -> tuple[Float[np.ndarray, "v 3"], Int[np.ndarray, "f 3"]]:
    """Concatenate block meshes and weld the vertices duplicated on shared block faces (they
    are computed from the same two grid values, so they coincide to rounding)."""
    parts = [p for p in parts if len(p[1])]
    if not parts:
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    verts, faces, off = [], [], 0
    for v, f in parts:
        verts.append(v)
        faces.append(f + off)
        off += len(v)
    v = np.concatenate(verts)
    f = np.concatenate(faces)
    if len(parts) == 1:
        return v, f
    key = np.round((v + bound) * (resolution / (2.0 * bound)) * 4096).astype(np.int64)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    return v[first], inverse.reshape(-1)[f]


def extract_dense(fn: FieldFn, resolution: int, level: float = 0.0, bound: float = 1.0, inside: str = "below",
                  block: int = 128, chunk: int = 262_144) -> tuple[Float[np.ndarray, "v 3"], Int[np.ndarray, "f 3"]]:
    """Marching cubes of ``fn`` on the full ``(R + 1)^3`` grid, evaluated block by block
    (``block`` cells per axis per block, blocks share their boundary vertices)."""
    parts = []
    for i in range(0, resolution, block):
        for j in range(0, resolution, block):
            for k in range(0, resolution, block):
                lo = (i, j, k)
                shape = tuple(min(block, resolution - a) + 1 for a in lo)
                vol = evaluate_block(fn, lo, shape, resolution, bound, chunk)  # type: ignore[arg-type]
                parts.append(marching_cubes_volume(vol, level, resolution, bound, inside, origin=lo))
    return merge_blocks(parts, resolution, bound)


def vertex_normals(vertices: Float[np.ndarray, "v 3"], faces: Int[np.ndarray, "f 3"]) -> Float[np.ndarray, "v 3"]:
    """Area-weighted unit vertex normals of a mesh (zero vectors for isolated vertices)."""
    tri = vertices[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    idx = faces.reshape(-1)
    vn = np.stack([np.bincount(idx, np.repeat(fn[:, k], 3), minlength=len(vertices)) for k in range(3)], 1)
    length = np.linalg.norm(vn, axis=1, keepdims=True)
    return np.where(length > 0, vn / np.maximum(length, 1e-300), 0.0)


def clean_mesh(vertices: Float[np.ndarray, "v 3"], faces: Int[np.ndarray, "f 3"], quantum: float = 1e-9
               ) -> tuple[Float[np.ndarray, "v 3"], Int[np.ndarray, "f 3"]]:
    """Weld vertices that coincide (to ``quantum``), drop faces that become degenerate (a repeated
    vertex or zero area; marching cubes emits some where the surface passes through grid
    vertices) and vertices no face uses, so closed isosurfaces come out watertight.

    >>> v = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0], [5, 5, 5]])
    >>> clean_mesh(v, np.array([[0, 1, 2], [0, 3, 1], [2, 3, 0]]))[1].tolist()
    [[0, 1, 2], [2, 1, 0]]
    """
    faces = np.asarray(faces, np.int64).reshape(-1, 3)
    if len(faces) == 0:
        return vertices, faces
    key = np.round(np.asarray(vertices, np.float64) / quantum).astype(np.int64)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # keep the first occurrence's order (stable output)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    faces = rank[inverse.reshape(-1)][faces]
    welded = np.asarray(vertices)[first[order]]
    distinct = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    tri = welded[faces]
    area2 = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    faces = faces[distinct & (area2 > 0)]
    used = np.zeros(len(welded), bool)
    used[faces.reshape(-1)] = True
    remap = np.cumsum(used) - 1
    return welded[used], remap[faces]
