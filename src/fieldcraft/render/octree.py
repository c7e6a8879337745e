"""Rendering a baked sparse voxel grid (:mod:`fieldcraft.io.octree_file`): the numba fast path, its
PyTorch reference, and the same image formation differentiable in the leaf values.

:meth:`OctreeRenderer.render_camera` renders one pinhole camera; it runs the numba kernels of
:mod:`fieldcraft.kernels.octree` on the CPU, and :class:`ReferenceGrid` (PyTorch, any device: the
GPU's path) when ``FIELDCRAFT_KERNELS=reference`` is set, numba is missing, or a device other
than the CPU is asked for. Both compute the same thing (tested equal):

- each ray is clipped to the grid's box and ``[near, far]``, and cut into segments at every
  voxel boundary it crosses; a segment of length ``s`` in a voxel of density ``sigma`` has
  opacity ``alpha = 1 - exp(-sigma s)`` and colour ``clamp(sum_k sh[c, k] Y_k(d), 0, 1)``;
- weights ``w_i = T_i alpha_i`` with ``T_i = prod_{j<i} (1 - alpha_j)``; segments met once ``T``
  has fallen below ``eps`` are dropped (early ray termination);
- ``rgb = sum w_i colour_i + (1 - opacity) background``, ``opacity = sum w_i``, ``depth = sum w_i
  t_i / opacity`` (segment midpoints ``t_i``).

Fine-tuning (:mod:`fieldcraft.tasks.nerf.bake`) renders with gradients: :class:`RaySegments` lists
the segments of a batch of rays (which voxel, where; no gradient needed), the caller gathers the
leaf values of those voxels, and :func:`composite_segments` evaluates the SH colour and
composites with :mod:`fieldcraft.render.compositing`, differentiably in densities and SH
coefficients. :class:`ReferenceGrid` is these two functions in float64.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from jaxtyping import Float, Int

from fieldcraft.io.octree_file import Octree

if TYPE_CHECKING:  # torch only on the reference path: the fast path renders without it
    from torch import Tensor


def use_fast_kernels(device: str | None = None) -> bool:
    """Whether :func:`render_camera` takes the numba path: numba importable, ``FIELDCRAFT_KERNELS``
    not ``reference`` and the device (if given) the CPU."""
    from fieldcraft.kernels.octree import NUMBA_ERROR
    from fieldcraft.runtime import fast_kernels_enabled

    return NUMBA_ERROR is None and fast_kernels_enabled() and (device is None or str(device).startswith("cpu"))


class OctreeRenderer:
    """A baked grid ready to render cameras on ``device`` (default the CPU, numba when
    :func:`use_fast_kernels`)."""

    def __init__(self, tree: Octree, device: str | None = None, eps: float = 1e-3) -> None:
        self.tree, self.eps, self.device = tree, eps, device or "cpu"
        self.fast = use_fast_kernels(device)
        if self.fast:
            from fieldcraft.kernels.octree import Grid

            self.grid = Grid(tree)
        else:
            self.reference = ReferenceGrid(tree, self.device)

    def render_camera(self, c2w: Float[np.ndarray, "3 4"], fx: float, fy: float, cx: float, cy: float, height: int,
                      width: int) -> dict[str, np.ndarray]:
        """``rgb`` ``[H, W, 3]`` (over the grid's background), ``depth`` and ``opacity`` ``[H, W]``, float32
        numpy, rays through pixel centres (:mod:`fieldcraft.data.cameras`)."""
        if self.fast:
            from fieldcraft.kernels.octree import render_view

            return render_view(self.grid, np.asarray(c2w), fx, fy, cx, cy, height, width, self.eps)
        import torch

        o, d = camera_rays_numpy(np.asarray(c2w, np.float64), fx, fy, cx, cy, height, width)
        out = self.reference.render(torch.from_numpy(o), torch.from_numpy(d), self.eps)
        return {"rgb": out["rgb"].reshape(height, width, 3), "depth": out["depth"].reshape(height, width),
                "opacity": out["opacity"].reshape(height, width)}


def camera_rays_numpy(c2w: Float[np.ndarray, "3 4"], fx: float, fy: float, cx: float, cy: float, height: int,
                      width: int) -> tuple[Float[np.ndarray, "hw 3"], Float[np.ndarray, "hw 3"]]:
    """Origins and unit directions (float64) of the rays through every pixel centre, row-major
    (:func:`fieldcraft.render.rays.camera_rays` in numpy).

    >>> o, d = camera_rays_numpy(np.eye(4)[:3], 1.0, 1.0, 1.0, 1.0, 2, 2)
    >>> d[0].round(4).tolist(), o[0].tolist()
    ([-0.4082, 0.4082, -0.8165], [0.0, 0.0, 0.0])
    """
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    local = np.stack([(u - cx) / fx, -(v - cy) / fy, -np.ones_like(u)], -1).reshape(-1, 3)
    d = local @ c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return np.broadcast_to(c2w[:3, 3], d.shape).copy(), d


class ReferenceGrid:
    """The grid as PyTorch tensors on ``device``, rendered by :meth:`render` (see the module docstring):
    :func:`reference_segments` composited by :func:`composite_segments` in float64."""

    def __init__(self, tree: Octree, device: str = "cpu") -> None:
        import torch

        self.tree = tree
        self.device = torch.device(device)
        t = lambda a, dtype=torch.float32: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=self.device)  # noqa: E731
        self.index = t(tree.brick_index(), torch.long)
        self.density = t(tree.density).reshape(-1)
        self.sh = t(tree.sh).reshape(self.density.shape[0], 3, -1)
        self.aabb = t(tree.aabb, torch.float64)
        self.background = t(tree.background, torch.float64)

    def render(self, origins: Float[Tensor, "m 3"], dirs: Float[Tensor, "m 3"], eps: float = 1e-3,
               chunk: int = 2048) -> dict[str, np.ndarray]:
        """Render rays with unit ``dirs``: float32 numpy ``rgb [m, 3]``, ``depth [m]``, ``opacity [m]``."""
        import torch

        parts = []
        for o, d in zip(origins.to(self.device, torch.float64).split(chunk), dirs.to(self.device, torch.float64).split(chunk)):
            ray, voxel, t = reference_segments(self.tree, self.index, self.aabb, o, d)
            parts.append(composite_segments(self.density[voxel], self.sh[voxel], ray, t, d, self.tree.sh_degree,
                                            self.background, eps, len(o)))
        return {k: torch.cat([p[k] for p in parts]).float().cpu().numpy() for k in ("rgb", "depth", "opacity")}


def reference_segments(tree: Octree, index: Int[Tensor, " C3"], aabb: Float[Tensor, "2 3"], o: Float[Tensor, "m 3"],
                       d: Float[Tensor, "m 3"]) -> tuple[Int[Tensor, " n"], Int[Tensor, " n"], Float[Tensor, "n 2"]]:
    """The PyTorch twin of :func:`fieldcraft.kernels.octree.ray_segments` (no early termination:
    :func:`composite_segments` drops what follows it): every ray (float64 ``o``, unit ``d``) is
    clipped to the box and ``[near, far]`` and cut at every voxel plane it crosses; the pieces
    inside occupied bricks (``index``: :meth:`Octree.brick_index` as a tensor) are returned as
    ``ray [n]``, flat voxel ``voxel [n]`` and ``t [n, 2]`` (start, end), in marching order."""
    import torch

    from fieldcraft.render.rays import ray_aabb

    r, b = tree.resolution, tree.brick
    c = r // b
    lo, hi = aabb[0], aabb[1]
    vs = (hi - lo) / r
    t_in, t_out = ray_aabb(o, d, aabb)
    t0 = t_in.clamp(min=tree.near)
    t1 = torch.maximum(t_out.clamp(max=tree.far), t0)
    planes = lo[:, None] + torch.arange(r + 1, device=o.device, dtype=o.dtype)[None] * vs[:, None]    # [3, R+1]
    safe = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    cross = ((planes[None] - o[:, :, None]) / safe[:, :, None]).reshape(len(o), -1)                # [m, 3(R+1)]
    cross = torch.where((cross > t0[:, None]) & (cross < t1[:, None]), cross, t1[:, None])
    ts = torch.cat([t0[:, None], cross, t1[:, None]], 1).sort(1).values                            # [m, S+1]
    seg = ts[:, 1:] - ts[:, :-1]
    mid = 0.5 * (ts[:, 1:] + ts[:, :-1])
    vox = ((o[:, None] + mid[..., None] * d[:, None] - lo) / vs).floor().long().clamp(0, r - 1)    # [m, S, 3]
    cell = vox // b
    brick = index[(cell[..., 0] * c + cell[..., 1]) * c + cell[..., 2]]
    local = vox - cell * b
    voxel = brick * b**3 + (local[..., 0] * b + local[..., 1]) * b + local[..., 2]
    ray, si = ((brick >= 0) & (seg > 0)).nonzero(as_tuple=True)
    return ray, voxel[ray, si], torch.stack([ts[ray, si], ts[ray, si + 1]], -1)


def composite_segments(sigma: Float[Tensor, " n"], coef: Float[Tensor, "n 3 K"], ray: Int[Tensor, " n"],
                       t: Float[Tensor, "n 2"], dirs: Float[Tensor, "m 3"], sh_degree: int,
                       background: Float[Tensor, " 3"], eps: float, n_rays: int) -> dict[str, Tensor]:
    """The image formation of the module docstring on listed segments (packed, ``ray`` non-decreasing,
    in marching order) with :mod:`fieldcraft.render.compositing`, in the dtype of ``t``, given each
    segment's density ``sigma`` (>= 0) and SH coefficients ``coef`` (the leaf values of its voxel,
    gathered by the caller); differentiable with respect to both. Weights of segments whose
    transmittance is below ``eps`` are zero (early ray termination). Returns ``rgb [m, 3]``,
    ``opacity [m]``, ``depth [m]``."""
    import torch

    from fieldcraft.encodings.spherical_harmonics import spherical_harmonics
    from fieldcraft.render.compositing import accumulate, apply_background, expected_depth, weights_from_densities

    dtype = t.dtype
    t0, t1 = t[:, 0], t[:, 1]
    w, trans, _ = weights_from_densities(sigma.to(dtype), t0, t1, ray)
    w = torch.where(trans >= eps, w, torch.zeros_like(w))
    basis = spherical_harmonics(dirs.to(dtype), sh_degree + 1)                                        # [m, K]
    colour = (coef.to(dtype) * basis[ray, None, :]).sum(-1).clamp(0, 1)                              # [n, 3]
    opacity = accumulate(w, None, ray, n_rays)                                                      # [m, 1]
    rgb = apply_background(accumulate(w, colour, ray, n_rays), opacity, background.to(dtype))
    depth = expected_depth(w, 0.5 * (t0 + t1), ray, n_rays)
    return {"rgb": rgb, "opacity": opacity[:, 0], "depth": depth[:, 0]}


class RaySegments:
    """Lists the segments rays composite (no gradient): :func:`fieldcraft.kernels.octree.ray_segments`
    on the numba path (:func:`use_fast_kernels`), else :func:`reference_segments` on ``device``.
    With :func:`composite_segments` this is the renderer, differentiable in the leaf values."""

    def __init__(self, tree: Octree, device: str | None = None) -> None:
        import torch

        self.tree, self.device = tree, torch.device(device or "cpu")
        self.fast = use_fast_kernels(device)
        if self.fast:
            from fieldcraft.kernels.octree import Grid

            self.grid = Grid(tree)
        else:
            self.index = torch.as_tensor(tree.brick_index(), dtype=torch.long, device=self.device)
            self.aabb = torch.as_tensor(tree.aabb, dtype=torch.float64, device=self.device)

    def __call__(self, origins: Float[Tensor, "m 3"], dirs: Float[Tensor, "m 3"], density: Float[Tensor, " NV"],
                 eps: float = 1e-3, empty: bool = True, chunk: int = 2048
                 ) -> tuple[Int[Tensor, " n"], Int[Tensor, " n"], Float[Tensor, "n 2"]]:
        """``ray [n]``, flat ``voxel [n]`` and float64 ``t [n, 2]`` on the device, for rays with unit
        ``dirs``, inside occupied bricks (``empty``: voxels of zero ``density`` too). ``density``
        (the current leaf values) also decides where the numba path stops listing (early
        termination); the reference path lists every segment."""
        import torch

        if self.fast:
            from fieldcraft.kernels.octree import ray_segments

            ray, voxel, t = ray_segments(self.grid, origins.detach().cpu().double().numpy(),
                                         dirs.detach().cpu().double().numpy(), eps, density.detach().cpu().numpy(),
                                         empty)
            return (torch.from_numpy(ray).to(self.device), torch.from_numpy(voxel).to(self.device),
                    torch.from_numpy(t).to(self.device))
        parts = []
        o64, d64 = origins.detach().to(self.device, torch.float64), dirs.detach().to(self.device, torch.float64)
        for start in range(0, len(o64), chunk):
            ray, voxel, t = reference_segments(self.tree, self.index, self.aabb, o64[start:start + chunk],
                                               d64[start:start + chunk])
            if not empty:
                keep = density.detach()[voxel] > 0
                ray, voxel, t = ray[keep], voxel[keep], t[keep]
            parts.append((ray + start, voxel, t))
        if not parts:
            empty = torch.zeros(0, dtype=torch.long, device=self.device)
            return empty, empty, torch.zeros(0, 2, dtype=torch.float64, device=self.device)
        return tuple(torch.cat(x) for x in zip(*parts))  # type: ignore[return-value]
