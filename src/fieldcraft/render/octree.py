"""Rendering a baked sparse voxel grid (:mod:`fieldcraft.io.octree_file`): the numba fast path or
its PyTorch reference.

:func:`render_camera` renders one pinhole camera; it runs the numba kernels of
:mod:`fieldcraft.kernels.octree` on the CPU, and :func:`render_rays_reference` (PyTorch, any
device: the GPU's path) when ``FIELDCRAFT_KERNELS=reference`` is set, numba is missing, or a
device other than the CPU is asked for. Both compute the same thing (tested equal):

- each ray is clipped to the grid's box and ``[near, far]``, and cut into segments at every
  voxel boundary it crosses; a segment of length ``s`` in a voxel of density ``sigma`` has
  opacity ``alpha = 1 - exp(-sigma s)`` and colour ``clamp(sum_k sh[c, k] Y_k(d), 0, 1)``;
- weights ``w_i = T_i alpha_i`` with ``T_i = prod_{j<i} (1 - alpha_j)``; segments met once ``T``
  has fallen below ``eps`` are dropped (early ray termination);
- ``rgb = sum w_i colour_i + (1 - opacity) background``, ``opacity = sum w_i``, ``depth = sum w_i
  t_i / opacity`` (segment midpoints ``t_i``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from jaxtyping import Float

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
    """The grid as PyTorch tensors on ``device``, rendered by :meth:`render` (see the module docstring)."""

    def __init__(self, tree: Octree, device: str = "cpu") -> None:
        import torch

        self.tree = tree
        self.device = torch.device(device)
        t = lambda a, dtype=torch.float32: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=self.device)  # noqa: E731
        self.index = t(tree.brick_index(), torch.long)
        self.density = t(tree.density)
        self.sh = t(tree.sh)
        self.aabb = t(tree.aabb, torch.float64)
        self.background = t(tree.background, torch.float64)

    def render(self, origins: Float[Tensor, "m 3"], dirs: Float[Tensor, "m 3"], eps: float = 1e-3,
               chunk: int = 2048) -> dict[str, np.ndarray]:
        """Render rays with unit ``dirs``: float32 numpy ``rgb [m, 3]``, ``depth [m]``, ``opacity [m]``."""
        import torch

        parts = [self._render(o, d, eps) for o, d in zip(origins.to(self.device, torch.float64).split(chunk),
                                                          dirs.to(self.device, torch.float64).split(chunk))]
        return {k: torch.cat([p[k] for p in parts]).float().cpu().numpy() for k in ("rgb", "depth", "opacity")}

    def _render(self, o: Tensor, d: Tensor, eps: float) -> dict[str, Tensor]:
        import torch

        from fieldcraft.encodings.spherical_harmonics import spherical_harmonics
        from fieldcraft.render.rays import ray_aabb

        tree, r, b = self.tree, self.tree.resolution, self.tree.brick
        c = r // b
        lo, hi = self.aabb[0], self.aabb[1]
        vs = (hi - lo) / r
        t_in, t_out = ray_aabb(o, d, self.aabb)
        t0 = t_in.clamp(min=tree.near)
        t1 = torch.maximum(t_out.clamp(max=tree.far), t0)
        planes = lo[:, None] + torch.arange(r + 1, device=o.device, dtype=o.dtype)[None] * vs[:, None]    # [3, R+1]
        safe = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
        cross = ((planes[None] - o[:, :, None]) / safe[:, :, None]).reshape(len(o), -1)                # [m, 3(R+1)]
        cross = torch.where((cross > t0[:, None]) & (cross < t1[:, None]), cross, t1[:, None])
        ts = torch.cat([t0[:, None], cross, t1[:, None]], 1).sort(1).values                            # [m, S+1]
        seg = ts[:, 1:] - ts[:, :-1]
        mid = 0.5 * (ts[:, 1:] + ts[:, :-1])
        pts = o[:, None] + mid[..., None] * d[:, None]
        vox = ((pts - lo) / vs).floor().long().clamp(0, r - 1)                                          # [m, S, 3]
        cell = vox // b
        brick = self.index[(cell[..., 0] * c + cell[..., 1]) * c + cell[..., 2]]
        local = vox - cell * b
        li = (local[..., 0] * b + local[..., 1]) * b + local[..., 2]
        sigma = torch.where((brick >= 0) & (seg > 0), self.density[brick.clamp(min=0), li].double(),
                            torch.zeros_like(seg))
        alpha = 1.0 - torch.exp(-sigma * seg)
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], 1), 1)
        w = torch.where(trans >= eps, trans * alpha, torch.zeros_like(alpha))
        opacity = w.sum(1)
        depth = (w * mid).sum(1) / opacity.clamp(min=1e-10)
        ri, si = (w > 0).nonzero(as_tuple=True)
        basis = spherical_harmonics(d, tree.sh_degree + 1)                                              # [m, K]
        coef = self.sh[brick[ri, si], li[ri, si]].double()                                              # [n, 3, K]
        colour = (coef * basis[ri, None, :]).sum(-1).clamp(0, 1)
        rgb = torch.zeros(len(o), 3, dtype=o.dtype, device=o.device).index_add_(0, ri, w[ri, si, None] * colour)
        rgb = rgb + (1.0 - opacity)[:, None] * self.background
        return {"rgb": rgb, "depth": depth, "opacity": opacity}
