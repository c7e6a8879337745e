"""Shapes as fields: signed distance (SIREN eikonal or DeepSDF regression), occupancy (BCE)
and a DeepSDF auto-decoder over K shapes.

Task = samples of a shape (drawn once) + field + loss; the training core
(:mod:`fieldcraft.train`) does the rest. Everything runs in the shape's normalised coordinates
(:mod:`fieldcraft.geometry.mesh`, bounding box into ``[-(1 - margin), 1 - margin]^3``); the
:class:`~fieldcraft.geometry.mesh.Normalisation` is stored in the checkpoint so exports go back
to input coordinates (:mod:`fieldcraft.geometry.shape_field`).

Losses (``f`` the field, ``x_s`` surface points with normals ``n``, ``x_o`` off-surface points,
``s`` exact signed distances, negative inside):

- ``eikonal`` (SIREN, Sitzmann et al. 2020, eq. 6): ``w_s |f(x_s)| + w_n (1 - cos(grad f(x_s), n))
  + w_o exp(-alpha |f(x_o)|) + w_e | |grad f| - 1 |`` (weights 3000, 100, 100, 50; alpha = 100),
  needs only oriented points. ``grad f`` is taken with ``create_graph=True``, so the loss is
  differentiated through the spatial gradient: this is the second-derivative path. Grid
  encodings then run the pure-PyTorch reference :func:`~fieldcraft.encodings.grid.grid_encode_reference`
  (the fast kernel differentiates the table only; the dispatch selects the reference whenever
  the points require grad).
- ``regression`` (DeepSDF, Park et al. 2019, eq. 4): ``|clamp(f(x), delta) - clamp(s, delta)|`` on
  precomputed exact signed distances of near-surface and uniform samples; first order only.
- ``occupancy`` (Occupancy Networks): binary cross-entropy between ``sigmoid(f(x))`` and
  ``[s < 0]``; the surface is ``f = 0`` (probability 1/2).

Samples are drawn once per run from the seed (:func:`make_samples`: BVH exact distances and
winding-number signs, :mod:`fieldcraft.geometry`, on the CPU), then moved to the run's device;
a resumed run draws the same samples.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn

from fieldcraft.config import Config
from fieldcraft.encodings import FrequencyEncodingConfig, HashGridConfig
from fieldcraft.errors import FieldcraftError, check
from fieldcraft.fields import Field, FieldConfig
from fieldcraft.geometry.bvh import build_bvh, closest_points, winding_numbers
from fieldcraft.geometry.mesh import Normalisation, Shape, normalise
from fieldcraft.geometry.sampling import near_surface_samples, surface_samples, uniform_samples
from fieldcraft.geometry.shape_field import SHAPE_TASK, export_shape_mesh, field_function, load_shape_module
from fieldcraft.geometry.surface import SHAPE_LOSSES, extract_surface, mise_base
from fieldcraft.io.records import write_json
from fieldcraft.networks import MLPConfig
from fieldcraft.train import Budget, Objective, OptimizerConfig, Run, ScheduleConfig
from fieldcraft.train.distributed import shard

TASK = SHAPE_TASK  # "sdf": 'fit sdf' and 'fit occupancy' (checkpoint prefix "field")
AUTODECODER_TASK = "autodecoder"  # checkpoint prefix "model"
LOSSES = SHAPE_LOSSES  # regression, eikonal, occupancy
GRADIENTS = ("analytic", "numerical")
DEFAULT_BUDGET = Budget(seconds=120.0)


def sdf_field_config(kind: str = "hash") -> FieldConfig:
    """Field presets for shapes: ``hash`` (Instant-NGP SDF: 16 levels x 2 features, 2^19 rows,
    16..1024 cells, 64 x 2 ReLU MLP), ``siren`` (identity input, 256 x 3 sine, omega 30)."""
    if kind == "hash":
        return FieldConfig(in_dim=3, out_dim=1,
                           encoding=HashGridConfig(n_levels=16, n_features=2, log2_table_size=19, base_resolution=16,
                                                   max_resolution=1024),
                           network=MLPConfig(hidden_width=64, hidden_layers=2, activation="relu"))
    if kind == "siren":
        from fieldcraft.encodings import IdentityEncodingConfig

        return FieldConfig(in_dim=3, out_dim=1, encoding=IdentityEncodingConfig(),
                           network=MLPConfig(hidden_width=256, hidden_layers=3, activation="sine"))
    raise FieldcraftError(f"unknown shape field preset {kind!r} (use hash|siren)")


@dataclasses.dataclass(frozen=True)
class SDFTaskConfig(Config):
    """Everything that defines a shape fit (saved in the checkpoint). Fields:

    - ``loss``: ``regression`` | ``eikonal`` | ``occupancy`` (see module docstring).
    - ``field``: the field (3 -> 1).
    - ``margin``: normalisation margin, the shape spans ``[-(1 - margin), 1 - margin]``.
    - ``n_surface``: surface samples (with normals) drawn once.
    - ``near_sigmas``: standard deviations of the Gaussian offsets of near-surface samples
      (normalised units); ``n_surface`` samples per sigma.
    - ``n_uniform``: uniform samples in ``[-1, 1]^3``.
    - ``batch_size``: points per step (regression/occupancy), or surface points per step
      (eikonal, with as many off-surface points).
    - ``lr``: Adam learning rate; ``lr_decay_to``: final fraction of ``lr`` reached by a
      cosine schedule over the budget (1 disables it).
    - ``clamp``: DeepSDF clamping distance delta (normalised units).
    - ``w_surface``, ``w_normal``, ``w_offsurface``, ``w_eikonal``, ``offsurface_alpha``: SIREN weights.
    - ``gradient``: how the eikonal loss takes ``grad f``: ``analytic`` (autograd with
      ``create_graph``, the second-derivative path) or ``numerical`` (central differences with
      step ``gradient_eps``, Neuralangelo: six more evaluations per point, first-order autograd
      only, so grid encodings keep their fast kernel).
    - ``seed``: seed of sampling, initialisation and batches.
    """

    type_name = "SDFTask"
    loss: str = "regression"
    field: FieldConfig = dataclasses.field(default_factory=sdf_field_config)
    margin: float = 0.05
    n_surface: int = 200_000
    near_sigmas: tuple[float, ...] = (0.02, 0.003)
    n_uniform: int = 50_000
    batch_size: int = 16384
    lr: float = 1e-2
    lr_decay_to: float = 0.1
    clamp: float = 0.1
    w_surface: float = 3000.0
    w_normal: float = 100.0
    w_offsurface: float = 100.0
    w_eikonal: float = 50.0
    offsurface_alpha: float = 100.0
    gradient: str = "analytic"
    gradient_eps: float = 2e-3
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.loss in LOSSES, f"unknown loss {self.loss!r} (use {'|'.join(LOSSES)})")
        check(self.field.in_dim == 3 and self.field.out_dim == 1, "shape fields map 3 -> 1")
        check(self.gradient in GRADIENTS, f"unknown gradient {self.gradient!r} (use {'|'.join(GRADIENTS)})")
        check(self.gradient_eps > 0, f"gradient_eps must be positive, got {self.gradient_eps}")
        check(self.batch_size > 0, f"--batch-size must be positive, got {self.batch_size}")

    def optimizer(self) -> OptimizerConfig:
        """Adam at ``lr``, cosine decay to ``lr * lr_decay_to`` over the budget (steps or seconds).

        >>> s = SDFTaskConfig().optimizer().schedule
        >>> s.factor(step=0, progress=0.0), round(s.factor(step=50, progress=0.5), 6), s.factor(step=99, progress=1.0)
        (1.0, 0.55, 0.1)
        """
        return OptimizerConfig(lr=self.lr, schedule=ScheduleConfig(kind="cosine", final_factor=self.lr_decay_to))


def default_task_config(loss: str) -> SDFTaskConfig:
    """Defaults per loss: the eikonal fit uses smaller batches (its double backward runs the
    PyTorch reference grid) and a lower learning rate, and needs no distance samples."""
    check(loss in LOSSES, f"unknown loss {loss!r} (use {'|'.join(LOSSES)})")
    if loss == "eikonal":
        return SDFTaskConfig(loss=loss, batch_size=2048, lr=5e-3, n_uniform=0, near_sigmas=())
    return SDFTaskConfig(loss=loss)


@dataclasses.dataclass
class Samples:
    """Training samples in normalised coordinates (float32 tensors on one device).

    ``points [n, 3]`` with ``sdf [n]`` (signed distances, negative inside; NaN when unknown)
    and ``surface [m, 3]`` with ``normals [m, 3]``. ``seconds``: time spent sampling.
    """

    points: Float[Tensor, "n 3"]
    sdf: Float[Tensor, " n"]
    surface: Float[Tensor, "m 3"]
    normals: Float[Tensor, "m 3"]
    seconds: float = 0.0

    def to(self, device: str | torch.device) -> Samples:
        return Samples(self.points.to(device), self.sdf.to(device), self.surface.to(device), self.normals.to(device),
                       self.seconds)

    def __len__(self) -> int:
        return len(self.points) + len(self.surface)


def make_samples(shape: Shape, config: SDFTaskConfig, need_sdf: bool = True) -> Samples:
    """Draw the training samples of a normalised shape once, from ``config.seed`` (on the CPU).

    Meshes: surface samples by area with face normals; near-surface and uniform points get exact
    signed distances (BVH closest point, winding-number sign). Oriented point clouds: surface =
    a random subset of the points; distances (regression/occupancy only) are approximated by the
    distance to the nearest point signed by its normal (``(x - p) . n_p``).
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    if shape.is_mesh:
        surf, nrm = surface_samples(shape.vertices, shape.faces, config.n_surface, rng)
    else:
        idx = rng.choice(len(shape.vertices), size=min(config.n_surface, len(shape.vertices)), replace=False)
        surf, nrm = shape.vertices[idx], shape.normals[idx]
    pts = [near_surface_samples(surf, s, rng) for s in config.near_sigmas]
    pts.append(uniform_samples(config.n_uniform, 1.0, rng))
    points = np.concatenate(pts) if pts else np.zeros((0, 3))
    if need_sdf and len(points):
        if shape.is_mesh:
            bvh = build_bvh(shape.vertices, shape.faces)
            dist, _, _ = closest_points(bvh, points)
            sdf = np.where(winding_numbers(bvh, points) > 0.5, -dist, dist)
        else:
            sdf = point_cloud_sdf(shape.vertices, shape.normals, points)
    else:
        sdf = np.full(len(points), np.nan)
    f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return Samples(f32(points), f32(sdf), f32(surf), f32(nrm), time.perf_counter() - t0)


def point_cloud_sdf(points: np.ndarray, normals: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Approximate signed distance to an oriented point cloud: distance to the nearest point,
    signed by that point's normal."""
    from scipy.spatial import cKDTree

    d, i = cKDTree(points).query(queries, workers=-1)
    side = np.sum((queries - points[i]) * normals[i], axis=1)
    return np.where(side < 0, -d, d)


def spatial_gradient(field: Callable[[Tensor], Tensor], x: Float[Tensor, "n 3"], create_graph: bool = True
                     ) -> tuple[Float[Tensor, " n"], Float[Tensor, "n 3"]]:
    """``f(x)`` and ``grad_x f(x)``; with ``create_graph`` the gradient is itself differentiable
    (the eikonal term's second-derivative path; grid encodings take the PyTorch reference)."""
    x = x.detach().requires_grad_(True)
    y = field(x).reshape(-1)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=create_graph)
    return y, g


def numerical_gradient(field: Callable[[Tensor], Tensor], x: Float[Tensor, "n 3"], eps: float
                       ) -> tuple[Float[Tensor, " n"], Float[Tensor, "n 3"]]:
    """``f(x)`` and the central-difference gradient ``(f(x + eps e_i) - f(x - eps e_i)) / (2 eps)``
    in one batched call of ``7 n`` points; differentiable in the field's parameters (first order).

    >>> f = lambda p: (p**2).sum(-1)
    >>> numerical_gradient(f, torch.tensor([[1.0, 2.0, 3.0]]), 1e-2)[1]
    tensor([[2.0000, 4.0000, 6.0000]])
    """
    n = len(x)
    step = torch.eye(3, dtype=x.dtype, device=x.device) * eps  # [3, 3]
    shifted = torch.cat([x, (x[None] + step[:, None]).reshape(-1, 3), (x[None] - step[:, None]).reshape(-1, 3)])
    ys = field(shifted).reshape(-1)
    plus, minus = ys[n:4 * n].reshape(3, n), ys[4 * n:].reshape(3, n)
    return ys[:n], ((plus - minus) / (2 * eps)).T


GRADIENTS = ("analytic", "numerical")


def eikonal_loss(field: Callable[[Tensor], Tensor], surface: Tensor, normals: Tensor, off: Tensor,
                 config: SDFTaskConfig) -> tuple[Tensor, dict[str, float]]:
    """SIREN's SDF loss (module docstring) on a batch of surface and off-surface points, with
    ``grad f`` taken as ``config.gradient`` says."""
    x = torch.cat([surface, off])
    if config.gradient == "numerical":
        y, g = numerical_gradient(field, x, config.gradient_eps)
    else:
        y, g = spatial_gradient(field, x, create_graph=True)
    m = len(surface)
    ys, yo = y[:m], y[m:]
    gnorm = g.norm(dim=-1)
    l_s = ys.abs().mean()
    l_n = (1 - torch.nn.functional.cosine_similarity(g[:m], normals, dim=-1)).mean()
    l_o = torch.exp(-config.offsurface_alpha * yo.abs()).mean()
    l_e = (gnorm - 1).abs().mean()
    loss = config.w_surface * l_s + config.w_normal * l_n + config.w_offsurface * l_o + config.w_eikonal * l_e
    return loss, {"surface": float(l_s.detach()), "normal": float(l_n.detach()), "eikonal": float(l_e.detach())}


def regression_loss(pred: Tensor, sdf: Tensor, clamp: float) -> Tensor:
    """DeepSDF's clamped L1: ``mean |clamp(pred, delta) - clamp(sdf, delta)|``.

    >>> round(float(regression_loss(torch.tensor([0.5, 0.01]), torch.tensor([0.2, 0.0]), 0.1)), 6)  # (0 + 0.01) / 2
    0.005
    """
    return (pred.clamp(-clamp, clamp) - sdf.clamp(-clamp, clamp)).abs().mean()


def occupancy_loss(logits: Tensor, sdf: Tensor) -> Tensor:
    """Binary cross-entropy of ``sigmoid(logits)`` against inside = ``sdf < 0``."""
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, (sdf < 0).to(logits.dtype))


class SDFObjective(Objective):
    """One shape's loss (``config.loss``) on random batches of its :class:`Samples` (which live on
    the run's device); batch indices and eikonal off-surface points come from the registered
    ``batches`` generator (CPU, seeded ``seed + 1``), so a resumed run draws the same batches."""

    def __init__(self, config: SDFTaskConfig, samples: Samples) -> None:
        if config.loss == "eikonal":
            check(len(samples.surface) > 0, "the eikonal loss needs surface samples")
        else:
            check(len(samples.points) > 0 and bool(torch.isfinite(samples.sdf).all()),
                  "regression/occupancy need signed distances of all samples")
        self.config, self.samples = config, samples
        self.generators = {"batches": torch.Generator(device="cpu").manual_seed(config.seed + 1)}

    def loss(self, model: nn.Module, step: int) -> tuple[Tensor, dict[str, float]]:
        c, s, gen = self.config, self.samples, self.generators["batches"]
        b, device = c.batch_size, s.surface.device
        part = shard(b)  # this rank's part of the global batch (all of it in one process); its loss' share
        if c.loss == "eikonal":
            js = torch.randint(len(s.surface), (b,), generator=gen).to(device)[part.slice]
            off = (torch.rand(b, 3, generator=gen) * 2 - 1).to(device)[part.slice]
            loss, values = eikonal_loss(model, s.surface[js], s.normals[js], off, c)
            return loss * part.fraction, values
        j = torch.randint(len(s.points), (b,), generator=gen).to(device)[part.slice]
        pred = model(s.points[j]).reshape(-1)
        loss = regression_loss(pred, s.sdf[j], c.clamp) if c.loss == "regression" else occupancy_loss(pred, s.sdf[j])
        return loss * part.fraction, {}


# --------------------------------------------------------------------------------------------
# auto-decoder (DeepSDF): one decoder, one latent code per shape


@dataclasses.dataclass(frozen=True)
class AutoDecoderConfig(Config):
    """Everything that defines an auto-decoder fit (saved in the checkpoint). Fields:

    - ``latent_dim``: size of each shape's code (DeepSDF: 256).
    - ``latent_init_std``: codes start ``N(0, std^2)`` (DeepSDF: 0.01).
    - ``latent_reg``: weight of ``mean ||z||^2`` (DeepSDF: 1e-4, from a N(0, 0.01^2) prior).
    - ``encoding``: positional encoding of the points (concatenated with the code).
    - ``network``: decoder MLP ((encoding + latent) -> 1).
    - ``task``: sampling, clamping, learning rate, batch size, seed (its ``loss`` must be
      ``regression``; the learning rate is constant, ``lr_decay_to`` is not used).
    """

    type_name = "AutoDecoder"
    latent_dim: int = 32
    latent_init_std: float = 0.01
    latent_reg: float = 1e-4
    encoding: FrequencyEncodingConfig = dataclasses.field(default_factory=lambda: FrequencyEncodingConfig(n_frequencies=4))
    network: MLPConfig = dataclasses.field(default_factory=lambda: MLPConfig(hidden_width=128, hidden_layers=4))
    task: SDFTaskConfig = dataclasses.field(default_factory=lambda: SDFTaskConfig(
        n_surface=50_000, n_uniform=20_000, batch_size=8192, lr=2e-3, lr_decay_to=0.2))

    def __post_init__(self) -> None:
        check(self.task.loss == "regression", "the auto-decoder uses the regression loss")

    def optimizer(self) -> OptimizerConfig:
        """Adam at ``task.lr``, constant."""
        return OptimizerConfig(lr=self.task.lr)


class AutoDecoder(nn.Module):
    """``f(x, z) = MLP([encoding(x), z])`` with a table of ``K`` latent codes ``latents [K, D]``."""

    def __init__(self, config: AutoDecoderConfig, n_shapes: int) -> None:
        super().__init__()
        self.config = config
        self.encoding = config.encoding.build(3)
        self.network = config.network.build(self.encoding.out_dim + config.latent_dim, 1)
        self.latents = nn.Parameter(torch.randn(n_shapes, config.latent_dim) * config.latent_init_std)

    def forward(self, x: Float[Tensor, "n 3"], z: Float[Tensor, "n D"]) -> Float[Tensor, "n 1"]:
        return self.network(torch.cat([self.encoding(x), z], dim=-1))


class AutoDecoderObjective(Objective):
    """Joint optimisation of the decoder and the K codes (DeepSDF eq. 9): the regression loss
    on ``batch_size / K`` samples of every shape plus ``latent_reg * mean_k ||z_k||^2``."""

    def __init__(self, config: AutoDecoderConfig, samples: list[Samples]) -> None:
        check(len(samples) >= 1, "the auto-decoder needs at least one shape")
        self.config, self.samples = config, samples
        self.generators = {"batches": torch.Generator(device="cpu").manual_seed(config.task.seed + 1)}

    def loss(self, model: nn.Module, step: int) -> tuple[Tensor, dict[str, float]]:
        c, gen = self.config.task, self.generators["batches"]
        per = max(1, c.batch_size // len(self.samples))
        device = self.samples[0].points.device
        xs, ss = [], []
        for s in self.samples:
            j = torch.randint(len(s.points), (per,), generator=gen).to(device)
            xs.append(s.points[j])
            ss.append(s.sdf[j])
        k = torch.arange(len(self.samples), device=device).repeat_interleave(per)
        pred = model(torch.cat(xs), model.latents[k]).reshape(-1)
        data = regression_loss(pred, torch.cat(ss), c.clamp)
        reg = model.latents.square().sum(-1).mean()
        return data + self.config.latent_reg * reg, {"data": float(data.detach()),
                                                      "latent_norm": float(reg.detach().sqrt())}


def interpolate_latents(za: Float[Tensor, " D"], zb: Float[Tensor, " D"], n: int) -> list[Tensor]:
    """``n`` codes ``(1 - t) za + t zb`` for ``t = 0, 1/(n-1), ..., 1``.

    >>> [z.tolist() for z in interpolate_latents(torch.zeros(1), torch.ones(1), 3)]
    [[0.0], [0.5], [1.0]]
    """
    return [torch.lerp(za, zb, t) for t in np.linspace(0.0, 1.0, n).tolist()]


def prepare_shape(shape: Shape, config: SDFTaskConfig) -> tuple[Shape, Normalisation]:
    """Normalise a loaded shape with the task's margin."""
    return normalise(shape, config.margin)


# --------------------------------------------------------------------------------------------
# checkpoints -> fields, meshes, renders


def load_shape_field(directory: str | Path, device: str | torch.device | None = None
                     ) -> tuple[Field, SDFTaskConfig, Normalisation, dict[str, Any]]:
    """Field (on ``device``, eval mode), task config, normalisation and header of a checkpoint
    written by :func:`fit_shape`."""
    field, _, norm, meta = load_shape_module(directory, device)
    config = Config.from_dict(meta["config"])
    check(isinstance(config, SDFTaskConfig), f"{directory}: the checkpoint's config is not an SDFTask")
    return field, config, norm, meta


def extract_mesh(field: nn.Module, loss: str, resolution: int, mise: bool = True, base: int = 32
                 ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Mesh of the field's surface in normalised coordinates (see
    :func:`~fieldcraft.geometry.surface.extract_surface`), the field evaluated on its device."""
    return extract_surface(field_function(field), loss, resolution, mise, base)


def render_views(field: nn.Module, out_dir: str | Path, views: int = 4, size: int = 256) -> list[Path]:
    """Sphere-traced ``view_XX.png`` (8-bit RGB, ``size x size``) of an SDF field from ``views``
    orbit cameras (:func:`~fieldcraft.render.sphere_tracing.orbit_cameras`), traced on the field's device."""
    from fieldcraft.io.images import write_png
    from fieldcraft.render.sphere_tracing import orbit_cameras, render_sdf

    device = next(field.parameters()).device
    sdf = lambda x: field(x).reshape(-1)
    paths = []
    for k, c2w in enumerate(orbit_cameras(views)):
        img = render_sdf(sdf, c2w, size, size, device=device)
        paths.append(write_png(Path(out_dir) / f"view_{k:02d}.png", img.astype(np.float32) / 255.0, bits=8))
    return paths


def render_shape(directory: str | Path, out_dir: str | Path, views: int = 4, size: int = 256,
                 device: str | torch.device | None = None) -> list[Path]:
    """:func:`render_views` of an SDF checkpoint (not an occupancy fit) on ``device``."""
    field, config, _, _ = load_shape_field(directory, device)
    if config.loss == "occupancy":
        raise FieldcraftError(f"{directory}: sphere tracing needs a signed distance field (this is an occupancy fit)")
    return render_views(field, out_dir, views, size)


# --------------------------------------------------------------------------------------------
# pipelines: fit -> checkpoint -> meshes / renders / metrics


def _check_sources(run: Run, sources: list[str]) -> None:
    """On resume: the same number of shapes; a note (stderr) when their paths differ from the stored ones."""
    if not run.resumed:
        return
    stored = run.meta.get("sources") or ([run.meta["source"]] if "source" in run.meta else None)
    if stored is None:
        return
    check(len(stored) == len(sources), f"{run.out}: the run fits {len(stored)} shape(s), {len(sources)} given")
    moved = [f"{b} (stored {a})" for a, b in zip(stored, sources) if Path(a).resolve() != Path(b).resolve()]
    if moved:
        print(f"fieldcraft: --resume fits {', '.join(moved)}; the samples are drawn from these files",
              file=sys.stderr, flush=True)


def _final_loss(history) -> float | None:
    losses = history.column("loss")
    return losses[-1] if losses else None


def fit_shape(source: str | Path, out: str | Path, config: SDFTaskConfig, budget: Budget | None = None, *,
              resume: bool = False, progress: bool = True, device: str | None = None, given: tuple[str, ...] = (),
              overwrite: bool = False, resolution: int = 256, render: bool = True, evaluate: bool = True,
              checkpoint_seconds: float = 60.0) -> dict[str, Any]:
    """Fit a shape field, then write ``checkpoint.safetensors``, ``history.jsonl``, ``mesh.ply``
    (input coordinates, MISE at ``resolution``), ``renders/view_XX.png`` (SDFs, with ``render``)
    and ``metrics.json`` (with mesh metrics against the input for mesh inputs and ``evaluate``)
    to ``out``, also when a signal stopped the fit (``stopped`` names it). Returns the metrics.
    A field without a surface in the cube yet (an early stop) gets no ``mesh.ply``: ``mesh_error`` says so.

    ``budget`` None: 120 s, or the stored budget when resuming. ``given``: the option names the
    user set (on resume the stored config is kept and differing given ones reported)."""
    from fieldcraft.geometry.mesh import load_shape
    from fieldcraft.geometry.metrics import mesh_metrics
    from fieldcraft.runtime import default_device

    run = Run.open(out, TASK, config, resume=resume, given=given, budget=budget, default_budget=DEFAULT_BUDGET,
                   device=device or default_device(), overwrite=overwrite)
    config = run.config  # type: ignore[assignment]
    shape = load_shape(source)
    if config.loss == "occupancy" and not shape.is_mesh:
        raise FieldcraftError(f"{source}: occupancy fitting needs a mesh (inside/outside), got a point cloud")
    _check_sources(run, [str(source)])
    normed, norm = prepare_shape(shape, config)
    samples = make_samples(normed, config, need_sdf=config.loss != "eikonal")
    torch.manual_seed(config.seed)
    field = config.field.build().to(run.device)
    objective = SDFObjective(config, samples.to(run.device))
    meta = {"normalisation": norm.to_dict(), "source": str(source), "sampling_seconds": samples.seconds}
    verb = "fit occupancy" if config.loss == "occupancy" else f"fit sdf ({config.loss})"
    trainer = run.trainer(field, objective, config.optimizer(), meta=meta, prefix="field", log_every=10,
                          checkpoint_seconds=checkpoint_seconds, description=verb, progress=progress)
    outcome = trainer.run()
    field.eval()
    metrics: dict[str, Any] = {"loss": config.loss, "steps": outcome.step, "fit_seconds": outcome.seconds,
                               "final_loss": _final_loss(outcome.history), "sampling_seconds": samples.seconds,
                               "samples": len(samples), "samples_per_second": len(samples) / max(samples.seconds, 1e-9)}
    try:
        mesh_stats = export_shape_mesh(run.out, run.out / "mesh.ply", resolution, mise=True, device=str(run.device))
        metrics.update({"extraction_seconds": mesh_stats["seconds"], "resolution": resolution})
    except FieldcraftError as exc:  # e.g. no zero crossing yet: the checkpoint and metrics are still written
        (run.out / "mesh.ply").unlink(missing_ok=True)
        metrics["mesh_error"] = str(exc)
        print(f"fieldcraft: no mesh.ply: {exc}", file=sys.stderr, flush=True)
    if render and config.loss != "occupancy":
        render_views(field, run.out / "renders")
    if evaluate and shape.is_mesh and "mesh_error" not in metrics:
        import trimesh

        pred = trimesh.load(str(run.out / "mesh.ply"), process=False)
        metrics.update(mesh_metrics((np.asarray(pred.vertices), np.asarray(pred.faces)), (shape.vertices, shape.faces)))
    metrics.update({"device": str(run.device), "stopped": outcome.stopped})
    write_json(run.out / "metrics.json", metrics)
    return metrics


def fit_autodecoder(sources: list, out: str | Path, config: AutoDecoderConfig, budget: Budget | None = None, *,
                    resume: bool = False, progress: bool = True, device: str | None = None,
                    given: tuple[str, ...] = (), overwrite: bool = False, interpolate: int = 5,
                    resolution: int = 128, checkpoint_seconds: float = 60.0) -> dict[str, Any]:
    """Fit one decoder + K codes, then write ``shape_K.ply`` for every code (input coordinates
    of shape K) and ``interp_XX.ply`` along the line between the first two codes (normalised
    coordinates: the interpolants are in the unit cube), ``metrics.json`` and the checkpoint to
    ``out``, also when a signal stopped the fit. Returns the metrics (``meshes``: files written).

    ``budget`` None: 120 s, or the stored budget when resuming."""
    from fieldcraft.geometry.marching_cubes import clean_mesh, vertex_normals
    from fieldcraft.geometry.mesh import load_shape, save_mesh
    from fieldcraft.geometry.mise import extract_mise
    from fieldcraft.runtime import default_device

    check(len(sources) >= 1, "the auto-decoder needs at least one shape")
    check(interpolate >= 0, f"--interpolate must be >= 0, got {interpolate}")
    run = Run.open(out, AUTODECODER_TASK, config, resume=resume, given=given, budget=budget,
                   default_budget=DEFAULT_BUDGET, device=device or default_device(), overwrite=overwrite)
    config = run.config  # type: ignore[assignment]
    sources = [str(s) for s in sources]
    _check_sources(run, sources)
    shapes = [load_shape(src) for src in sources]  # every file checked before any sampling
    samples, norms = [], []
    t0 = time.perf_counter()
    for shape in shapes:
        normed, norm = prepare_shape(shape, config.task)
        samples.append(make_samples(normed, config.task).to(run.device))
        norms.append(norm)
    sampling = time.perf_counter() - t0
    torch.manual_seed(config.task.seed)
    model = AutoDecoder(config, len(sources)).to(run.device)
    meta = {"sources": sources, "normalisations": [n.to_dict() for n in norms], "sampling_seconds": sampling}
    trainer = run.trainer(model, AutoDecoderObjective(config, samples), config.optimizer(), meta=meta, prefix="model",
                          log_every=10, checkpoint_seconds=checkpoint_seconds, description="fit autodecoder",
                          progress=progress)
    outcome = trainer.run()
    model.eval()
    codes = [model.latents[k].detach() for k in range(len(sources))]
    named: list[tuple[str, Tensor, Normalisation | None]] = [(f"shape_{k}.ply", z, norms[k]) for k, z in enumerate(codes)]
    if len(codes) >= 2:
        named += [(f"interp_{i:02d}.ply", z, None)
                  for i, z in enumerate(interpolate_latents(codes[0], codes[1], interpolate))]
    files = []
    for name, z, norm in named:
        fn = field_function(model, latent=z[None])
        v, f, _ = extract_mise(fn, resolution, 0.0, 1.0, "below", base=mise_base(resolution), lipschitz=2.0)
        v, f = clean_mesh(v, f)
        if len(f) == 0:
            continue
        if norm is not None:
            v = norm.inverse(v)
        save_mesh(run.out / name, v, f, vertex_normals(v, f))
        files.append(name)
    metrics = {"steps": outcome.step, "fit_seconds": outcome.seconds, "final_loss": _final_loss(outcome.history),
               "sampling_seconds": sampling, "meshes": files, "device": str(run.device), "stopped": outcome.stopped}
    write_json(run.out / "metrics.json", metrics)
    return metrics
