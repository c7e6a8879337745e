"""Point samples of a shape (all in the shape's own coordinates, usually normalised).

- :func:`surface_samples`: uniform by area on the triangles, with the face normals.
- :func:`near_surface_samples`: surface samples plus isotropic Gaussian offsets of standard
  deviation ``sigma`` (DeepSDF samples this way, sigma^2 = 0.0025 and 0.00025 on the unit sphere).
- :func:`uniform_samples`: uniform in the cube ``[-bound, bound]^3``.
- :func:`signed_distance`: exact signed distance of points to a mesh: the unsigned distance to
  the closest triangle (BVH) with the sign of the generalised winding number
  (negative inside, where ``w > 1/2``).

All take a ``numpy.random.Generator`` (``seed`` for convenience) so samples are reproducible.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float, Int

from fieldcraft.geometry.bvh import BVH, build_bvh, closest_points, winding_numbers


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def surface_samples(vertices: Float[np.ndarray, "V 3"], faces: Int[np.ndarray, "F 3"], n: int,
                    seed: int | np.random.Generator = 0) -> tuple[Float[np.ndarray, "n 3"], Float[np.ndarray, "n 3"]]:
    """``n`` points uniform by area on the mesh, and the unit normals of their faces.

    >>> import trimesh
    >>> s = trimesh.creation.icosphere(4)
    >>> p, nrm = surface_samples(s.vertices, s.faces, 1000)
    >>> bool(np.allclose(np.linalg.norm(p, axis=1), 1, atol=2e-3)), bool((np.sum(p * nrm, 1) > 0.99).all())
    (True, True)
    """
    rng = _rng(seed)
    tri = np.asarray(vertices, np.float64)[np.asarray(faces)]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = np.linalg.norm(cross, axis=1)
    cdf = np.cumsum(area)
    face = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right").clip(0, len(tri) - 1)
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[face]
    pts = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
    normals = cross[face] / np.maximum(area[face], 1e-300)[:, None]
    return pts, normals


def near_surface_samples(surface: Float[np.ndarray, "n 3"], sigma: float,
                         seed: int | np.random.Generator = 0) -> Float[np.ndarray, "n 3"]:
    """``surface + N(0, sigma^2 I)``."""
    rng = _rng(seed)
    return surface + rng.normal(scale=sigma, size=surface.shape)


def uniform_samples(n: int, bound: float = 1.0, seed: int | np.random.Generator = 0) -> Float[np.ndarray, "n 3"]:
    """``n`` points uniform in ``[-bound, bound]^3``."""
    return _rng(seed).uniform(-bound, bound, size=(n, 3))


def signed_distance(mesh: BVH | tuple[np.ndarray, np.ndarray], points: Float[np.ndarray, "n 3"]
                    ) -> Float[np.ndarray, " n"]:
    """Exact distance to the mesh, negative where the winding number exceeds 1/2.

    >>> import trimesh
    >>> box = trimesh.creation.box()  # [-0.5, 0.5]^3
    >>> signed_distance((box.vertices, box.faces), np.array([[0.0, 0, 0], [1, 0, 0]])).round(6).tolist()
    [-0.5, 0.5]
    """
    bvh = mesh if isinstance(mesh, BVH) else build_bvh(*mesh)
    dist, _, _ = closest_points(bvh, points)
    w = winding_numbers(bvh, points)
    return np.where(w > 0.5, -dist, dist)
