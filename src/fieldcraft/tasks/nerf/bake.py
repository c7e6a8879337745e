"""Bake a fitted radiance field into a sparse voxel grid of density and SH colour (PlenOctrees).

:func:`bake` turns the model of a ``fit nerf`` run into an :class:`~fieldcraft.io.octree_file.Octree`
(written by ``fieldcraft export nerf DIR --format octree``):

1. candidate bricks: the ``B^3``-voxel bricks of an ``R^3`` grid over the field's box that
   overlap an occupied cell of the model's occupancy grid (models without one: cells of a
   ``64^3`` lattice whose centre density exceeds the grid's threshold);
2. density: each voxel's density is the mean of the field's density at ``s^3`` points on a
   regular lattice inside it (a box filter, ``supersample = s``); voxels whose opacity across
   one voxel, ``1 - exp(-sigma h)``, is below ``min_alpha`` are emptied;
3. visibility pruning: the rays of the training cameras (``visibility_scale^2`` rays per pixel)
   are marched through the densities (:func:`fieldcraft.kernels.octree.max_weights`); voxels whose
   largest compositing weight stays below ``prune_weight`` are emptied, and empty bricks dropped;
4. colour: at each remaining voxel the colour network sees the density-weighted mean of the
   trunk features of its lattice points and ``directions`` unit view directions (a Fibonacci
   sphere); the colours are fitted by weighted least squares with the real SH basis of bands
   ``l <= sh_degree``, each direction weighted by the summed weight the voxel gets from training
   rays nearest to that direction (floored at ``direction_floor`` times the largest), so the
   directions the cameras see decide the fit, not colours the field was never trained on (seen
   from inside an object).

Forward-facing (NDC) scenes are refused: their box is in normalised device coordinates.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from fieldcraft.config import Config
from fieldcraft.encodings.spherical_harmonics import spherical_harmonics
from fieldcraft.errors import FieldcraftError, check
from fieldcraft.io.octree_file import MAX_SH_DEGREE, Octree
from fieldcraft.tasks.nerf.model import NerfModel, background_colour
from fieldcraft.tasks.nerf.outputs import fitted_views, load_model


@dataclasses.dataclass(frozen=True)
class BakeConfig(Config):
    """Fields:

    - ``resolution``: voxels along each axis of the box (a multiple of ``brick``).
    - ``brick``: voxels along each axis of a brick, the unit of sparsity.
    - ``sh_degree``: highest SH band of the colour (0: no view dependence; ``(D + 1)^2`` coefficients).
    - ``supersample``: density (and feature) samples per voxel along each axis.
    - ``directions``: view directions per voxel for the SH projection.
    - ``direction_floor``: weight of a direction no training ray sees in the SH fit, relative to
      the most-seen direction (1: every direction counts the same, a plain projection).
    - ``min_alpha``: voxels less opaque than this across one voxel are emptied.
    - ``prune_weight``: voxels whose largest weight over the training rays is below this are emptied
      (0 keeps every voxel).
    - ``visibility_scale``: training rays per pixel along each axis for the visibility pass
      (0: chosen so that rays are at most ~0.7 voxel apart at the box centre).
    """

    type_name = "OctreeBake"
    resolution: int = 256
    brick: int = 8
    sh_degree: int = 1
    supersample: int = 2
    directions: int = 32
    direction_floor: float = 0.05
    min_alpha: float = 1e-4
    prune_weight: float = 1e-2
    visibility_scale: int = 0

    def check(self) -> None:
        check(self.brick >= 1 and self.resolution >= self.brick and self.resolution % self.brick == 0,
              f"--resolution {self.resolution} must be a positive multiple of the brick size {self.brick}")
        check(self.resolution // self.brick <= 1024, f"--resolution {self.resolution} is too large")
        check(0 <= self.sh_degree <= MAX_SH_DEGREE, f"--sh-degree must be 0..{MAX_SH_DEGREE}, got {self.sh_degree}")
        check(self.supersample >= 1, f"supersample must be >= 1, got {self.supersample}")
        check(self.directions >= (self.sh_degree + 1) ** 2,
              f"directions ({self.directions}) must be at least the SH coefficients ({(self.sh_degree + 1) ** 2})")
        check(0 <= self.prune_weight < 1 and 0 <= self.min_alpha < 1, "prune_weight and min_alpha must lie in [0, 1)")
        check(0 < self.direction_floor <= 1, f"direction_floor must lie in (0, 1], got {self.direction_floor}")
        check(self.visibility_scale >= 0, f"visibility_scale must be >= 0, got {self.visibility_scale}")


def fibonacci_directions(n: int) -> Float[np.ndarray, "n 3"]:
    """``n`` unit vectors spread evenly over the sphere (Fibonacci lattice).

    >>> d = fibonacci_directions(8)
    >>> d.shape, bool(np.allclose(np.linalg.norm(d, axis=1), 1.0))
    ((8, 3), True)
    """
    i = np.arange(n, dtype=np.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(np.maximum(0.0, 1.0 - z * z))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], -1)


def _candidate_bricks(model: NerfModel, coarse: int, step_size: float, threshold: float) -> np.ndarray:
    """``int [N, 3]`` coarse cells (``coarse^3`` over the box) that overlap an occupied cell of the
    model's occupancy grid (or of a 64^3 density lattice for models without one)."""
    if model.grid is not None:
        occ = model.grid.binary.cpu().numpy()
    else:
        g = 64
        lattice = (np.stack(np.meshgrid(*[np.arange(g)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5) / g
        lo, hi = (t.cpu().numpy() for t in model.aabb)
        pts = torch.from_numpy((lo + lattice * (hi - lo)).astype(np.float32)).to(model.aabb.device)
        with torch.no_grad():
            sigma = torch.cat([model.field.density(p) for p in pts.split(65536)])
        occ = (sigma * step_size > threshold).reshape(g, g, g).cpu().numpy()
    g = occ.shape[0]
    cells = np.argwhere(occ)
    first = (cells * coarse) // g
    last = ((cells + 1) * coarse + g - 1) // g - 1
    span = int((last - first).max(initial=0)) + 1
    mask = np.zeros((coarse,) * 3, bool)
    for off in np.ndindex(span, span, span):
        c = first + np.asarray(off)
        ok = (c <= last).all(1)
        mask[c[ok, 0], c[ok, 1], c[ok, 2]] = True
    return np.argwhere(mask)


def _voxel_points(bricks: np.ndarray, config: BakeConfig, lo: np.ndarray, vs: np.ndarray) -> np.ndarray:
    """World points ``float32 [N, B^3, s^3, 3]``: the supersampling lattice of every voxel of ``bricks``."""
    b, s = config.brick, config.supersample
    local = np.stack(np.meshgrid(*[np.arange(b)] * 3, indexing="ij"), -1).reshape(-1, 3)       # [B^3, 3]
    sub = (np.stack(np.meshgrid(*[np.arange(s)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5) / s  # [s^3, 3]
    vox = bricks[:, None, :] * b + local[None]                                                   # [N, B^3, 3]
    return (lo + (vox[:, :, None, :] + sub[None, None]) * vs).astype(np.float32)


@torch.no_grad()
def _densities_and_features(model: NerfModel, points: np.ndarray, chunk: int, progress: bool
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Box-filtered density ``[N, V]`` and density-weighted mean features ``[N, V, F]`` at ``points``."""
    from tqdm.auto import tqdm

    n, v, s3, _ = points.shape
    flat = points.reshape(-1, s3, 3)
    per = max(1, chunk // s3)
    dens, feats = [], []
    device = model.aabb.device
    for start in tqdm(range(0, len(flat), per), desc="bake density", disable=not progress):
        p = torch.from_numpy(flat[start:start + per]).to(device)
        sigma, f = model.field._trunk(p.reshape(-1, 3))
        sigma, f = sigma.float().reshape(-1, s3), f.float().reshape(-1, s3, f.shape[-1])
        w = sigma + 1e-6
        feats.append(((w[..., None] * f).sum(1) / w.sum(1, keepdim=True)).cpu())
        dens.append(sigma.mean(1).cpu())
    return torch.cat(dens).numpy().reshape(n, v), torch.cat(feats).numpy().reshape(n, v, -1)


def sh_fit(y: Float[Tensor, "d k"], weights: Float[Tensor, "n d"], colours: Float[Tensor, "n d 3"],
           ridge: float = 1e-6) -> Float[Tensor, "n 3 k"]:
    """Per voxel, the SH coefficients minimising ``sum_j weights[j] |sum_k c_k y[j, k] - colours[j]|^2``
    (weighted least squares, with a tiny ``ridge`` for directions-poor fits).

    >>> d = torch.from_numpy(fibonacci_directions(32)).float()
    >>> y = spherical_harmonics(d, 2)
    >>> c = (0.5 + 0.25 * d[:, 2:3]).expand(32, 3)[None]        # linear in z: exactly representable
    >>> fit = sh_fit(y, torch.rand(1, 32) + 0.1, c)
    >>> bool(torch.allclose(torch.einsum("nck,dk->ndc", fit, y), c, atol=1e-4))
    True
    """
    a = torch.einsum("dk,nd,dl->nkl", y, weights, y)
    a = a + ridge * weights.sum(1)[:, None, None] * torch.eye(y.shape[1], dtype=y.dtype, device=y.device)
    b = torch.einsum("dk,nd,ndc->nkc", y, weights, colours)
    return torch.linalg.solve(a, b).transpose(1, 2)


@torch.no_grad()
def _sh_colours(model: NerfModel, features: np.ndarray, seen: np.ndarray | None, config: BakeConfig, chunk: int,
                progress: bool) -> np.ndarray:
    """SH coefficients ``float32 [n, 3, K]`` of the colour the field gives features ``[n, F]`` over
    ``config.directions`` view directions, fitted with each direction weighted by how much the
    training rays see it (``seen [n, D]``, floored at ``config.direction_floor``; None: uniformly)."""
    from tqdm.auto import tqdm

    field = model.field
    device = model.aabb.device
    dirs = fibonacci_directions(config.directions)
    d = torch.from_numpy(dirs).float().to(device)
    y = spherical_harmonics(d.double(), config.sh_degree + 1).float()                          # [D, K]
    n_dir = len(dirs)
    denc = field.direction_encoding(d) if field.direction_encoding is not None else None
    out = []
    per = max(1, chunk // n_dir)
    for start in tqdm(range(0, len(features), per), desc="bake colour", disable=not progress):
        f = torch.from_numpy(features[start:start + per]).to(device)
        m = len(f)
        if field.color is None:
            rgb = torch.sigmoid(f[:, None, :3]).expand(m, n_dir, 3)
        else:
            fe = f[:, None, :].expand(m, n_dir, f.shape[-1])
            h = fe if denc is None else torch.cat([fe, denc[None].expand(m, n_dir, denc.shape[-1])], -1)
            rgb = field.color(h.reshape(m * n_dir, -1)).float().reshape(m, n_dir, 3)
        if seen is None:
            w = torch.ones(m, n_dir, device=device)
        else:
            s = torch.from_numpy(seen[start:start + per]).to(device)
            w = config.direction_floor + (1 - config.direction_floor) * s / s.amax(1, keepdim=True).clamp(min=1e-12)
        out.append(sh_fit(y, w, rgb).cpu())
    k = (config.sh_degree + 1) ** 2
    return torch.cat(out).numpy() if out else np.zeros((0, 3, k), np.float32)


def visibility_scale(config: BakeConfig, views: Any, vs: np.ndarray) -> int:
    """Training rays per pixel along each axis: ``config.visibility_scale``, or (0) enough that
    neighbouring rays are at most 0.7 voxel apart at the box centre's distance."""
    if config.visibility_scale > 0:
        return config.visibility_scale
    c2w = views.cameras.c2w.cpu().numpy()
    dist = float(np.median(np.linalg.norm(c2w[:, :, 3] - 0.0, axis=1)))
    footprint = dist / float(views.cameras.fx.min())
    return max(1, math.ceil(footprint / (0.7 * float(vs.min()))))


def bake(out_dir: str | Path, config: BakeConfig = BakeConfig(), device: str | None = None, progress: bool = True,
         chunk: int = 1 << 17) -> tuple[Octree, dict[str, Any]]:
    """Bake the model of the run ``out_dir`` (see the module docstring); returns the octree and a
    summary (bricks and voxels at each stage, seconds per stage)."""
    import time

    from fieldcraft.kernels.octree import Grid, max_weights

    config.check()
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    model, meta = load_model(out_dir, device=device)
    if model.ndc:
        raise FieldcraftError(f"{out_dir}: baking a forward-facing (NDC) scene is not supported")
    r, b = config.resolution, config.brick
    coarse = r // b
    lo, hi = (t.detach().cpu().double().numpy() for t in model.aabb)
    vs = (hi - lo) / r
    threshold = model.config.grid_threshold
    bricks = _candidate_bricks(model, coarse, model.step_size, threshold)
    stats: dict[str, Any] = {"candidate_bricks": len(bricks)}
    density, features = _densities_and_features(model, _voxel_points(bricks, config, lo, vs), chunk, progress)
    times["density"] = time.perf_counter() - t0
    density[1.0 - np.exp(-density * float(vs.min())) < config.min_alpha] = 0.0
    keep = density.max(1) > 0
    bricks, density, features = bricks[keep], density[keep], features[keep]
    stats["dense_bricks"] = len(bricks)
    stats["dense_voxels"] = int((density > 0).sum())
    views = fitted_views(meta, None, "train")
    k = (config.sh_degree + 1) ** 2
    bg = background_colour(model.config.background).numpy()
    tree = Octree(bricks.astype(np.int32), density.astype(np.float32), np.zeros((len(bricks), b**3, 3, k), np.float32),
                  r, b, np.stack([lo, hi]), config.sh_degree, bg, float(views.near), float(views.far))
    seen = None
    if len(bricks):
        t1 = time.perf_counter()
        scale = visibility_scale(config, views, vs)
        cams = views.cameras
        weights, seen = max_weights(Grid(tree), cams.c2w.cpu().numpy(), cams.fx.cpu().numpy(), cams.fy.cpu().numpy(),
                                    cams.cx.cpu().numpy(), cams.cy.cpu().numpy(), cams.height, cams.width, scale,
                                    dirs=fibonacci_directions(config.directions))
        density[weights < config.prune_weight] = 0.0
        keep = density.max(1) > 0
        bricks, density, features, seen = bricks[keep], density[keep], features[keep], seen[keep]
        stats["visibility_rays_per_pixel"] = scale * scale
        times["visibility"] = time.perf_counter() - t1
    stats["bricks"], stats["voxels"] = len(bricks), int((density > 0).sum())
    t2 = time.perf_counter()
    occupied = density > 0
    sh = np.zeros((len(bricks), b**3, 3, k), np.float32)
    sh[occupied] = _sh_colours(model, features[occupied], None if seen is None else seen[occupied], config, chunk,
                               progress)
    times["colour"] = time.perf_counter() - t2
    source = {"run": str(Path(out_dir).resolve()), "step": meta.get("step"), "fit_seconds": meta.get("seconds"),
              "preset": model.config.preset, "bake": config.to_dict()}
    tree = Octree(bricks.astype(np.int32), density, sh, r, b, np.stack([lo, hi]), config.sh_degree, bg,
                  float(views.near), float(views.far), source)
    stats["seconds"] = {k2: round(v, 2) for k2, v in times.items()}
    return tree, stats
