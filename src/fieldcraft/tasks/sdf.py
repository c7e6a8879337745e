"""Shapes as fields: signed distance (SIREN eikonal or DeepSDF regression), occupancy (BCE)
and a DeepSDF auto-decoder over K shapes.

Everything runs in the shape's normalised coordinates (:mod:`fieldcraft.geometry.mesh`,
bounding box into ``[-(1 - margin), 1 - margin]^3``); the :class:`Normalisation` is stored in
the checkpoint so exports go back to input coordinates.

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

Samples are drawn once before fitting (:func:`make_samples`), on the GPU-free path: BVH exact
distances and winding-number signs (:mod:`fieldcraft.geometry`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
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
from fieldcraft.networks import MLPConfig
from fieldcraft.tasks.shape_export import TASK_NAME, export_shape_mesh, extract_surface

LOSSES = ("regression", "eikonal", "occupancy")


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
    """Fields:

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


def default_task_config(loss: str) -> SDFTaskConfig:
    """Defaults per loss: the eikonal fit uses smaller batches (its double backward runs the
    PyTorch reference grid) and a lower learning rate."""
    check(loss in LOSSES, f"unknown loss {loss!r} (use {'|'.join(LOSSES)})")
    if loss == "eikonal":
        return SDFTaskConfig(loss=loss, batch_size=2048, lr=5e-3, n_uniform=0, near_sigmas=())
    return SDFTaskConfig(loss=loss)


@dataclasses.dataclass
class Samples:
    """Training samples in normalised coordinates (float32 tensors).

    ``points [n, 3]`` with ``sdf [n]`` (signed distances, negative inside; NaN when unknown)
    and ``surface [m, 3]`` with ``normals [m, 3]``. ``seconds``: time spent sampling.
    """

    points: Tensor
    sdf: Tensor
    surface: Tensor
    normals: Tensor
    seconds: float = 0.0


def make_samples(shape: Shape, config: SDFTaskConfig, need_sdf: bool = True) -> Samples:
    """Draw the training samples of a normalised shape once.

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


class SDFTrainer:
    """Fits one field to one shape's samples; ``step(i)`` is one Adam step (for ``run_loop``)."""

    def __init__(self, config: SDFTaskConfig, samples: Samples, field: Field | None = None,
                 total_steps: int | None = None, total_seconds: float | None = None) -> None:
        from fieldcraft.train.optimizers import build_optimizer

        check(config.loss in LOSSES, f"unknown loss {config.loss!r} (use {'|'.join(LOSSES)})")
        check(config.field.in_dim == 3 and config.field.out_dim == 1, "shape fields map 3 -> 1")
        check(config.gradient in GRADIENTS, f"unknown gradient {config.gradient!r} (use {'|'.join(GRADIENTS)})")
        check(config.gradient_eps > 0, f"gradient_eps must be positive, got {config.gradient_eps}")
        self.config, self.samples = config, samples
        torch.manual_seed(config.seed)
        self.field = field if field is not None else config.field.build()
        self.optimizer = build_optimizer(self.field, config.lr)
        self.generator = torch.Generator().manual_seed(config.seed + 1)
        self.total_steps, self.total_seconds = total_steps, total_seconds
        self.elapsed = 0.0
        if config.loss != "eikonal":
            check(bool(torch.isfinite(samples.sdf).all()), "regression/occupancy need signed distances of all samples")
        self.warm_up()

    def warm_up(self) -> None:
        """One forward/backward on a few points without an update, so just-in-time kernel
        compilation (numba) happens before the timed fitting loop, not inside its first step."""
        x = self.samples.surface[:64]
        if self.config.loss == "eikonal":
            eikonal_loss(self.field, x, self.samples.normals[:64], x, self.config)[0].backward()
        else:
            self.field(x).sum().backward()
        self.optimizer.zero_grad(set_to_none=True)

    def learning_rate(self, step: int) -> float:
        """Cosine decay from ``lr`` to ``lr * lr_decay_to`` over the budget (steps or seconds)."""
        c = self.config
        if self.total_steps:
            progress = step / self.total_steps
        elif self.total_seconds:
            progress = self.elapsed / self.total_seconds
        else:
            return c.lr
        progress = min(max(progress, 0.0), 1.0)
        return c.lr * (c.lr_decay_to + (1 - c.lr_decay_to) * 0.5 * (1 + math.cos(math.pi * progress)))

    def step(self, i: int) -> dict[str, float]:
        t0 = time.perf_counter()
        c, s = self.config, self.samples
        lr = self.learning_rate(i)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        b = c.batch_size
        if c.loss == "eikonal":
            js = torch.randint(len(s.surface), (b,), generator=self.generator)
            off = torch.rand(b, 3, generator=self.generator) * 2 - 1
            loss, extra = eikonal_loss(self.field, s.surface[js], s.normals[js], off, c)
        else:
            j = torch.randint(len(s.points), (b,), generator=self.generator)
            pred = self.field(s.points[j]).reshape(-1)
            loss = regression_loss(pred, s.sdf[j], c.clamp) if c.loss == "regression" else occupancy_loss(pred, s.sdf[j])
            extra = {}
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.elapsed += time.perf_counter() - t0
        return {"loss": float(loss.detach()), "lr": lr, **extra}


def field_function(field: nn.Module, chunk: int = 262_144, latent: Tensor | None = None
                   ) -> Callable[[np.ndarray], np.ndarray]:
    """The field as a numpy function of normalised points (no autograd, float32, chunked)."""

    def fn(points: np.ndarray) -> np.ndarray:
        out = np.empty(len(points), np.float32)
        with torch.no_grad():
            for s in range(0, len(points), chunk):
                x = torch.from_numpy(np.ascontiguousarray(points[s:s + chunk], dtype=np.float32))
                y = field(x) if latent is None else field(x, latent.expand(len(x), -1))
                out[s:s + chunk] = y.reshape(-1).numpy()
        return out

    return fn


# --------------------------------------------------------------------------------------------
# auto-decoder (DeepSDF): one decoder, one latent code per shape


@dataclasses.dataclass(frozen=True)
class AutoDecoderConfig(Config):
    """Fields:

    - ``latent_dim``: size of each shape's code (DeepSDF: 256).
    - ``latent_init_std``: codes start ``N(0, std^2)`` (DeepSDF: 0.01).
    - ``latent_reg``: weight of ``mean ||z||^2`` (DeepSDF: 1e-4, from a N(0, 0.01^2) prior).
    - ``encoding``: positional encoding of the points (concatenated with the code).
    - ``network``: decoder MLP ((encoding + latent) -> 1).
    - ``task``: sampling, clamping, learning rate, batch size (its ``loss`` must be ``regression``).
    """

    type_name = "AutoDecoder"
    latent_dim: int = 32
    latent_init_std: float = 0.01
    latent_reg: float = 1e-4
    encoding: FrequencyEncodingConfig = dataclasses.field(default_factory=lambda: FrequencyEncodingConfig(n_frequencies=4))
    network: MLPConfig = dataclasses.field(default_factory=lambda: MLPConfig(hidden_width=128, hidden_layers=4))
    task: SDFTaskConfig = dataclasses.field(default_factory=lambda: SDFTaskConfig(
        n_surface=50_000, n_uniform=20_000, batch_size=8192, lr=2e-3, lr_decay_to=0.2))


class AutoDecoder(nn.Module):
    """``f(x, z) = MLP([encoding(x), z])`` with a table of ``K`` latent codes."""

    def __init__(self, config: AutoDecoderConfig, n_shapes: int) -> None:
        super().__init__()
        self.config = config
        self.encoding = config.encoding.build(3)
        self.network = config.network.build(self.encoding.out_dim + config.latent_dim, 1)
        self.latents = nn.Parameter(torch.randn(n_shapes, config.latent_dim) * config.latent_init_std)

    def forward(self, x: Float[Tensor, "n 3"], z: Float[Tensor, "n D"]) -> Float[Tensor, "n 1"]:
        return self.network(torch.cat([self.encoding(x), z], dim=-1))


class AutoDecoderTrainer:
    """Joint optimisation of the decoder and the K codes (DeepSDF eq. 9)."""

    def __init__(self, config: AutoDecoderConfig, samples: list[Samples]) -> None:
        check(len(samples) >= 1, "the auto-decoder needs at least one shape")
        self.config, self.samples = config, samples
        torch.manual_seed(config.task.seed)
        self.model = AutoDecoder(config, len(samples))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.task.lr)
        self.generator = torch.Generator().manual_seed(config.task.seed + 1)

    def step(self, i: int) -> dict[str, float]:
        c = self.config.task
        per = max(1, c.batch_size // len(self.samples))
        xs, ss, ks = [], [], []
        for k, s in enumerate(self.samples):
            j = torch.randint(len(s.points), (per,), generator=self.generator)
            xs.append(s.points[j])
            ss.append(s.sdf[j])
            ks.append(torch.full((per,), k))
        k = torch.cat(ks)
        z = self.model.latents[k]
        pred = self.model(torch.cat(xs), z).reshape(-1)
        data = regression_loss(pred, torch.cat(ss), c.clamp)
        reg = self.model.latents.square().sum(-1).mean()
        loss = data + self.config.latent_reg * reg
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(data.detach()), "latent_norm": float(reg.detach().sqrt())}


def interpolate_latents(za: Tensor, zb: Tensor, n: int) -> list[Tensor]:
    """``n`` codes ``(1 - t) za + t zb`` for ``t = 0, 1/(n-1), ..., 1``."""
    return [torch.lerp(za, zb, t) for t in np.linspace(0.0, 1.0, n).tolist()]


def prepare_shape(shape: Shape, config: SDFTaskConfig) -> tuple[Shape, Normalisation]:
    """Normalise a loaded shape with the task's margin."""
    return normalise(shape, config.margin)


# --------------------------------------------------------------------------------------------
# pipeline: fit -> checkpoint -> mesh / renders / metrics


def _save(out, trainer: SDFTrainer, norm: Normalisation, step: int, seconds: float, history, extra: dict) -> None:
    from fieldcraft.io.checkpoint import module_tensors, save_checkpoint
    from fieldcraft.train.optimizers import optimizer_state

    opt_t, opt_meta = optimizer_state(trainer.optimizer)
    meta = {"task": TASK_NAME, "config": trainer.config.to_dict(), "normalisation": norm.to_dict(), "step": step,
            "seconds": seconds, "history": history.to_dict(), "optimizer": opt_meta, **extra}
    save_checkpoint(out, {**module_tensors(trainer.field, "field"), **opt_t}, meta)


def load_shape_field(directory) -> tuple[Field, SDFTaskConfig, Normalisation, dict]:
    """Field, task config, normalisation and metadata of a checkpoint written by :func:`fit_shape`."""
    from fieldcraft.io.checkpoint import build_loaded, load_checkpoint

    tensors, meta = load_checkpoint(directory)
    if meta.get("task") != TASK_NAME:
        raise FieldcraftError(f"{directory}: not a shape checkpoint (task {meta.get('task')!r}, expected {TASK_NAME!r})")
    config = Config.from_dict(meta["config"])
    assert isinstance(config, SDFTaskConfig)
    field = build_loaded(config.field.build, tensors, "field")
    field.eval()
    return field, config, Normalisation.from_dict(meta["normalisation"]), meta


def extract_mesh(field: nn.Module, loss: str, resolution: int, mise: bool = True, base: int = 32
                 ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Mesh of the field's surface in normalised coordinates (see :func:`extract_surface`)."""
    return extract_surface(field_function(field), loss, resolution, mise, base)


def render_shape(directory, out_dir, views: int = 4, size: int = 256) -> list:
    """Sphere-traced PNGs ``view_XX.png`` of an SDF checkpoint (normalised coordinates)."""
    from pathlib import Path

    from fieldcraft.io.images import write_png
    from fieldcraft.render.sphere_tracing import orbit_cameras, render_sdf

    field, config, _, _ = load_shape_field(directory)
    if config.loss == "occupancy":
        raise FieldcraftError(f"{directory}: sphere tracing needs a signed distance field (this is an occupancy fit)")
    sdf = lambda x: field(x).reshape(-1)
    out_dir = Path(out_dir)
    paths = []
    for k, c2w in enumerate(orbit_cameras(views)):
        img = render_sdf(sdf, c2w, size, size)
        paths.append(write_png(out_dir / f"view_{k:02d}.png", img.astype(np.float32) / 255.0, bits=8))
    return paths


def fit_shape(source, out, config: SDFTaskConfig, budget, *, resume: bool = False, progress: bool = True,
              resolution: int = 256, render: bool = True, evaluate: bool = True) -> dict:
    """Fit, then write ``checkpoint.safetensors``, ``mesh.ply`` (input coordinates, MISE at
    ``resolution``), ``renders/view_XX.png`` (SDFs) and ``metrics.json`` (mesh inputs) to ``out``."""
    import json
    from pathlib import Path

    from fieldcraft.geometry.mesh import load_shape
    from fieldcraft.geometry.metrics import mesh_metrics
    from fieldcraft.io.checkpoint import atomic_write_bytes, load_checkpoint, load_module_tensors
    from fieldcraft.train import History, run_loop
    from fieldcraft.train.optimizers import load_optimizer_state

    out = Path(out)
    shape = load_shape(source)
    start_step, start_seconds, history = 0, 0.0, History()
    state = None
    if resume:
        tensors, meta = load_checkpoint(out)
        if meta.get("task") != TASK_NAME:
            raise FieldcraftError(f"{out}: cannot resume, not a shape checkpoint")
        loaded = Config.from_dict(meta["config"])
        assert isinstance(loaded, SDFTaskConfig)
        config = loaded
        start_step, start_seconds = int(meta["step"]), float(meta["seconds"])
        history = History.from_dict(meta.get("history", {}))
        state = (tensors, meta)
    normed, norm = prepare_shape(shape, config)
    samples = make_samples(normed, config, need_sdf=config.loss != "eikonal")
    n_samples = len(samples.points) + len(samples.surface)
    trainer = SDFTrainer(config, samples, total_steps=budget.steps, total_seconds=budget.seconds)
    trainer.elapsed = start_seconds
    if state is not None:
        load_module_tensors(trainer.field, state[0], "field")
        load_optimizer_state(trainer.optimizer, state[0], state[1]["optimizer"])
    extra = {"source": str(source), "sampling_seconds": samples.seconds}

    def checkpoint(step: int, seconds: float, hist) -> None:
        _save(out, trainer, norm, step, seconds, hist, extra)

    steps, seconds, history = run_loop(trainer.step, budget, start_step=start_step, start_seconds=start_seconds,
                                       history=history, log_every=10, checkpoint=checkpoint,
                                       description=f"fit sdf ({config.loss})", progress=progress)
    trainer.field.eval()
    metrics: dict[str, Any] = {"loss": config.loss, "steps": steps, "fit_seconds": seconds,
                               "sampling_seconds": samples.seconds, "samples": n_samples,
                               "samples_per_second": n_samples / max(samples.seconds, 1e-9)}
    mesh_stats = export_shape_mesh(out, out / "mesh.ply", resolution, mise=True)
    metrics["extraction_seconds"] = mesh_stats["seconds"]
    metrics["resolution"] = resolution
    if render and config.loss != "occupancy":
        render_shape(out, out / "renders")
    if evaluate and shape.is_mesh:
        import trimesh

        pred = trimesh.load(str(out / "mesh.ply"), process=False)
        metrics.update(mesh_metrics((np.asarray(pred.vertices), np.asarray(pred.faces)), (shape.vertices, shape.faces)))
    atomic_write_bytes(out / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
    return metrics


def fit_autodecoder(sources: list, out, config: AutoDecoderConfig, budget, *, interpolate: int = 5,
                    resolution: int = 128, progress: bool = True) -> dict:
    """Fit one decoder + K codes, then export ``shape_k.ply`` for every code and
    ``interp_XX.ply`` along the line between the first two codes (normalised coordinates of
    each shape; the interpolants are in the unit cube)."""
    import json
    from pathlib import Path

    from fieldcraft.geometry.marching_cubes import clean_mesh, vertex_normals
    from fieldcraft.geometry.mesh import load_shape, save_mesh
    from fieldcraft.geometry.mise import extract_mise
    from fieldcraft.io.checkpoint import atomic_write_bytes, module_tensors, save_checkpoint
    from fieldcraft.train import run_loop

    check(config.task.loss == "regression", "the auto-decoder uses the regression loss")
    out = Path(out)
    shapes, norms = [], []
    t0 = time.perf_counter()
    for src in sources:
        normed, norm = prepare_shape(load_shape(src), config.task)
        shapes.append(make_samples(normed, config.task))
        norms.append(norm)
    sampling = time.perf_counter() - t0
    trainer = AutoDecoderTrainer(config, shapes)

    def checkpoint(step: int, seconds: float, hist) -> None:
        meta = {"task": "autodecoder", "config": config.to_dict(), "sources": [str(s) for s in sources],
                "normalisations": [n.to_dict() for n in norms], "step": step, "seconds": seconds,
                "history": hist.to_dict()}
        save_checkpoint(out, module_tensors(trainer.model, "model"), meta)

    steps, seconds, _ = run_loop(trainer.step, budget, log_every=10, checkpoint=checkpoint,
                                 description="fit autodecoder", progress=progress)
    model = trainer.model.eval()
    files = []
    codes = [model.latents[k].detach() for k in range(len(sources))]
    named = [(f"shape_{k}.ply", z, norms[k]) for k, z in enumerate(codes)]
    if len(codes) >= 2:
        named += [(f"interp_{i:02d}.ply", z, None) for i, z in enumerate(interpolate_latents(codes[0], codes[1], interpolate))]
    for name, z, norm in named:
        fn = field_function(model, latent=z[None])
        v, f, _ = extract_mise(fn, resolution, 0.0, 1.0, "below", base=min(32, resolution), lipschitz=2.0)
        v, f = clean_mesh(v, f)
        if len(f) == 0:
            continue
        if norm is not None:
            v = norm.inverse(v)
        save_mesh(out / name, v, f, vertex_normals(v, f))
        files.append(name)
    result = {"steps": steps, "fit_seconds": seconds, "sampling_seconds": sampling, "meshes": files}
    atomic_write_bytes(out / "metrics.json", (json.dumps(result, indent=2) + "\n").encode())
    return result
