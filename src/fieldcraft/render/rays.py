"""Rays from cameras: pixel centres, camera rays, ray/box clipping, NDC warping, ray batches.

Conventions are those of :mod:`fieldcraft.data.cameras` (OpenGL axes, rays through pixel
centres). Ray points are ``o + t d``; with ``normalize=True`` directions have unit length so
``t`` is a distance in world units. Every function makes its tensors on the device of its
inputs (cameras, pixel coordinates).
"""

from __future__ import annotations

import dataclasses

import torch
from jaxtyping import Float, Int
from torch import Tensor

from fieldcraft.data.cameras import Cameras, camera_directions


def pixel_centres(height: int, width: int, device: torch.device | str | None = None) -> tuple[Float[Tensor, " hw"], Float[Tensor, " hw"]]:
    """Pixel-centre coordinates ``(u, v) = (j + 0.5, i + 0.5)`` of an image, row-major.

    >>> pixel_centres(1, 2)
    (tensor([0.5000, 1.5000]), tensor([0.5000, 0.5000]))
    """
    v, u = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32) + 0.5,
                          torch.arange(width, device=device, dtype=torch.float32) + 0.5, indexing="ij")
    return u.reshape(-1), v.reshape(-1)


def camera_rays(cameras: Cameras, cam: Int[Tensor, " m"], u: Float[Tensor, " m"], v: Float[Tensor, " m"],
                normalize: bool = True) -> tuple[Float[Tensor, "m 3"], Float[Tensor, "m 3"]]:
    """World-space origins and directions of the rays through pixel coordinates ``(u, v)`` of cameras ``cam``.

    >>> c = Cameras.from_fov(torch.eye(4)[None], 1.0, 4, 4)
    >>> o, d = camera_rays(c, torch.tensor([0]), torch.tensor([2.0]), torch.tensor([2.0]))
    >>> o.tolist(), (d + 0.0).tolist()
    ([[0.0, 0.0, 0.0]], [[0.0, 0.0, -1.0]])
    """
    local = camera_directions(cameras, u, v, cam)
    c2w = cameras.c2w[cam]
    dirs = torch.einsum("mij,mj->mi", c2w[:, :, :3], local)
    if normalize:
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    return c2w[:, :, 3].expand_as(dirs).contiguous(), dirs


def plucker(origins: Float[Tensor, "m 3"], dirs: Float[Tensor, "m 3"]) -> Float[Tensor, "m 6"]:
    """Plücker coordinates ``(d, m)`` of the lines ``o + t d``: the unit direction ``d`` and the
    moment ``m = o x d`` (``|m|`` is the line's distance from the origin). Every point of a line
    gives the same coordinates, since ``(o + t d) x d = o x d``.

    >>> o, d = torch.tensor([[0.0, 1.0, 5.0]]), torch.tensor([[0.0, 0.0, -2.0]])
    >>> plucker(o, d).tolist()
    [[0.0, 0.0, -1.0, -1.0, 0.0, 0.0]]
    >>> torch.equal(plucker(o + 3.0 * d, d), plucker(o, d))
    True
    """
    d = dirs / dirs.norm(dim=-1, keepdim=True)
    return torch.cat([d, torch.linalg.cross(origins, d, dim=-1)], -1)


def ray_aabb(origins: Float[Tensor, "m 3"], dirs: Float[Tensor, "m 3"], aabb: Float[Tensor, "2 3"]
             ) -> tuple[Float[Tensor, " m"], Float[Tensor, " m"]]:
    """Entry and exit distances of rays through an axis-aligned box (slab method).

    Rays that miss get ``t_near > t_far``.

    >>> ray_aabb(torch.tensor([[0.0, 0.0, 5.0]]), torch.tensor([[0.0, 0.0, -1.0]]), torch.tensor([[-1.0] * 3, [1.0] * 3]))
    (tensor([4.]), tensor([6.]))
    """
    inv = 1.0 / torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t0 = (aabb[0] - origins) * inv
    t1 = (aabb[1] - origins) * inv
    t_near = torch.minimum(t0, t1).amax(-1)
    t_far = torch.maximum(t0, t1).amin(-1)
    return t_near, t_far


def ndc_rays(origins: Float[Tensor, "m 3"], dirs: Float[Tensor, "m 3"], fx: float, fy: float, width: int, height: int,
             near: float = 1.0) -> tuple[Float[Tensor, "m 3"], Float[Tensor, "m 3"]]:
    """Warp forward-facing rays into normalised device coordinates (NeRF appendix C).

    Origins are first moved to the plane ``z = -near``; the warped ray ``o' + t d'`` spans the
    view frustum from the near plane (``t = 0``, ``z' = -1``) to infinity (``t = 1``, ``z' = 1``).
    Directions are not normalised.

    >>> o, d = ndc_rays(torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, -1.0]]), 1.0, 1.0, 2, 2)
    >>> (o + 0.0).abs().tolist(), (d + 0.0).abs().tolist()
    ([[0.0, 0.0, 1.0]], [[0.0, 0.0, 2.0]])
    """
    t = -(near + origins[:, 2]) / dirs[:, 2]
    o = origins + t[:, None] * dirs
    ax, ay = -2.0 * fx / width, -2.0 * fy / height
    o0 = ax * o[:, 0] / o[:, 2]
    o1 = ay * o[:, 1] / o[:, 2]
    o2 = 1.0 + 2.0 * near / o[:, 2]
    d0 = ax * (dirs[:, 0] / dirs[:, 2] - o[:, 0] / o[:, 2])
    d1 = ay * (dirs[:, 1] / dirs[:, 2] - o[:, 1] / o[:, 2])
    d2 = -2.0 * near / o[:, 2]
    return torch.stack([o0, o1, o2], -1), torch.stack([d0, d1, d2], -1)


@dataclasses.dataclass
class Rays:
    """A flat batch of ``m`` rays: ``origins, dirs`` ``[m, 3]`` in sampling space (world, or NDC for
    forward-facing scenes), unit world ``viewdirs`` ``[m, 3]`` (what view-dependent colour sees)
    and the sampled range ``t_min, t_max`` ``[m]`` (``t_min == t_max``: nothing to sample);
    ``camera`` ``[m]``: the index of the camera each ray comes from (per-image appearance), or None."""

    origins: Float[Tensor, "m 3"]
    dirs: Float[Tensor, "m 3"]
    viewdirs: Float[Tensor, "m 3"]
    t_min: Float[Tensor, " m"]
    t_max: Float[Tensor, " m"]
    camera: Int[Tensor, " m"] | None = None

    def __getitem__(self, idx) -> Rays:
        return Rays(self.origins[idx], self.dirs[idx], self.viewdirs[idx], self.t_min[idx], self.t_max[idx],
                    None if self.camera is None else self.camera[idx])

    def __len__(self) -> int:
        return int(self.origins.shape[0])

    def with_range(self, t_min: Float[Tensor, " m"], t_max: Float[Tensor, " m"]) -> Rays:
        return Rays(self.origins, self.dirs, self.viewdirs, t_min, t_max, self.camera)


class PixelRays:
    """The rays of every pixel of ``n`` views of ``height x width`` (view-major, row-major), made
    when indexed: ``rays[idx]`` (``idx`` ``[m]`` flat pixel indices) calls ``make(cam, u, v)`` for
    those pixels' cameras and centres, so a batch costs its own rays only, not every pixel's
    (44 bytes a pixel in float32). Attribute access (``rays.t_max``) makes every ray (for
    inspection on small data).

    >>> r = PixelRays(lambda cam, u, v: (cam, u, v), 2, 2, 3)
    >>> len(r), [t.tolist() for t in r[torch.tensor([0, 11])]]
    (12, [[0, 1], [0.5, 2.5], [0.5, 1.5]])
    """

    def __init__(self, make, n: int, height: int, width: int, device: torch.device | str | None = None) -> None:
        self.make, self.n, self.height, self.width, self.device = make, n, height, width, device

    def __len__(self) -> int:
        return self.n * self.height * self.width

    def __getitem__(self, idx: Int[Tensor, " m"]):
        idx = torch.as_tensor(idx, device=self.device)
        hw = self.height * self.width
        cam, p = idx // hw, idx % hw
        return self.make(cam, (p % self.width).float() + 0.5, (p // self.width).float() + 0.5)

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("make", "n", "height", "width", "device"):
            raise AttributeError(name)
        return getattr(self[torch.arange(len(self), device=self.device)], name)


class PixelTable:
    """Pixels ``[N, C]`` kept as stored (``uint8`` codes or float32), given as float32 in ``[0, 1]``
    when indexed (:func:`fieldcraft.data.scene.unit_pixels`).

    >>> PixelTable(torch.tensor([[0, 255]], dtype=torch.uint8))[torch.tensor([0])].tolist()
    [[0.0, 1.0]]
    """

    def __init__(self, pixels: Tensor) -> None:
        self.pixels = pixels

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def device(self) -> torch.device:
        return self.pixels.device

    def __getitem__(self, idx) -> Float[Tensor, "m C"]:
        out = self.pixels[idx]
        return out.float() / 255.0 if out.dtype == torch.uint8 else out


def make_rays(cameras: Cameras, cam: Int[Tensor, " m"], u: Float[Tensor, " m"], v: Float[Tensor, " m"], near: float,
              far: float, aabb: Float[Tensor, "2 3"] | None, ndc: bool) -> Rays:
    """Rays through pixel coordinates ``(u, v)`` of cameras ``cam`` (kept as ``Rays.camera``). World
    rays are clipped to the box ``aabb`` (None: not clipped, unbounded scenes) and to ``[near, far]``;
    rays that miss them get an empty range (``t_min == t_max``).
    NDC rays (:func:`ndc_rays`, near plane 1) span ``t`` in ``[0, 1]``.

    >>> c2w = torch.tensor([[[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 5]]])   # at z = 5, looking down -z
    >>> c = Cameras.from_fov(c2w, 1.0, 4, 4)
    >>> r = make_rays(c, torch.tensor([0, 0]), torch.tensor([2.0, 0.5]), torch.tensor([2.0, 0.5]), 0.1, 100.0,
    ...               torch.tensor([[-0.5] * 3, [0.5] * 3]), ndc=False)
    >>> r.t_min.tolist(), r.t_max.tolist()   # the centre ray crosses the box from t = 4.5 to 5.5
    ([4.5, 5.2...], [5.5, 5.2...])
    >>> bool(r.t_min[1] == r.t_max[1])        # the corner ray misses it: an empty range
    True
    """
    o, d = camera_rays(cameras, cam, u, v, normalize=True)
    if ndc:
        o2, d2 = ndc_rays(o, d, float(cameras.fx[0]), float(cameras.fy[0]), cameras.width, cameras.height, 1.0)
        return Rays(o2, d2, d, torch.zeros_like(u), torch.ones_like(u), cam)
    if aabb is None:  # unbounded: the whole [near, far]
        return Rays(o, d, d, torch.full_like(u, near), torch.full_like(u, far), cam)
    t0, t1 = ray_aabb(o, d, aabb)
    t_min = t0.clamp(min=near)
    return Rays(o, d, d, t_min, torch.maximum(t1.clamp(max=far), t_min), cam)
