"""Sparse-view CT reconstruction with a neural field, against FBP and SART.

Pipeline (``fieldcraft fit ct SRC --out DIR``):

1. data: ``sample:shepp-logan`` simulated at ``views`` angles equally spaced over [0, 180)
   (line integrals of the 400 x 400 phantom by quadrature, not of the ``N x N`` ground truth,
   so the fit does not see its own forward model; optional Beer-Lambert + Poisson noise), or
   an APS data-exchange HDF5 file (flat/dark correction, ``-ln``, detector centred on the
   centre of rotation and resampled to ``N`` bins, ``views`` of its angles spread evenly).
2. baselines on the same views: scikit-image ``iradon`` (FBP, ramp filter) and
   ``iradon_sart`` (``sart_iterations`` passes, each started from the previous one).
3. field: ``mu(x, y) = value_scale * Field(x, y)``, a 2-D :class:`~fieldcraft.fields.Field`
   with a softplus output (non-negative), queried at the ``N x N`` pixel centres inside the
   reconstruction disc (zero outside, like ``iradon(circle=True)``); predicted sinogram =
   line integrals of the bilinear interpolant of those values (a precomputed sparse matrix,
   :func:`~fieldcraft.render.line_integrals.projection_matrix`, 2 samples per pixel per ray).
   ``value_scale`` is the 99.5th percentile of the same-view FBP, so field outputs are O(1).
4. loss = mean squared sinogram residual (world units, divided by ``value_scale``) +
   ``tv_weight`` x anisotropic total variation (mean over pixels of ``|dx| + |dy|`` of
   ``Field``); Adam with the learning rate decayed exponentially from ``lr`` to
   ``lr * lr_final_factor`` over the budget.
5. metrics against the phantom (data range 1) or, for real data, against the FBP of all the
   file's angles (data range = its max - min): PSNR = ``10 log10(R^2 / MSE)`` over the whole
   ``N x N`` image and SSIM (``skimage.metrics.structural_similarity`` with the same
   ``data_range``), on the unclipped reconstructions.

Fast path: when every query point is fixed (it is: pixel centres), a grid encoding is a fixed
sparse linear map of its table (:func:`grid_operator`), and an encoding without parameters
is a constant; both are precomputed once. Results equal ``field(points)`` (tested).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fieldcraft.config import Config
from fieldcraft.data import ct as ctdata
from fieldcraft.encodings import DenseGridConfig, FourierFeaturesConfig, HashGridConfig
from fieldcraft.encodings.grid import GridLayout, corner_offsets, vertex_rows
from fieldcraft.errors import FieldcraftError
from fieldcraft.fields import Field, FieldConfig
from fieldcraft.networks import MLPConfig
from fieldcraft.render import line_integrals as li

CT_PRESETS = ("hash", "dense", "fourier")
DEFAULT_PRESET = "hash"
# Adam learning rate per preset (grids take large steps; a Fourier-feature MLP dies at 3e-2)
PRESET_LR = {"hash": 3e-2, "dense": 3e-2, "fourier": 2e-3}
# Attenuation of phantom value 1 per world unit when simulating photon counts: 0.2 /cm
# (about water at 60-70 keV) on a 20 cm field of view (world width 2 = 20 cm).
PHANTOM_MU_PER_UNIT = 2.0


def ct_field_config(preset: str, size: int, seed: int = 0) -> FieldConfig:
    """Field config of a CT preset (2-D in, 1 value out, softplus output).

    | preset | encoding | network |
    |---|---|---|
    | ``hash`` (default) | hash grid, L=8, F=2, T=16, N_min=16, N_max=size | 64 x 1 ReLU |
    | ``dense`` | dense grid, size cells, F=4 | 32 x 1 ReLU |
    | ``fourier`` | Gaussian Fourier features, m=128, sigma=12 | 128 x 2 ReLU (slower per step) |
    """
    if preset == "hash":
        enc = HashGridConfig(n_levels=8, n_features=2, log2_table_size=16, base_resolution=16,
                             max_resolution=max(32, size))
        net = MLPConfig(hidden_width=64, hidden_layers=1, activation="relu", output_activation="softplus")
    elif preset == "dense":
        enc = DenseGridConfig(resolution=size, n_features=4)
        net = MLPConfig(hidden_width=32, hidden_layers=1, activation="relu", output_activation="softplus")
    elif preset == "fourier":
        enc = FourierFeaturesConfig(n_features=128, sigma=12.0, seed=seed)
        net = MLPConfig(hidden_width=128, hidden_layers=2, activation="relu", output_activation="softplus")
    else:
        raise FieldcraftError(f"unknown CT preset {preset!r} (choose from {', '.join(CT_PRESETS)})")
    return FieldConfig(in_dim=2, out_dim=1, encoding=enc, network=net)


@dataclasses.dataclass(frozen=True)
class CTTaskConfig(Config):
    """Fields:

    - ``source``: ``sample:shepp-logan`` or a path to an APS data-exchange HDF5 file.
    - ``size``: N, reconstruction grid and detector bins (pixels).
    - ``views``: number of projection angles used (equally spaced over [0, 180) for the
      phantom; spread evenly over the file's angles for real data).
    - ``photons``: incident photons per detector bin for Poisson noise (phantom only);
      ``None`` = noiseless.
    - ``row``: detector row (slice) of real data; ``centre``: centre of rotation of real data
      in detector pixels.
    - ``field``: the :class:`FieldConfig`; ``preset``: the preset it came from (for the record).
    - ``tv_weight``: weight of the total-variation term (0 disables it).
    - ``lr``, ``lr_final_factor``: Adam learning rate and its factor at the end of the budget.
    - ``loss_filter``: ``"ramp"`` weighs the sinogram residual by ``sqrt(|omega| + 1/N)``
      along the detector (so the gradient is a filtered back-projection of the residual, a
      preconditioner) or ``"none"`` (plain mean squared residual).
    - ``samples_per_pixel``: quadrature samples per pixel length along each ray.
    - ``sart_iterations``: SART passes for the baseline.
    - ``seed``: seeds the noise and the field initialisation.
    """

    type_name = "CTTask"
    source: str = ctdata.PHANTOM_SOURCE
    size: int = 256
    views: int = 20
    photons: float | None = None
    row: int = 0
    centre: float = 295.5
    field: FieldConfig = dataclasses.field(default_factory=lambda: ct_field_config(DEFAULT_PRESET, 256))
    preset: str = DEFAULT_PRESET
    tv_weight: float = 3e-4
    lr: float = 3e-2
    lr_final_factor: float = 0.05
    loss_filter: str = "ramp"
    samples_per_pixel: float = 2.0
    sart_iterations: int = 10
    seed: int = 0


# ----------------------------------------------------------------------------- problem setup


@dataclasses.dataclass
class CTProblem:
    """Everything a fit needs: measured sinogram ``[views, N]`` in pixel units (scikit-image
    ``radon`` units), angles in degrees, the reference image (phantom or full-angle FBP) and
    its data range, and the projector (sparse matrices, world units)."""

    sinogram: np.ndarray
    theta_deg: np.ndarray
    reference: np.ndarray
    reference_name: str
    data_range: float
    matrix: Tensor
    matrix_t: Tensor
    mask: Tensor  # [N, N] bool, the reconstruction disc
    setup_seconds: float


def geometry(size: int, theta_deg: np.ndarray) -> tuple[Tensor, Tensor, tuple[float, float]]:
    """Parallel-beam rays of an ``N``-bin detector (one pixel per bin, centre on bin ``N // 2``)
    rotating about the centre of pixel ``(N // 2, N // 2)`` (scikit-image's convention):
    origins and directions ``[views, N, 2]`` and the centre."""
    c = (2 * (size // 2) + 1) / size - 1.0
    angles = torch.tensor(np.deg2rad(np.asarray(theta_deg, dtype=np.float64)), dtype=torch.float32)
    u = li.detector_positions(size, 2.0 / size, center_index=size // 2)
    o, d = li.parallel_beam_rays(angles, u, (c, c))
    return o, d, (c, c)


def projector(size: int, theta_deg: np.ndarray, image_size: int | None = None,
              samples_per_pixel: float = 2.0) -> tuple[Tensor, Tensor]:
    """Sparse projector of an ``image_size`` (default ``size``) square image onto the
    ``size``-bin detector at ``theta_deg``: ``(A, A^T)``, world units, rays view-major."""
    m = image_size or size
    o, d, c = geometry(size, theta_deg)
    t0, t1 = li.chord_interval(o, d, radius=1.0, center=c)
    n_samples = max(2, math.ceil(samples_per_pixel * m))
    pts, w = li.quadrature_points(o, d, t0, t1, n_samples)
    a = li.projection_matrix(pts, w, m)
    return a, li.transpose_csr(a)


def simulate(image: np.ndarray, size: int, theta_deg: np.ndarray, samples_per_pixel: float = 2.0) -> Tensor:
    """Line integrals ``[views * size]`` (world units) of an image of any resolution (bilinear
    interpolant, :func:`~fieldcraft.render.line_integrals.image_field`) along the rays of
    :func:`geometry`, by quadrature with ``samples_per_pixel`` samples per pixel of ``image``."""
    o, d, c = geometry(size, theta_deg)
    t0, t1 = li.chord_interval(o, d, radius=1.0, center=c)
    pts, w = li.quadrature_points(o, d, t0, t1, max(2, math.ceil(samples_per_pixel * image.shape[0])))
    with torch.no_grad():
        return li.line_integrals(li.image_field(torch.from_numpy(image)), pts, w, chunk=1024).reshape(-1)


def disc_mask(size: int) -> Tensor:
    """Pixels inside the reconstruction circle of ``iradon(circle=True)``."""
    idx = torch.arange(size) - size // 2
    return (idx[:, None] ** 2 + idx[None, :] ** 2) <= (size // 2) ** 2


def _fbp(sino: np.ndarray, theta: np.ndarray, size: int) -> np.ndarray:
    from skimage.transform import iradon

    return iradon(sino.T, theta=theta, output_size=size, circle=True, filter_name="ramp").astype(np.float32)


def _sart(sino: np.ndarray, theta: np.ndarray, iterations: int) -> np.ndarray:
    from skimage.transform import iradon_sart

    s64, th = sino.T.astype(np.float64), np.asarray(theta, dtype=np.float64)
    image = None
    for _ in range(max(1, iterations)):
        image = iradon_sart(s64, theta=th, image=image)
    return image.astype(np.float32)


def prepare(cfg: CTTaskConfig) -> CTProblem:
    """Load or simulate the sinogram of ``cfg`` and build the projector."""
    t0 = time.perf_counter()
    n = cfg.size
    if cfg.views < 1:
        raise FieldcraftError(f"--views must be >= 1, got {cfg.views}")
    if cfg.source == ctdata.PHANTOM_SOURCE:
        reference = ctdata.shepp_logan(n)
        hi = ctdata.shepp_logan(400)
        theta = np.arange(cfg.views) * (180.0 / cfg.views)
        world = simulate(hi, n, theta, samples_per_pixel=cfg.samples_per_pixel)
        if cfg.photons is not None:
            if not cfg.photons > 0:
                raise FieldcraftError(f"--noise must be a positive photon count, got {cfg.photons}")
            gen = torch.Generator().manual_seed(cfg.seed)
            world = li.beer_lambert(world * PHANTOM_MU_PER_UNIT, cfg.photons, gen) / PHANTOM_MU_PER_UNIT
        sino = (world * (n / 2)).reshape(cfg.views, n).numpy()
        ref_name, data_range = "phantom", 1.0
    else:
        if cfg.photons is not None:
            raise FieldcraftError(f"{cfg.source}: --noise simulates photon noise on the phantom only (real data has its own)")
        proj = ctdata.read_data_exchange(cfg.source)
        full = ctdata.centre_sinogram(ctdata.log_sinogram(proj, cfg.row), cfg.centre, n)
        keep = ctdata.select_views(full.shape[0], cfg.views)
        reference = _fbp(full, proj.theta_deg, n)
        sino, theta = full[keep], proj.theta_deg[keep]
        ref_name = f"FBP of all {full.shape[0]} angles"
        data_range = float(reference.max() - reference.min())
    if not np.isfinite(sino).all():
        raise FieldcraftError(f"{cfg.source}: the sinogram holds NaN or infinite values")
    a, at = projector(n, theta, samples_per_pixel=cfg.samples_per_pixel)
    return CTProblem(sino.astype(np.float32), np.asarray(theta, dtype=np.float64), reference, ref_name, data_range,
                     a, at, disc_mask(n), time.perf_counter() - t0)


# ----------------------------------------------------------------------------- metrics


def psnr(image: np.ndarray, reference: np.ndarray, data_range: float) -> float:
    """``10 log10(R^2 / MSE)`` over all pixels (no clipping)."""
    mse = float(np.mean((np.asarray(image, np.float64) - np.asarray(reference, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def ssim(image: np.ndarray, reference: np.ndarray, data_range: float) -> float:
    """scikit-image ``structural_similarity`` (7x7 uniform window) with ``data_range``."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(np.asarray(reference, np.float64), np.asarray(image, np.float64),
                                       data_range=data_range))


def baselines(problem: CTProblem, sart_iterations: int) -> dict[str, dict[str, Any]]:
    """FBP and SART on the problem's views: images, PSNR, SSIM and seconds."""
    out: dict[str, dict[str, Any]] = {}
    for name, fn in (("fbp", lambda: _fbp(problem.sinogram, problem.theta_deg, problem.reference.shape[0])),
                     ("sart", lambda: _sart(problem.sinogram, problem.theta_deg, sart_iterations))):
        t0 = time.perf_counter()
        image = fn()
        out[name] = {"image": image, "seconds": time.perf_counter() - t0,
                     "psnr": psnr(image, problem.reference, problem.data_range),
                     "ssim": ssim(image, problem.reference, problem.data_range)}
    return out


# ----------------------------------------------------------------------------- field on fixed points


def grid_operator(layout: GridLayout, x: Tensor) -> Tensor:
    """Sparse CSR ``[n * L, rows]`` matrix ``S`` with ``(S @ table).reshape(n, L * F)`` equal to the
    grid encoding of the fixed points ``x`` ``[n, d]`` in ``[-1, 1]^d`` (same indexing and
    multilinear weights as :func:`fieldcraft.encodings.grid.grid_encode_reference`)."""
    u = ((x.double() + 1.0) * 0.5).clamp(0.0, 1.0)
    n, levels = u.shape[0], layout.n_levels
    corners = corner_offsets(layout.dim)
    rows, cols, vals = [], [], []
    for level, (res, size, hashed, off) in enumerate(
        zip(layout.resolutions, layout.sizes, layout.hashed, layout.offsets)
    ):
        p = u * res
        cell = torch.clamp(torch.floor(p), max=res - 1).to(torch.int64)
        frac = p - cell
        c = vertex_rows(cell[:, None, :] + corners[None], res, size, hashed) + off
        w = torch.where(corners[None].bool(), frac[:, None, :], 1.0 - frac[:, None, :]).prod(-1)
        rows.append((torch.arange(n) * levels + level)[:, None].expand_as(c).reshape(-1))
        cols.append(c.reshape(-1))
        vals.append(w.reshape(-1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        s = torch.sparse_coo_tensor(torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(vals).float(),
                                    (n * levels, layout.n_rows))
        return s.coalesce().to_sparse_csr()


class FixedPointsField:
    """``field(points)`` for fixed ``points`` ``[n, 2]``, with the encoding precomputed: a
    grid encoding becomes a sparse matrix times its table, an encoding without parameters a
    constant feature matrix; anything else is evaluated as is."""

    def __init__(self, field: Field, points: Tensor) -> None:
        self.field, self.points = field, points
        enc = field.encoding
        self.mode = "call"
        if hasattr(enc, "layout") and hasattr(enc, "table"):
            self.mode = "grid"
            self.s = grid_operator(enc.layout, points)
            self.s_t = li.transpose_csr(self.s)
        elif not any(True for _ in enc.parameters()):
            self.mode = "constant"
            with torch.no_grad():
                self.features = enc(points)

    def __call__(self) -> Tensor:
        if self.mode == "grid":
            feats = li.sparse_matmul(self.s, self.field.encoding.table, self.s_t).reshape(self.points.shape[0], -1)
            return self.field.network(feats)
        if self.mode == "constant":
            return self.field.network(self.features)
        return self.field(self.points)


def pixel_centres(size: int) -> Tensor:
    """``[N, N, 2]`` (x, y) pixel centres in ``[-1, 1]`` (row-major, x = column)."""
    c = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx, yy], dim=-1)


@torch.no_grad()
def render(field: Field, size: int, value_scale: float, mask: Tensor | None = None) -> np.ndarray:
    """The field's attenuation image ``[N, N]`` (per pixel), zero outside the disc."""
    img = field(pixel_centres(size).reshape(-1, 2)).reshape(size, size) * value_scale
    mask = disc_mask(size) if mask is None else mask
    return (img * mask).numpy().astype(np.float32)


def make_optimizer(field: Field, lr: float) -> torch.optim.Optimizer:
    """The one place the optimiser is built (Adam; grid tables take eps=1e-15 as Instant-NGP)."""
    return torch.optim.Adam(field.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-15)


def ramp_filter(residual: Tensor) -> Tensor:
    """Filter ``[views, N]`` detector rows by ``sqrt(|omega| + 1/N)`` (omega in cycles per bin,
    zero-padded to ``2N``), so that ``|filtered|^2`` has gradient ``A^T`` (ramp-filtered residual)."""
    n = residual.shape[-1]
    spec = torch.fft.rfft(residual, n=2 * n, dim=-1)
    w = torch.sqrt(torch.fft.rfftfreq(2 * n).abs() + 1.0 / n).to(residual.dtype)
    return torch.fft.irfft(spec * w, n=2 * n, dim=-1)


def total_variation(image: Tensor) -> Tensor:
    """Anisotropic TV: mean over pixels of ``|I[i+1,j] - I[i,j]| + |I[i,j+1] - I[i,j]|``."""
    return (image[1:] - image[:-1]).abs().mean() + (image[:, 1:] - image[:, :-1]).abs().mean()


# ----------------------------------------------------------------------------- fit


@dataclasses.dataclass
class FitResult:
    image: np.ndarray
    metrics: dict[str, Any]
    history: Any


def fit(cfg: CTTaskConfig, out_dir: str | Path, steps: int | None = None, seconds: float | None = None,
        resume: bool = False, progress: bool = True, write_outputs: bool = True) -> FitResult:
    """Fit the field of ``cfg`` on a step/time budget, write the outputs to ``out_dir`` and
    return the reconstruction and metrics (see module docstring)."""
    from fieldcraft.io.checkpoint import (
        load_checkpoint,
        load_module_tensors,
        load_optimizer_tensors,
        module_tensors,
        optimizer_tensors,
        save_checkpoint,
    )
    from fieldcraft.train import Budget, History, run_loop

    out = Path(out_dir)
    budget = Budget(steps=steps, seconds=seconds)
    start_step, start_seconds, history = 0, 0.0, History()
    ckpt = None
    if resume:
        tensors, meta = load_checkpoint(out)
        if meta.get("task") != "ct":
            raise FieldcraftError(f"{out}: checkpoint is for task {meta.get('task')!r}, not 'ct'")
        cfg = Config.from_dict(meta["config"])  # type: ignore[assignment]
        start_step, start_seconds = int(meta["step"]), float(meta["seconds"])
        history = History.from_dict(meta.get("history", {}))
        ckpt = (tensors, meta)

    torch.manual_seed(cfg.seed)
    problem = prepare(cfg)
    base = baselines(problem, cfg.sart_iterations)
    n = cfg.size
    value_scale = float(np.percentile(base["fbp"]["image"], 99.5)) if ckpt is None else float(ckpt[1]["value_scale"])
    if not value_scale > 0:
        raise FieldcraftError(f"{cfg.source}: the FBP of the sinogram is not positive anywhere; is it -ln(I/I0)?")
    field = cfg.field.build()
    optimizer = make_optimizer(field, cfg.lr)
    if ckpt is not None:
        load_module_tensors(field, ckpt[0], "field")
        load_optimizer_tensors(optimizer, ckpt[0], ckpt[1]["optimizer"])

    mask = problem.mask
    inside = mask.reshape(-1).nonzero()[:, 0]
    pts = pixel_centres(n).reshape(-1, 2)[inside]
    evaluator = FixedPointsField(field, pts)
    target = torch.from_numpy(problem.sinogram).reshape(-1) / (n / 2) / value_scale

    def image_of(values: Tensor) -> Tensor:
        return torch.zeros(n * n, dtype=values.dtype).index_put((inside,), values.reshape(-1)).reshape(n, n)

    n_views = len(problem.theta_deg)
    if cfg.loss_filter not in ("ramp", "none"):
        raise FieldcraftError(f"loss_filter must be 'ramp' or 'none', got {cfg.loss_filter!r}")
    state = {"seconds": start_seconds}
    horizon_steps, horizon_seconds = budget.steps, budget.seconds

    def step(i: int) -> dict[str, float]:
        t0 = time.perf_counter()
        if horizon_seconds is not None:
            frac = state["seconds"] / max(horizon_seconds, 1e-9)
        else:
            frac = i / max(horizon_steps or 1, 1)
        for group in optimizer.param_groups:
            group["lr"] = group.setdefault("base_lr", group["lr"]) * cfg.lr_final_factor ** min(frac, 1.0)
        img = image_of(evaluator())
        residual = li.project(img, problem.matrix, problem.matrix_t) - target
        if cfg.loss_filter == "ramp":
            residual = ramp_filter(residual.reshape(n_views, n))
        data = residual.square().mean()
        loss = data + cfg.tv_weight * total_variation(img) if cfg.tv_weight > 0 else data
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state["seconds"] += time.perf_counter() - t0
        return {"loss": loss.item(), "data": data.item()}

    def evaluate(i: int) -> dict[str, float]:
        image = render(field, n, value_scale, mask)
        return {"psnr": psnr(image, problem.reference, problem.data_range)}

    def checkpoint(i: int, fit_seconds: float, hist: History) -> None:
        if not write_outputs:
            return
        tensors = module_tensors(field, "field")
        opt_tensors, opt_meta = optimizer_tensors(optimizer)
        tensors.update(opt_tensors)
        save_checkpoint(out, tensors, {"task": "ct", "config": cfg.to_dict(), "step": i, "seconds": fit_seconds,
                                       "seed": cfg.seed, "value_scale": value_scale, "optimizer": opt_meta,
                                       "history": hist.to_dict()})

    steps_done, fit_seconds, history = run_loop(
        step, budget, start_step=start_step, start_seconds=start_seconds, history=history,
        evaluate=evaluate, evaluate_every_seconds=max(0.5, (seconds or 20.0) / 60.0), checkpoint=checkpoint,
        checkpoint_seconds=60.0, description="fit ct", progress=progress)

    image = render(field, n, value_scale, mask)
    metrics = {
        "source": cfg.source, "size": n, "views": len(problem.theta_deg), "photons": cfg.photons,
        "preset": cfg.preset, "reference": problem.reference_name, "data_range": problem.data_range,
        "psnr_definition": "10 log10(data_range^2 / MSE) over the full N x N image, unclipped values",
        "ssim_definition": "skimage.metrics.structural_similarity(reference, image, data_range=data_range)",
        "field": {"psnr": psnr(image, problem.reference, problem.data_range),
                  "ssim": ssim(image, problem.reference, problem.data_range),
                  "seconds": fit_seconds, "steps": steps_done},
        "fbp": {k: v for k, v in base["fbp"].items() if k != "image"},
        "sart": {k: v for k, v in base["sart"].items() if k != "image"} | {"iterations": cfg.sart_iterations},
        "setup_seconds": problem.setup_seconds, "value_scale": value_scale, "tv_weight": cfg.tv_weight,
    }
    if write_outputs:
        write_outputs_to(out, image, problem, base, metrics, history)
    return FitResult(image, metrics, history)


# ----------------------------------------------------------------------------- outputs


def write_png16(path: Path, image: np.ndarray, vmax: float) -> None:
    """``image / vmax`` clipped to [0, 1] as a 16-bit grayscale PNG."""
    import imageio.v3 as iio

    from fieldcraft.io.checkpoint import atomic_write_bytes

    data = np.round(np.clip(image / vmax, 0.0, 1.0) * 65535).astype(np.uint16)
    atomic_write_bytes(path, iio.imwrite("<bytes>", data, extension=".png"))


def write_outputs_to(out: Path, image: np.ndarray, problem: CTProblem, base: dict, metrics: dict, history) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fieldcraft.io.checkpoint import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    vmax = float(problem.reference.max()) if problem.reference.max() > 0 else 1.0
    metrics["png_scale"] = f"reconstruction.png value 65535 = attenuation {vmax:.6g} per pixel"
    write_png16(out / "reconstruction.png", image, vmax)
    buf = io.BytesIO()
    np.save(buf, image)
    atomic_write_bytes(out / "reconstruction.npy", buf.getvalue())
    atomic_write_bytes(out / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())

    k = metrics["views"]
    panels = [(problem.reference, "phantom" if problem.reference_name == "phantom" else problem.reference_name),
              (base["fbp"]["image"], f"FBP, {k} views: {metrics['fbp']['psnr']:.2f} dB"),
              (base["sart"]["image"], f"SART, {k} views: {metrics['sart']['psnr']:.2f} dB"),
              (image, f"field ({metrics['preset']}), {k} views: {metrics['field']['psnr']:.2f} dB")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    for ax, (img, title) in zip(axes, panels):
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=vmax)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=100)
    plt.close(fig)

    secs = [s for s, v in zip(history.seconds, history.values) if "psnr" in v]
    vals = [v["psnr"] for v in history.values if "psnr" in v]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(secs, vals, label="field")
    ax.axhline(metrics["fbp"]["psnr"], color="C1", ls="--", label="FBP")
    ax.axhline(metrics["sart"]["psnr"], color="C2", ls=":", label=f"SART ({metrics['sart']['iterations']} it.)")
    ax.set_xlabel("fitting time (s)")
    ax.set_ylabel(f"PSNR vs {problem.reference_name} (dB)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "psnr_vs_time.png", dpi=100)
    plt.close(fig)


def load_fitted(directory: str | Path) -> tuple[Field, CTTaskConfig, float]:
    """Field, task config and value scale from a CT checkpoint directory."""
    from fieldcraft.io.checkpoint import load_checkpoint, load_module_tensors

    tensors, meta = load_checkpoint(Path(directory))
    if meta.get("task") != "ct":
        raise FieldcraftError(f"{directory}: checkpoint is for task {meta.get('task')!r}, not 'ct'")
    cfg = Config.from_dict(meta["config"])
    field = cfg.field.build()  # type: ignore[attr-defined]
    load_module_tensors(field, tensors, "field")
    return field, cfg, float(meta["value_scale"])  # type: ignore[return-value]
