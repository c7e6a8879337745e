"""Sphere tracing of signed distance fields (Hart 1996) to shaded images.

Rays ``o + t d`` advance by ``t += step_scale * f(o + t d)`` (``step_scale < 1`` tolerates fields
that are not exactly 1-Lipschitz) until ``|f| < eps`` (hit), ``t > far`` or ``max_steps``; only
live rays are evaluated. Normals are central finite differences of ``f`` (no autograd, so the
fast grid kernel applies). Shading: ``albedo (ambient + (1 - ambient) max(0, n . l))`` with a
headlight-like light ``l``, white background. Cameras orbit the origin (:mod:`fieldcraft.render.cameras`;
OpenGL axes: x right, y up, the camera looks down -z; rays through pixel centres), the scene is the cube
``[-1, 1]^3``. ``sdf`` is any ``f(points [n, 3] tensor) -> [n] tensor`` (normalised coordinates).

Devices: rays are made on the device of the camera matrix ``c2w`` (:func:`render_sdf` moves it
to its ``device``), and every tensor of the trace lives there; only the final image is copied
to the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from fieldcraft.render.cameras import look_at as look_at  # re-exported: callers build poses here
from fieldcraft.render.cameras import orbit

SDFFn = Callable[[Tensor], Tensor]


def orbit_cameras(n: int, radius: float = 3.2, elevation_deg: float = 20.0) -> list[Tensor]:
    """``n`` cameras evenly spaced in azimuth around the y axis at ``radius`` from the origin and
    ``elevation_deg`` above the xz plane, looking at the origin (the first one on +z)."""
    el = math.radians(elevation_deg)
    poses = orbit(n, radius * math.cos(el), radius * math.sin(el), torch.tensor([0.0, 1.0, 0.0]),
                  torch.tensor([0.0, 0.0, 1.0]))
    return list(poses)


def camera_rays(c2w: Float[Tensor, "4 4"], width: int, height: int, fov_deg: float = 40.0
                ) -> tuple[Float[Tensor, "n 3"], Float[Tensor, "n 3"]]:
    """Origins and unit directions of the pixel-centre rays, row-major ``[H * W]``, on ``c2w``'s device."""
    focal = 0.5 * width / math.tan(0.5 * math.radians(fov_deg))
    dev, dt = c2w.device, c2w.dtype
    j, i = torch.meshgrid(torch.arange(width, device=dev, dtype=dt) + 0.5,
                          torch.arange(height, device=dev, dtype=dt) + 0.5, indexing="xy")
    d = torch.stack([(j - 0.5 * width) / focal, -(i - 0.5 * height) / focal, -torch.ones_like(j)], -1).reshape(-1, 3)
    d = d @ c2w[:3, :3].T
    d = d / d.norm(dim=-1, keepdim=True)
    return c2w[:3, 3].expand_as(d).clone(), d


def ray_box(origins: Tensor, dirs: Tensor, bound: float = 1.0) -> tuple[Tensor, Tensor]:
    """Entry and exit distances of rays through the cube ``[-bound, bound]^3`` (exit < entry: miss)."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t0 = (-bound - origins) * inv
    t1 = (bound - origins) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp(min=0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


@torch.no_grad()
def sphere_trace(sdf: SDFFn, origins: Float[Tensor, "n 3"], dirs: Float[Tensor, "n 3"], max_steps: int = 96,
                 eps: float = 5e-4, step_scale: float = 0.9, bound: float = 1.0
                 ) -> tuple[Float[Tensor, " n"], Bool[Tensor, " n"]]:
    """Distances ``t`` along the rays and whether they hit the zero level set inside the cube."""
    near, far = ray_box(origins, dirs, bound)
    t = near.clone()
    hit = torch.zeros(len(t), dtype=torch.bool, device=t.device)
    alive = far > near
    for _ in range(max_steps):
        idx = alive.nonzero().squeeze(-1)
        if len(idx) == 0:
            break
        d = sdf(origins[idx] + t[idx, None] * dirs[idx]).reshape(-1)
        done = d.abs() < eps
        hit[idx[done]] = True
        t[idx] += torch.where(done, torch.zeros_like(d), step_scale * d)
        alive[idx[done]] = False
        alive[idx[t[idx] > far[idx]]] = False
    return t, hit


@torch.no_grad()
def finite_difference_normals(sdf: SDFFn, points: Float[Tensor, "n 3"], h: float = 1e-3) -> Float[Tensor, "n 3"]:
    """Unit normals ``grad f / |grad f|`` by central differences of step ``h``."""
    offsets = torch.eye(3, device=points.device, dtype=points.dtype) * h
    x = torch.cat([points + o for o in offsets] + [points - o for o in offsets])
    v = sdf(x).reshape(6, -1)
    g = (v[:3] - v[3:]).T / (2 * h)
    return g / g.norm(dim=-1, keepdim=True).clamp(min=1e-12)


@torch.no_grad()
def render_sdf(sdf: SDFFn, c2w: Tensor, width: int = 256, height: int = 256, fov_deg: float = 40.0,
               albedo: tuple[float, float, float] = (0.75, 0.78, 0.85), ambient: float = 0.25,
               device: str | torch.device | None = None) -> np.ndarray:
    """A shaded ``[H, W, 3]`` uint8 image (on the CPU) of the zero level set seen from ``c2w``,
    traced on ``device`` (default: ``c2w``'s device; ``sdf`` must accept points there)."""
    c2w = c2w.to(device=device if device is not None else c2w.device, dtype=torch.float32)
    o, d = camera_rays(c2w, width, height, fov_deg)
    t, hit = sphere_trace(sdf, o, d)
    img = torch.ones(len(t), 3, device=o.device)
    if hit.any():
        p = o[hit] + t[hit, None] * d[hit]
        n = finite_difference_normals(sdf, p)
        light = -d[hit] + torch.tensor([0.3, 0.5, 0.0], device=o.device)
        light = light / light.norm(dim=-1, keepdim=True)
        lam = (n * light).sum(-1).clamp(min=0.0)
        img[hit] = torch.tensor(albedo, device=o.device) * (ambient + (1 - ambient) * lam)[:, None]
    return (img.reshape(height, width, 3).clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
