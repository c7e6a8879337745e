"""A coloured point cloud (PLY) of a fitted NeRF: the surface its training views see.

Every ``stride``-th pixel (along rows and columns) of every training view is rendered; where the
rendered opacity reaches ``min_opacity``, the point at the expected depth along the pixel's ray
(``o + depth d``; NDC rays of forward-facing scenes are mapped back to world coordinates) becomes a
point with the rendered colour. Points outside the fitted box (for contracted, unbounded scenes:
outside the inner box grown ``unbounded_margin`` times) are dropped: far backgrounds are
squeezed into a thin shell and their depths are coarse. The PLY is written by ``trimesh``
(binary, ``x y z`` float, ``red green blue alpha`` uchar).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from fieldcraft.errors import FieldcraftError, check
from fieldcraft.tasks.nerf.model import background_colour
from fieldcraft.tasks.nerf.outputs import fitted_views, load_model


def ndc_to_world(points: Float[Tensor, "m 3"], fx: float, fy: float, width: int, height: int,
                 near: float = 1.0) -> Float[Tensor, "m 3"]:
    """Inverse of the NDC warp of :func:`fieldcraft.render.rays.ndc_rays` for points.

    >>> from fieldcraft.render.rays import ndc_rays
    >>> o, d = ndc_rays(torch.tensor([[0.1, 0.2, 0.0]]), torch.tensor([[0.0, 0.0, -1.0]]), 2.0, 2.0, 4, 4)
    >>> p = ndc_to_world(o + 0.5 * d, 2.0, 2.0, 4, 4)    # halfway in NDC: world depth 2 (disparity 1/2)
    >>> [round(x, 4) for x in p[0].tolist()]
    [0.1, 0.2, -2.0]
    """
    z = 2.0 * near / (points[:, 2] - 1.0)
    ax, ay = -2.0 * fx / width, -2.0 * fy / height
    return torch.stack([points[:, 0] * z / ax, points[:, 1] * z / ay, z], -1)


def point_cloud(out_dir: str | Path, dest: str | Path, stride: int = 4, min_opacity: float = 0.95,
                unbounded_margin: float = 2.0, data_path: str | Path | None = None, progress: bool = True,
                device: str | None = None, chunk: int = 8192) -> dict[str, Any]:
    """Write the point cloud of ``out_dir``'s fitted model to ``dest`` (module docstring); returns
    ``{"points": count, "path": dest}``."""
    from tqdm.auto import tqdm

    try:
        import trimesh
    except ImportError:
        raise FieldcraftError("export nerf --format ply needs trimesh: pip install 'fieldcraft[shapes]'") from None
    check(stride >= 1, f"--stride must be >= 1, got {stride}")
    model, meta = load_model(out_dir, device=device)
    data = fitted_views(meta, data_path, "train")
    dev = model.aabb.device
    cams = data.cameras.to(dev)
    bg = background_colour(model.config.background, dev)[None]
    v, u = torch.meshgrid(torch.arange(0, data.height, stride, device=dev, dtype=torch.float32) + 0.5,
                          torch.arange(0, data.width, stride, device=dev, dtype=torch.float32) + 0.5, indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    lo, hi = model.aabb[0], model.aabb[1]
    if model.contracted:
        centre, half = 0.5 * (lo + hi), 0.5 * (hi - lo) * unbounded_margin
        lo, hi = centre - half, centre + half
    points, colours = [], []
    with torch.no_grad():
        for k in tqdm(range(len(data)), desc="point cloud", disable=not progress):
            rays = model.rays(cams, torch.full_like(u, k, dtype=torch.long), u, v, data.near, data.far)
            for s in range(0, len(rays), chunk):
                r = rays[s:s + chunk]
                out = model.render(r, bg, train=False)
                keep = out["opacity"][:, 0] >= min_opacity
                p = r.origins[keep] + out["depth"][keep] * r.dirs[keep]
                if model.ndc:
                    p = ndc_to_world(p, float(cams.fx[k]), float(cams.fy[k]), data.width, data.height)
                    p = torch.einsum("ij,mj->mi", cams.c2w[k, :, :3], p) + cams.c2w[k, :, 3]  # camera -> world
                inside = ((p >= lo) & (p <= hi)).all(-1)
                points.append(p[inside].cpu())
                colours.append(out["rgb"][keep][inside].clamp(0, 1).cpu())
    xyz = torch.cat(points).numpy().astype(np.float32)
    rgb = (torch.cat(colours).numpy() * 255).round().astype(np.uint8)
    check(len(xyz) > 0, f"{out_dir}: no rendered pixel reaches opacity {min_opacity}: an empty point cloud")
    rgba = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], 1)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    trimesh.PointCloud(xyz, colors=rgba).export(str(dest))
    return {"points": int(len(xyz)), "path": str(dest)}
