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

Optionally (``export nerf --finetune-steps N``), :func:`finetune` then optimises the leaf values
(every kept voxel's density and SH coefficients, the structure fixed) on the training images with
the photometric MSE (PlenOctrees sec. 4.3): :class:`OctreeLeaves` renders batches of training rays
with the image formation of ``eval --octree``, differentiably, and Adam updates the voxels
the rays reached (sparse gradients, :class:`~fieldcraft.train.row_sparse_adam.RowSparseAdam`), on the training core (progress, Ctrl-C, atomic writes of the file).

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
from torch import Tensor, nn

from fieldcraft.config import Config
from fieldcraft.encodings.spherical_harmonics import spherical_harmonics
from fieldcraft.errors import FieldcraftError, check
from fieldcraft.fields.radiance import RadianceField
from fieldcraft.io.octree_file import MAX_SH_DEGREE, Octree
from fieldcraft.tasks.nerf.model import NerfModel, background_colour
from fieldcraft.tasks.nerf.outputs import fitted_views, load_model
from fieldcraft.train import Objective, ScheduleConfig


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
    if not isinstance(model.field, RadianceField):
        raise FieldcraftError(f"{out_dir}: baking needs a field with a network (preset {model.config.preset!r} "
                              f"has none; its grid already holds density and SH colour)")
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


# ------------------------------------------------------------------------------------ fine-tuning


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(Config):
    """Fine-tuning a baked grid on the training images (PlenOctrees sec. 4.3). Fields:

    - ``batch_rays``: training rays per step, drawn uniformly from every pixel of every training image.
    - ``lr_density``: Adam learning rate of the densities (per world unit).
    - ``lr_sh``: Adam learning rate of the SH coefficients.
    - ``betas``, ``eps``: Adam's moment decays and epsilon (only voxels a step's rays reach are updated).
    - ``grow``: whether voxels of zero density (in the kept bricks) take part and may gain density
      (False: they stay empty, and a voxel whose density reaches 0 stays empty).
    - ``schedule``: learning-rate factor over the budget (:class:`~fieldcraft.train.ScheduleConfig`).
    - ``seed``: seed of the ray batches.
    """

    type_name = "OctreeFinetune"
    batch_rays: int = 4096
    lr_density: float = 1.0
    lr_sh: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    grow: bool = False
    schedule: ScheduleConfig = dataclasses.field(default_factory=lambda: ScheduleConfig(kind="cosine", final_factor=0.1))
    seed: int = 0

    def check(self) -> None:
        check(self.batch_rays >= 1, f"--finetune-batch must be >= 1, got {self.batch_rays}")
        check(self.lr_density >= 0 and self.lr_sh >= 0 and math.isfinite(self.lr_density + self.lr_sh),
              f"fine-tuning learning rates must be finite and >= 0, got {self.lr_density}, {self.lr_sh}")

    def build(self, leaves: nn.Module) -> torch.optim.Optimizer:
        """Adam over the leaf tensors of :class:`OctreeLeaves`: their gradients are sparse, so only the
        voxels a step's rays reached are updated (:class:`~fieldcraft.train.row_sparse_adam.RowSparseAdam`)."""
        from fieldcraft.train.row_sparse_adam import RowSparseAdam

        groups = [{"params": [leaves.density], "lr": self.lr_density}, {"params": [leaves.sh], "lr": self.lr_sh}]
        return RowSparseAdam(groups, betas=tuple(self.betas), eps=self.eps)


class OctreeLeaves(nn.Module):
    """The leaf values of a baked grid as parameters: ``density [N B^3, 1]`` and ``sh [N B^3, 3 K]``,
    the structure (bricks, box, background, near/far) fixed. :meth:`forward` renders rays with the
    image formation of ``eval --octree`` (:mod:`fieldcraft.render.octree`), differentiably; the
    leaf values of the voxels the rays cross are gathered as embeddings, so their gradients are
    sparse (rows of the voxels reached)."""

    def __init__(self, tree: Octree, device: str | torch.device | None = None) -> None:
        from fieldcraft.render.octree import RaySegments

        super().__init__()
        device = torch.device(device or "cpu")
        self.tree = tree
        n, v = tree.density.shape
        # copies: training never writes into the arrays of ``tree``
        self.density = nn.Parameter(torch.tensor(tree.density, dtype=torch.float32, device=device).reshape(n * v, 1))
        self.sh = nn.Parameter(torch.tensor(tree.sh, dtype=torch.float32, device=device).reshape(n * v, -1))
        self.register_buffer("background", torch.as_tensor(tree.background, dtype=torch.float32, device=device))
        self.segments = RaySegments(tree, str(device))

    def forward(self, origins: Float[Tensor, "m 3"], dirs: Float[Tensor, "m 3"], eps: float = 1e-3,
                dtype: torch.dtype = torch.float32, empty: bool = True) -> dict[str, Tensor]:
        """``rgb [m, 3]`` (over the grid's background), ``opacity [m]``, ``depth [m]`` of rays with unit
        ``dirs`` (:func:`fieldcraft.render.octree.composite_segments`, computed in ``dtype``).
        ``empty=False`` leaves voxels of zero density out (the same render; they get no gradient)."""
        from fieldcraft.render.octree import composite_segments

        ray, voxel, t = self.segments(origins, dirs, self.density.detach().reshape(-1), eps, empty)
        sigma = nn.functional.embedding(voxel, self.density, sparse=True)[:, 0]
        coef = nn.functional.embedding(voxel, self.sh, sparse=True).reshape(len(voxel), 3, -1)
        return composite_segments(sigma, coef, ray, t.to(dtype), dirs, self.tree.sh_degree, self.background, eps,
                                  len(origins))

    @torch.no_grad()
    def octree(self, source: dict[str, Any] | None = None) -> Octree:
        """The grid with the current leaf values (densities clamped at 0)."""
        tree = self.tree
        return dataclasses.replace(tree, density=self.density.clamp(min=0).reshape(tree.density.shape).cpu().numpy(),
                                   sh=self.sh.reshape(tree.sh.shape).cpu().numpy(),
                                   source=tree.source if source is None else source)


def training_rays(views: Any, background: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
    """Every pixel of ``views`` as a ray: origins, unit directions (as the renderer computes them,
    float32) and colours composited on ``background``, each ``[P, 3]``."""
    from fieldcraft.data.scene import composite
    from fieldcraft.render.octree import camera_rays_numpy

    cams = views.cameras
    bg = torch.as_tensor(background, dtype=torch.float32)
    origins, dirs, colours = [], [], []
    for k in range(len(views)):
        o, d = camera_rays_numpy(cams.c2w[k].cpu().double().numpy(), float(cams.fx[k]), float(cams.fy[k]),
                                 float(cams.cx[k]), float(cams.cy[k]), cams.height, cams.width)
        origins.append(torch.from_numpy(o).float())
        dirs.append(torch.from_numpy(d).float())
        colours.append(composite(views.image(k).float(), bg).reshape(-1, 3))
    return torch.cat(origins), torch.cat(dirs), torch.cat(colours)


class Photometric(Objective):
    """Mean squared error between rendered and observed colours of a random batch of training rays;
    after each step, densities are clamped at 0. Voxels of zero density are rendered (and may gain
    density) only with ``config.grow``."""

    def __init__(self, leaves: OctreeLeaves, rays: tuple[Tensor, Tensor, Tensor], config: FinetuneConfig,
                 eps: float = 1e-3) -> None:
        device = leaves.density.device
        self.leaves, self.config, self.render_eps = leaves, config, eps
        self.origins, self.dirs, self.colours = (r.to(device) for r in rays)
        self.generators = {"rays": torch.Generator().manual_seed(config.seed)}

    def loss(self, model: nn.Module, step: int) -> tuple[Tensor, dict[str, float]]:
        from fieldcraft.metrics import psnr_from_mse

        idx = torch.randint(len(self.origins), (self.config.batch_rays,), generator=self.generators["rays"])
        idx = idx.to(self.origins.device)
        out = model(self.origins[idx], self.dirs[idx], self.render_eps, empty=self.config.grow)
        mse = ((out["rgb"] - self.colours[idx]) ** 2).mean()
        return mse, {"psnr": psnr_from_mse(float(mse.detach()))}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        self.leaves.density.clamp_(min=0)


def finetune(tree: Octree, views: Any, out: str | Path, config: FinetuneConfig, budget: Any,
             device: str | None = None, progress: bool = True, checkpoint_seconds: float = 60.0
             ) -> tuple[Octree, dict[str, Any]]:
    """Optimise the leaf values of ``tree`` on the training ``views`` (module docstring of
    :mod:`fieldcraft.render.octree` for the image formation) under ``budget`` (a
    :class:`~fieldcraft.train.Budget`) on the training core: Adam, progress bar, and the file
    ``out`` written atomically at the start, every ``checkpoint_seconds``, at the end and when
    Ctrl-C / SIGTERM stops it. Returns the tuned grid and a summary (steps, seconds, ``stopped``,
    training PSNR of the first and last steps' batches)."""
    from fieldcraft.io.octree_file import save_octree
    from fieldcraft.train import Trainer

    config.check()
    check(len(tree.bricks) > 0, f"{out}: the octree is empty: nothing to fine-tune")
    leaves = OctreeLeaves(tree, device)
    objective = Photometric(leaves, training_rays(views, tree.background), config)
    settings = {"data": str(views.source), "views": len(views), **config.to_dict()}

    def source(step: int, seconds: float, stopped: str | None = None) -> dict[str, Any]:
        return {**tree.source, "finetune": {**settings, "steps": step, "seconds": round(seconds, 2),
                                            **({"stopped": stopped} if stopped else {})}}

    def write(trainer: Trainer, step: int, seconds: float) -> None:
        save_octree(out, leaves.octree(source(step, seconds)))

    trainer = Trainer(leaves, objective, config, budget, checkpoint=write, checkpoint_seconds=checkpoint_seconds,
                      description="finetune octree", progress=progress)
    outcome = trainer.run()
    tuned = leaves.octree(source(outcome.step, outcome.seconds, outcome.stopped))
    if outcome.stopped:
        save_octree(out, tuned)  # the last write, now naming the signal
    psnrs = outcome.history.column("psnr")
    k = max(1, min(10, len(psnrs) // 4))
    summary = {"steps": outcome.step, "seconds": outcome.seconds, "stopped": outcome.stopped,
               "train_psnr_first": float(np.mean(psnrs[:k])) if psnrs else math.nan,
               "train_psnr_last": float(np.mean(psnrs[-k:])) if psnrs else math.nan}
    return tuned, summary


def export_octree(out_dir: str | Path, out: str | Path, config: BakeConfig = BakeConfig(),
                  finetune_config: FinetuneConfig = FinetuneConfig(), finetune_budget: Any = None,
                  start: str | Path | None = None, data_path: str | Path | None = None, device: str | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """``fieldcraft export nerf --format octree``: bake the run ``out_dir`` (or, with ``start``, read
    that baked file instead), fine-tune it on the run's training images (or those of ``data_path``)
    when ``finetune_budget`` (a :class:`~fieldcraft.train.Budget`) is given, and write ``out``.
    Returns a summary: ``bricks``, ``voxels``, ``path``, and ``finetune`` (see :func:`finetune`)."""
    from fieldcraft.io.octree_file import load_octree, save_octree
    from fieldcraft.tasks.nerf.baked import run_header

    if finetune_budget is None:
        check(start is None and data_path is None,
              "--octree and --data choose what to fine-tune on: give --finetune-steps or --finetune-seconds")
    if finetune_budget is not None:
        finetune_config.check()
        meta = run_header(out_dir)
        views = fitted_views(meta, data_path, "train")  # before baking: a missing dataset fails fast
        if views.ndc:
            raise FieldcraftError(f"{views.source}: a forward-facing (NDC) dataset cannot be rendered from an octree")
        if views.cameras.distorted:
            raise FieldcraftError(f"{views.source}: octree fine-tuning supports pinhole cameras only (no lens distortion)")
    if start is not None:
        tree = load_octree(start)
        stats: dict[str, Any] = {"bricks": len(tree.bricks), "voxels": int((tree.density > 0).sum())}
    else:
        tree, stats = bake(out_dir, config, device=device, progress=progress)
    if finetune_budget is None:
        save_octree(out, tree)
    else:
        tree, stats["finetune"] = finetune(tree, views, out, finetune_config, finetune_budget, device=device,
                                           progress=progress)
        stats["voxels"] = int((tree.density > 0).sum())
    stats["path"] = Path(out)
    return stats
