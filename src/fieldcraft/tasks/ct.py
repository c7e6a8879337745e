"""Sparse-view CT reconstruction with a neural field, against FBP and SART.

Task = data (a sinogram of a few views) + field + forward model (line integrals of the field's
image, a fixed sparse matrix) + filtered residual and total variation; the training core
(:mod:`fieldcraft.train`) does the rest. See docs/ct.md.

1. data (:mod:`fieldcraft.data.ct`): ``sample:shepp-logan`` simulated at ``views`` angles
   equally spaced over [0, 180) (line integrals of the 400 x 400 phantom by quadrature, not of
   the ``N x N`` ground truth, so the fit does not see its own forward model; optional
   Beer-Lambert + Poisson noise), or an APS data-exchange HDF5 file (flat/dark correction,
   ``-ln``, detector centred on the centre of rotation and resampled to ``N`` bins, ``views``
   of its angles spread evenly). The centre of rotation is ``--centre``, else the one the file
   records, else estimated from opposite projections.
2. baselines on the same views: scikit-image ``iradon`` (FBP, ramp filter) and
   ``iradon_sart`` (``sart_iterations`` passes, each started from the previous one).
3. field: ``mu(x, y) = value_scale * Field(x, y)``, a 2-D :class:`~fieldcraft.fields.Field`
   with a softplus output (non-negative), queried at the ``N x N`` pixel centres
   (:func:`fieldcraft.coords.pixel_centres`) inside the reconstruction disc (zero outside,
   like ``iradon(circle=True)``) through a
   :class:`~fieldcraft.fields.fixed_points.FixedPointsField` (encoding precomputed); predicted
   sinogram = line integrals of the bilinear interpolant of those values (a precomputed
   sparse matrix, :func:`~fieldcraft.render.line_integrals.projection_matrix`, 2 samples per
   pixel per ray). ``value_scale`` is the 99.5th percentile of the same-view FBP, so field
   outputs are O(1).
4. loss (:class:`SinogramResidual`) = mean squared sinogram residual (world units, divided by
   ``value_scale``), ramp-filtered along the detector (:func:`ramp_filter`), +
   ``tv_weight`` x :func:`total_variation` of ``Field``'s image; Instant-NGP's Adam (betas
   0.9/0.99, eps 1e-15) with the learning rate decayed exponentially from ``lr`` to
   ``lr * lr_final_factor`` over the budget.
5. metrics (:mod:`fieldcraft.metrics`) against the phantom (data range 1) or, for real data,
   against the FBP of all the file's angles (data range = its max - min): PSNR over the whole
   ``N x N`` image and SSIM (Gaussian window) with that data range, on the unclipped
   reconstructions.
"""

from __future__ import annotations

import dataclasses
import io
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from fieldcraft.config import Config
from fieldcraft.coords import pixel_centres
from fieldcraft.data import ct as ctdata
from fieldcraft.encodings import DenseGridConfig, FourierFeaturesConfig, HashGridConfig
from fieldcraft.errors import FieldcraftError, check, reading
from fieldcraft.fields import Field, FieldConfig
from fieldcraft.fields.fixed_points import FixedPointsField
from fieldcraft.io.checkpoint import atomic_write_bytes, build_loaded, load_checkpoint
from fieldcraft.io.images import write_png
from fieldcraft.io.records import write_json
from fieldcraft.metrics import PSNR_DEFINITION, SSIM_DEFINITION, psnr, ssim
from fieldcraft.networks import MLPConfig
from fieldcraft.render import line_integrals as li
from fieldcraft.render.grid import render_grid
from fieldcraft.train import Budget, History, Objective, OptimizerConfig, Run, ScheduleConfig
from fieldcraft.train.optimizers import instant_ngp

TASK = "ct"
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
    - ``row``: detector row (slice) of real data.
    - ``centre``: centre of rotation of real data in detector pixels (0 = centre of the first
      pixel); ``None``: the one the file records, else estimated from the projections
      (:func:`fieldcraft.data.ct.rotation_centre`).
    - ``field``: the :class:`FieldConfig`; ``preset``: the preset it came from (for the record
      and its learning rate).
    - ``tv_weight``: weight of the total-variation term (0 disables it).
    - ``lr``: Adam learning rate (None: the preset's, :data:`PRESET_LR`); ``lr_final_factor``:
      its factor at the end of the budget (exponential decay).
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
    centre: float | None = None
    field: FieldConfig = dataclasses.field(default_factory=lambda: ct_field_config(DEFAULT_PRESET, 256))
    preset: str = DEFAULT_PRESET
    tv_weight: float = 3e-4
    lr: float | None = None
    lr_final_factor: float = 0.05
    loss_filter: str = "ramp"
    samples_per_pixel: float = 2.0
    sart_iterations: int = 10
    seed: int = 0

    def optimizer(self) -> OptimizerConfig:
        """Instant-NGP's Adam for every parameter, learning rate decayed exponentially from
        ``lr`` to ``lr * lr_final_factor`` over the budget."""
        lr = self.lr if self.lr is not None else PRESET_LR.get(self.preset, 3e-2)
        return instant_ngp(lr, ScheduleConfig(kind="exp", final_factor=self.lr_final_factor))


# ----------------------------------------------------------------------------- problem setup


@dataclasses.dataclass
class CTProblem:
    """Everything a fit needs: measured sinogram ``[views, N]`` in pixel units (scikit-image
    ``radon`` units), angles in degrees, the reference image (phantom or full-angle FBP) and
    its data range, the projector (sparse matrices, world units) and the reconstruction disc
    (on the problem's device), and the centre of rotation used (real data)."""

    sinogram: np.ndarray
    theta_deg: np.ndarray
    reference: np.ndarray
    reference_name: str
    data_range: float
    matrix: Tensor
    matrix_t: Tensor
    mask: Tensor  # [N, N] bool, the reconstruction disc
    setup_seconds: float
    centre: float | None = None
    centre_source: str | None = None


def geometry(size: int, theta_deg: np.ndarray) -> tuple[Float[Tensor, "A N 2"], Float[Tensor, "A N 2"], tuple[float, float]]:
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
    ``size``-bin detector at ``theta_deg``: ``(A, A^T)``, world units, rays view-major (CPU)."""
    m = image_size or size
    o, d, c = geometry(size, theta_deg)
    t0, t1 = li.chord_interval(o, d, radius=1.0, center=c)
    n_samples = max(2, math.ceil(samples_per_pixel * m))
    pts, w = li.quadrature_points(o, d, t0, t1, n_samples)
    a = li.projection_matrix(pts, w, m)
    return a, li.transpose_csr(a)


def simulate(image: np.ndarray, size: int, theta_deg: np.ndarray, samples_per_pixel: float = 2.0) -> Float[Tensor, " rays"]:
    """Line integrals ``[views * size]`` (world units) of an image of any resolution (bilinear
    interpolant, :func:`~fieldcraft.render.line_integrals.image_field`) along the rays of
    :func:`geometry`, by quadrature with ``samples_per_pixel`` samples per pixel of ``image``."""
    o, d, c = geometry(size, theta_deg)
    t0, t1 = li.chord_interval(o, d, radius=1.0, center=c)
    pts, w = li.quadrature_points(o, d, t0, t1, max(2, math.ceil(samples_per_pixel * image.shape[0])))
    with torch.no_grad():
        return li.line_integrals(li.image_field(torch.from_numpy(image)), pts, w, chunk=1024).reshape(-1)


def disc_mask(size: int, device: torch.device | str = "cpu") -> Bool[Tensor, "N N"]:
    """Pixels inside the reconstruction circle of ``iradon(circle=True)`` (bool ``[N, N]``).

    >>> disc_mask(4).int().tolist()
    [[0, 0, 1, 0], [0, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]]
    """
    idx = torch.arange(size, device=device) - size // 2
    return (idx[:, None] ** 2 + idx[None, :] ** 2) <= (size // 2) ** 2


def fbp(sino: np.ndarray, theta_deg: np.ndarray, size: int) -> np.ndarray:
    """Filtered back-projection (``iradon``, ramp filter, ``circle=True``) of ``[views, N]``."""
    from skimage.transform import iradon

    return iradon(sino.T, theta=theta_deg, output_size=size, circle=True, filter_name="ramp").astype(np.float32)


def sart(sino: np.ndarray, theta_deg: np.ndarray, iterations: int) -> np.ndarray:
    """``iterations`` passes of ``iradon_sart``, each started from the previous image."""
    from skimage.transform import iradon_sart

    s64, th = sino.T.astype(np.float64), np.asarray(theta_deg, dtype=np.float64)
    image = None
    for _ in range(max(1, iterations)):
        image = iradon_sart(s64, theta=th, image=image)
    return image.astype(np.float32)


def prepare(cfg: CTTaskConfig, device: torch.device | str = "cpu", centre: tuple[float, str] | None = None,
            verbose: bool = True) -> CTProblem:
    """Load or simulate the sinogram of ``cfg`` and build the projector on ``device``.

    Real data: the centre of rotation is ``cfg.centre`` if set, else ``centre`` (a stored
    ``(pixels, source)``, when resuming), else :func:`fieldcraft.data.ct.rotation_centre`;
    with ``verbose`` the one used and where it came from is printed (one line, stderr)."""
    t0 = time.perf_counter()
    n = cfg.size
    check(n >= 8, f"--size must be >= 8, got {n}")
    check(cfg.views >= 1, f"--views must be >= 1, got {cfg.views}")
    check(cfg.loss_filter in ("ramp", "none"), f"loss_filter must be 'ramp' or 'none', got {cfg.loss_filter!r}")
    centre_px = centre_source = None
    if cfg.source == ctdata.PHANTOM_SOURCE:
        check(cfg.centre is None, "--centre applies to real data (the phantom rotates about bin N // 2)")
        reference = ctdata.shepp_logan(n)
        hi = ctdata.shepp_logan(400)
        theta = np.arange(cfg.views) * (180.0 / cfg.views)
        world = simulate(hi, n, theta, samples_per_pixel=cfg.samples_per_pixel)
        if cfg.photons is not None:
            check(cfg.photons > 0, f"--noise must be a positive photon count, got {cfg.photons}")
            gen = torch.Generator().manual_seed(cfg.seed)
            world = li.beer_lambert(world * PHANTOM_MU_PER_UNIT, cfg.photons, gen) / PHANTOM_MU_PER_UNIT
        sino = (world * (n / 2)).reshape(cfg.views, n).numpy()
        ref_name, data_range = "phantom", 1.0
    else:
        check(cfg.photons is None, f"{cfg.source}: --noise simulates photon noise on the phantom only "
                                   "(real data has its own)")
        proj = ctdata.read_data_exchange(cfg.source)
        log = ctdata.log_sinogram(proj, cfg.row)
        if cfg.centre is not None:
            centre_px, centre_source = float(cfg.centre), "given (--centre)"
        elif centre is not None:
            centre_px, centre_source = centre
        else:
            centre_px, centre_source = ctdata.rotation_centre(proj, log)
        if verbose:
            print(f"fieldcraft: centre of rotation {centre_px:.2f} px ({centre_source})", file=sys.stderr, flush=True)
        full = ctdata.centre_sinogram(log, centre_px, n)
        keep = ctdata.select_views(full.shape[0], cfg.views)
        reference = fbp(full, proj.theta_deg, n)
        sino, theta = full[keep], proj.theta_deg[keep]
        ref_name = f"FBP of all {full.shape[0]} angles"
        data_range = float(reference.max() - reference.min())
    check(bool(np.isfinite(sino).all()), f"{cfg.source}: the sinogram holds NaN or infinite values")
    a, at = projector(n, theta, samples_per_pixel=cfg.samples_per_pixel)
    return CTProblem(sino.astype(np.float32), np.asarray(theta, dtype=np.float64), reference, ref_name, data_range,
                     a.to(device), at.to(device), disc_mask(n, device), time.perf_counter() - t0,
                     centre_px, centre_source)


def baselines(problem: CTProblem, sart_iterations: int) -> dict[str, dict[str, Any]]:
    """FBP and SART on the problem's views: ``{"fbp"|"sart": {image, psnr, ssim, seconds}}``."""
    out: dict[str, dict[str, Any]] = {}
    for name, fn in (("fbp", lambda: fbp(problem.sinogram, problem.theta_deg, problem.reference.shape[0])),
                     ("sart", lambda: sart(problem.sinogram, problem.theta_deg, sart_iterations))):
        t0 = time.perf_counter()
        image = fn()
        out[name] = {"image": image, "seconds": time.perf_counter() - t0,
                     "psnr": psnr(image, problem.reference, problem.data_range),
                     "ssim": ssim(image, problem.reference, problem.data_range)}
    return out


# ----------------------------------------------------------------------------- loss


def ramp_filter(residual: Float[Tensor, "views n"]) -> Float[Tensor, "views 2n"]:
    """Filter detector rows by ``sqrt(|omega| + 1/N)`` (omega in cycles per bin, zero-padded
    to ``2N``), so that ``|filtered|^2`` has gradient ``A^T`` (ramp-filtered residual)."""
    n = residual.shape[-1]
    spec = torch.fft.rfft(residual, n=2 * n, dim=-1)
    w = torch.sqrt(torch.fft.rfftfreq(2 * n, device=residual.device).abs() + 1.0 / n).to(residual.dtype)
    return torch.fft.irfft(spec * w, n=2 * n, dim=-1)


def total_variation(image: Float[Tensor, "h w"]) -> Float[Tensor, ""]:
    """Anisotropic TV: mean over pixels of ``|I[i+1,j] - I[i,j]| + |I[i,j+1] - I[i,j]|``.

    >>> total_variation(torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    tensor(1.)
    """
    return (image[1:] - image[:-1]).abs().mean() + (image[:, 1:] - image[:, :-1]).abs().mean()


class SinogramResidual(Objective):
    """Loss of a CT fit: the field's image ``[N, N]`` (its values at the pixel centres inside
    the disc, zero outside) projected by ``matrix``, minus the measured sinogram ``target``
    (``[views * N]``, world units / ``value_scale``), optionally :func:`ramp_filter`-ed per view,
    squared and averaged, + ``tv_weight`` x :func:`total_variation` of the image. Scalars:
    ``loss`` and ``data`` (the residual term)."""

    def __init__(self, field: Field, problem: CTProblem, target: Float[Tensor, " rays"], loss_filter: str,
                 tv_weight: float) -> None:
        self.size = problem.mask.shape[0]
        self.inside = problem.mask.reshape(-1).nonzero()[:, 0]
        points = pixel_centres(self.size, self.size, problem.mask.device)[self.inside]
        self.fixed = FixedPointsField(field, points)
        self.matrix, self.matrix_t, self.target = problem.matrix, problem.matrix_t, target
        self.n_views = len(problem.theta_deg)
        self.loss_filter, self.tv_weight = loss_filter, tv_weight
        self.generators = {}

    def image(self, model: Field) -> Float[Tensor, "N N"]:
        """``model``'s values on the pixel grid, zero outside the disc."""
        values = self.fixed(model).reshape(-1)
        flat = torch.zeros(self.size * self.size, dtype=values.dtype, device=values.device)
        return flat.index_put((self.inside,), values).reshape(self.size, self.size)

    def loss(self, model: Field, step: int) -> tuple[Tensor, dict[str, float]]:
        img = self.image(model)
        residual = li.project(img, self.matrix, self.matrix_t) - self.target
        if self.loss_filter == "ramp":
            residual = ramp_filter(residual.reshape(self.n_views, self.size))
        data = residual.square().mean()
        loss = data + self.tv_weight * total_variation(img) if self.tv_weight > 0 else data
        return loss, {"data": float(data.detach())}


# ----------------------------------------------------------------------------- fit


@torch.no_grad()
def render(field: Field, size: int, value_scale: float) -> np.ndarray:
    """The field's attenuation image ``[N, N]`` (per pixel), zero outside the disc: float32 on the CPU."""
    device = next(field.parameters()).device
    img = render_grid(field, size, size, device=device)[..., 0] * value_scale
    return (img * disc_mask(size, device)).float().cpu().numpy()


def fit_ct(config: CTTaskConfig, out: str | Path, budget: Budget | None = None, *, resume: bool = False,
           progress: bool = True, device: str | None = None, given: tuple[str, ...] = (), overwrite: bool = False,
           checkpoint_seconds: float = 60.0) -> dict[str, Any]:
    """Fit the field of ``config`` and write checkpoint, reconstruction.png (16-bit),
    reconstruction.npy, comparison.png, psnr_vs_time.png, metrics.json and history.jsonl to
    ``out``. Returns the metrics (``stopped`` names the signal that ended the run early).

    ``budget`` None: 60 s of fitting time, or the stored budget when resuming."""
    from fieldcraft.runtime import default_device

    run = Run.open(out, TASK, config, resume=resume, given=given, budget=budget, default_budget=Budget(seconds=60.0),
                   device=device or default_device(), overwrite=overwrite)
    cfg: CTTaskConfig = run.config  # type: ignore[assignment]
    stored = run.meta.get("centre_of_rotation") if run.resumed else None
    problem = prepare(cfg, run.device, centre=(stored, run.meta.get("centre_source")) if stored is not None else None)
    base = baselines(problem, cfg.sart_iterations)
    n = cfg.size
    value_scale = float(run.meta["value_scale"]) if run.resumed else float(np.percentile(base["fbp"]["image"], 99.5))
    check(value_scale > 0, f"{cfg.source}: the FBP of the sinogram is not positive anywhere; is it -ln(I/I0)?")
    torch.manual_seed(cfg.seed)
    field = cfg.field.build().to(run.device)
    target = torch.from_numpy(problem.sinogram).reshape(-1).to(run.device) / (n / 2) / value_scale
    objective = SinogramResidual(field, problem, target, cfg.loss_filter, cfg.tv_weight)

    def evaluate(step: int) -> dict[str, float]:
        with torch.no_grad():
            image = (objective.image(field) * value_scale).cpu().numpy()
        return {"psnr": psnr(image, problem.reference, problem.data_range)}

    meta = {"value_scale": value_scale, "centre_of_rotation": problem.centre, "centre_source": problem.centre_source}
    trainer = run.trainer(field, objective, cfg.optimizer(), meta=meta, checkpoint_seconds=checkpoint_seconds,
                          evaluate=evaluate, evaluate_every_seconds=max(0.5, (run.budget.seconds or 20.0) / 60.0),
                          description=f"fit ct [{cfg.preset}]", progress=progress)
    outcome = trainer.run()
    field.eval()
    image = render(field, n, value_scale)
    metrics: dict[str, Any] = {
        "source": cfg.source, "size": n, "views": len(problem.theta_deg), "photons": cfg.photons, "preset": cfg.preset,
        "reference": problem.reference_name, "data_range": problem.data_range,
        "centre_of_rotation": problem.centre, "centre_source": problem.centre_source,
        "psnr": psnr(image, problem.reference, problem.data_range),
        "ssim": ssim(image, problem.reference, problem.data_range),
        "steps": outcome.step, "fit_seconds": outcome.seconds,
        "steps_per_second": outcome.step / outcome.seconds if outcome.seconds > 0 else None,
        "fbp_psnr": base["fbp"]["psnr"], "fbp_ssim": base["fbp"]["ssim"], "fbp_seconds": base["fbp"]["seconds"],
        "sart_psnr": base["sart"]["psnr"], "sart_ssim": base["sart"]["ssim"], "sart_seconds": base["sart"]["seconds"],
        "sart_iterations": cfg.sart_iterations, "setup_seconds": problem.setup_seconds, "value_scale": value_scale,
        "tv_weight": cfg.tv_weight, "device": str(run.device), "stopped": outcome.stopped,
        "headline": "psnr / ssim = the field's reconstruction; fbp_* and sart_* = the baselines on the same views",
        "psnr_definition": f"{PSNR_DEFINITION}; over the full N x N image, unclipped, against the {problem.reference_name}",
        "ssim_definition": SSIM_DEFINITION,
    }
    write_outputs(run.out, image, problem, base, metrics, outcome.history)
    return metrics


# ----------------------------------------------------------------------------- outputs


def write_outputs(out: Path, image: np.ndarray, problem: CTProblem, base: dict, metrics: dict, history: History) -> None:
    """reconstruction.png / .npy, metrics.json, comparison.png and psnr_vs_time.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vmax = float(problem.reference.max()) if problem.reference.max() > 0 else 1.0
    metrics["png_scale"] = f"reconstruction.png value 65535 = attenuation {vmax:.6g} per pixel"
    write_png(out / "reconstruction.png", image / vmax, bits=16)
    buf = io.BytesIO()
    np.save(buf, image)
    atomic_write_bytes(out / "reconstruction.npy", buf.getvalue())
    write_json(out / "metrics.json", metrics)

    k = metrics["views"]
    panels = [(problem.reference, problem.reference_name),
              (base["fbp"]["image"], f"FBP, {k} views: {metrics['fbp_psnr']:.2f} dB"),
              (base["sart"]["image"], f"SART, {k} views: {metrics['sart_psnr']:.2f} dB"),
              (image, f"field ({metrics['preset']}), {k} views: {metrics['psnr']:.2f} dB")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    for ax, (img, title) in zip(axes, panels):
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=vmax)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    _save_figure(fig, out / "comparison.png")

    secs = [s for s, v in zip(history.seconds, history.values) if math.isfinite(v.get("psnr", math.nan))]
    vals = [v["psnr"] for v in history.values if math.isfinite(v.get("psnr", math.nan))]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(secs, vals, label="field")
    ax.axhline(metrics["fbp_psnr"], color="C1", ls="--", label="FBP")
    ax.axhline(metrics["sart_psnr"], color="C2", ls=":", label=f"SART ({metrics['sart_iterations']} it.)")
    ax.set_xlabel("fitting time (s)")
    ax.set_ylabel(f"PSNR vs {problem.reference_name} (dB)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save_figure(fig, out / "psnr_vs_time.png")


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def load_fitted(directory: str | Path, device: str | None = None) -> tuple[Field, CTTaskConfig, float]:
    """Field (on ``device``), task config and value scale of a ``fit ct`` output directory."""
    from fieldcraft.runtime import default_device

    tensors, meta = load_checkpoint(Path(directory), device=device or default_device())
    check(meta.get("task") == TASK, f"{directory}: checkpoint is for task {meta.get('task')!r}, not 'ct'")
    with reading(directory, "checkpoint"):
        cfg = Config.from_dict(meta["config"])
        check(isinstance(cfg, CTTaskConfig), f"{directory}: the checkpoint's config is not a CT task config")
        scale = float(meta["value_scale"])
        check(math.isfinite(scale) and scale > 0, f"{directory}: malformed checkpoint: value_scale {scale} is not positive")
        field = build_loaded(cfg.field.build, tensors, "field")  # type: ignore[attr-defined]
    field.eval()
    return field, cfg, scale  # type: ignore[return-value]
