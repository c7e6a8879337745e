"""Functa: meta-learn one shared field whose per-signal latents are found by a few gradient steps,
then work on the latents (encode, interpolate, impute, sample, amortise).

Model and inner loop: :mod:`fieldcraft.latents.functa` (shift-modulated SIREN, Meta-SGD, MAML).
Data: any :func:`fieldcraft.datasets.open_images` source; all images of a run have one size.

- ``fit functa SRC --out DIR``: the outer loop on the training core (one step = one meta-batch
  of signals: inner loop, post-inner-loop MSE, Adam on the shared weights, the latent-to-shift
  map and the inner step sizes). At the end (unless stopped early) the training set is encoded
  to ``DIR/latents.safetensors`` and a DDPM prior on those latents is fitted in ``DIR/prior``
  (:func:`fit_prior`; ``prior_steps`` 0 skips it).
- ``encode functa DIR SRC --out OUT``: inner loop only, batched over signals (chunks of
  ``batch_size`` signals, no loop over signals), or a CNN encoder (:func:`fit_functa_encoder`)
  optionally refined by inner steps. ``--observe`` fits only some pixels (imputation) and
  reconstructs all.
- ``render functa DIR --interpolate I J``, ``sample functa DIR``: strips and grids of decoded latents.

Metrics: :mod:`fieldcraft.metrics` PSNR of each 16-bit reconstruction (as written) against the
dataset's image, averaged over images (``mean_psnr``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from fieldcraft.config import Config
from fieldcraft.coords import pixel_centres
from fieldcraft.errors import FieldcraftError, check
from fieldcraft.io.checkpoint import CHECKPOINT_NAME, build_loaded, load_checkpoint
from fieldcraft.io.images import dequantize, quantize, write_png
from fieldcraft.io.records import write_json
from fieldcraft.latents.diffusion import DiffusionConfig, LatentDiffusion
from fieldcraft.latents.encoder import CnnEncoder, CnnEncoderConfig
from fieldcraft.latents.functa import Functa, FunctaNetConfig, observation_mask, signal_mse
from fieldcraft.latents.store import read_latents, write_latents
from fieldcraft.metrics import PSNR_DEFINITION, psnr, psnr_from_mse
from fieldcraft.train import Budget, Objective, OptimizerConfig, Run, ScheduleConfig
from fieldcraft.train.distributed import shard

TASK = "functa"
PRIOR_TASK = "functa-prior"
ENCODER_TASK = "functa-encoder"
PRIOR_DIR = "prior"
CACHE_BYTES = 1 << 30  # datasets up to this size (float32) are read once and kept in memory


@dataclasses.dataclass(frozen=True)
class FunctaFitConfig(Config):
    """Everything that defines a functa fit (saved in the checkpoint).

    - ``source``, ``limit``: the training images (:func:`fieldcraft.datasets.open_images`).
    - ``latent``, ``width``, ``layers``, ``omega``, ``meta_sgd``: the network (:class:`FunctaNetConfig`).
    - ``inner_steps``: inner-loop steps of the meta-learning (the paper's 3).
    - ``encode_steps``: inner-loop steps when encoding (``encode functa``'s default, the training
      set's latents, interpolation); more than ``inner_steps`` (the Meta-SGD step sizes keep
      lowering the error past the trained horizon; docs/fields_as_data.md has the figures).
    - ``first_order``: first-order MAML (inner gradients treated as constants).
    - ``batch_size``: signals per outer step (meta-batch); ``lr``: outer Adam learning rate,
      cosine decay to 0.1x over the budget.
    - ``seed``: initialisation and meta-batches.
    - ``prior_steps``: steps of the DDPM prior fitted at the end (0: none).
    """

    type_name = "FunctaFit"
    source: str = "sample:mnist-5k"
    limit: int | None = None
    latent: int = 64
    width: int = 128
    layers: int = 3
    omega: float = 30.0
    meta_sgd: bool = True
    inner_steps: int = 3
    encode_steps: int = 10
    first_order: bool = False
    batch_size: int = 32
    lr: float = 5e-4
    seed: int = 0
    prior_steps: int = 20000

    def network(self, channels: int) -> FunctaNetConfig:
        return FunctaNetConfig(channels=channels, latent=self.latent, width=self.width, layers=self.layers,
                               omega=self.omega, meta_sgd=self.meta_sgd)

    def optimizer(self) -> OptimizerConfig:
        return OptimizerConfig(lr=self.lr, schedule=ScheduleConfig(kind="cosine", final_factor=0.1))


def encode_steps(meta: dict[str, Any]) -> int:
    """The encoding inner steps of a fit (its checkpoint header)."""
    config = meta["config"]
    return int(config.get("encode_steps", config["inner_steps"]))


class Images:
    """A dataset's images as ``[b, H*W, C]`` tensors on ``device``: read once when they fit in
    :data:`CACHE_BYTES`, else read per request."""

    def __init__(self, source: str, limit: int | None, device: torch.device) -> None:
        from fieldcraft.datasets import open_images

        self.ds = open_images(source, limit)
        self.device = device
        h, w, c = self.ds.shape
        self.cache = None
        if len(self.ds) * h * w * c * 4 <= CACHE_BYTES:
            self.cache = torch.from_numpy(self.ds.read(np.arange(len(self.ds)))).reshape(len(self.ds), h * w, c).to(device)

    def __len__(self) -> int:
        return len(self.ds)

    def __call__(self, idx: Tensor | np.ndarray) -> Float[Tensor, "b n C"]:
        if self.cache is not None:
            return self.cache[torch.as_tensor(idx, device=self.device)]
        h, w, c = self.ds.shape
        x = self.ds.read(np.asarray(torch.as_tensor(idx).cpu()))
        return torch.from_numpy(x).reshape(len(x), h * w, c).to(self.device)

    def info(self) -> dict[str, Any]:
        h, w, c = self.ds.shape
        return {"source": self.ds.source, "count": len(self.ds), "height": h, "width": w, "channels": c,
                "labels": self.ds.labels is not None}


class MetaLearning(Objective):
    """The outer loss: mean post-inner-loop MSE of ``batch_size`` signals drawn at random."""

    def __init__(self, images: Images, coords: Float[Tensor, "n 2"], config: FunctaFitConfig) -> None:
        self.images, self.coords, self.config = images, coords, config
        self.generators = {"batches": torch.Generator().manual_seed(config.seed)}

    def loss(self, model: Functa, step: int) -> tuple[Tensor, dict[str, float]]:
        c = self.config
        idx = torch.randint(0, len(self.images), (c.batch_size,), generator=self.generators["batches"])
        part = shard(len(idx))  # this rank's signals of the global batch (all of them in one process)
        y = self.images(idx[part.slice])
        z = model.inner_loop(y, self.coords, c.inner_steps, create_graph=not c.first_order)
        err = signal_mse(model(z, self.coords), y)
        return err.mean() * part.fraction, {"psnr": mean_psnr(err)}


def mean_psnr(mse: Float[Tensor, " B"]) -> float:
    """Mean over signals of each signal's PSNR (:func:`fieldcraft.metrics.psnr_from_mse`)."""
    return float(np.mean([psnr_from_mse(v) for v in mse.detach().double().cpu().tolist()]))


def fit_functa(config: FunctaFitConfig, out: Path, budget: Budget | None = None, *, resume: bool = False,
               progress: bool = True, device: str | None = None, given: tuple[str, ...] = (),
               overwrite: bool = False, checkpoint_seconds: float = 60.0) -> dict[str, Any]:
    """Meta-learn a functa on ``config.source``; write checkpoint, history.jsonl, psnr_curve.png,
    latents.safetensors (the training set encoded), prior/ (DDPM on those latents) and
    metrics.json to ``out``. ``budget`` None: 1200 s of fitting, or the stored budget on resume."""
    from fieldcraft.io.plots import plot_curve
    from fieldcraft.runtime import default_device

    run = Run.open(out, TASK, config, resume=resume, given=given, budget=budget, default_budget=Budget(seconds=1200),
                   device=device or default_device(), overwrite=overwrite)
    config = run.config  # type: ignore[assignment]
    check(config.inner_steps >= 0 and config.encode_steps >= 1 and config.batch_size >= 1,
          "--inner-steps must be >= 0, --encode-steps and --batch-size >= 1")
    images = Images(config.source, config.limit, run.device)
    h, w, c = images.ds.shape
    net = Config.from_dict(run.meta["network"]) if run.resumed else config.network(c)
    torch.manual_seed(config.seed)
    model = net.build().to(run.device)
    coords = pixel_centres(h, w, run.device)
    objective = MetaLearning(images, coords, config)
    order = "first-order" if config.first_order else "second-order"
    trainer = run.trainer(model, objective, config.optimizer(), meta={"network": net.to_dict(), "data": images.info()},
                          prefix="model", checkpoint_seconds=checkpoint_seconds, progress=progress,
                          description=f"fit functa [{config.latent}-d, {config.inner_steps} steps, {order}]")
    start = trainer.step
    outcome = trainer.run()
    model.eval()
    metrics: dict[str, Any] = {"steps": outcome.step, "fit_seconds": outcome.seconds, "signals": len(images),
                               "latent": net.latent, "inner_steps": config.inner_steps,
                               "encode_steps": config.encode_steps, "order": order,
                               "device": str(run.device), "stopped": outcome.stopped}
    if outcome.stopped is None:
        t0 = time.perf_counter()
        z, err = encode_all(model, images, coords, config.encode_steps, progress=progress)
        write_latents(run.out / "latents.safetensors", z, images.ds.labels,
                      {"source": images.ds.source, "names": images.ds.names, "functa": str(run.out.resolve())})
        metrics.update({"train_mean_psnr": mean_psnr(torch.from_numpy(err)), "train_encode_seconds": time.perf_counter() - t0,
                        "psnr_definition": f"mean over training images of each image's PSNR after {config.encode_steps} "
                                           "inner steps (unquantised), "
                                           + PSNR_DEFINITION})
        if config.prior_steps > 0:  # a prior of these very latents is continued, else one is started
            same = outcome.step == start and (run.out / PRIOR_DIR / CHECKPOINT_NAME).exists()
            metrics["prior"] = fit_prior(run.out, Budget(steps=config.prior_steps), resume=same, progress=progress,
                                         device=str(run.device), overwrite=True, seed=config.seed)
    write_json(run.out / "metrics.json", metrics)
    history = outcome.history
    if history.seconds:
        plot_curve(run.out / "psnr_curve.png", history.steps, history.column("psnr"), xlabel="outer step",
                   ylabel="post-inner-loop PSNR of the meta-batch (dB)", title=f"functa {images.ds.source}")
    return metrics


@torch.no_grad()
def encode_all(model: Functa, images: Images, coords: Tensor, steps: int, batch_size: int = 500,
               progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Latents ``[N, latent]`` and per-signal MSE ``[N]`` (unquantised) of every image, by the inner loop."""
    from tqdm.auto import tqdm

    zs, errs = [], []
    for lo in tqdm(range(0, len(images), batch_size), desc="encode", disable=not progress, leave=False):
        y = images(np.arange(lo, min(lo + batch_size, len(images))))
        z = model.inner_loop(y, coords, steps).detach()
        zs.append(z.cpu())
        errs.append(signal_mse(model(z, coords), y).cpu())
    return torch.cat(zs).numpy(), torch.cat(errs).double().numpy()


# --- loading


def load_functa(directory: Path, device: str | None = None) -> tuple[Functa, dict[str, Any]]:
    """The meta-learned functa of a ``fit functa`` directory, and its checkpoint header."""
    from fieldcraft.runtime import default_device

    tensors, meta = load_checkpoint(directory, device=device or default_device())
    check(meta.get("task") == TASK, f"{directory}: checkpoint is for task {meta.get('task')!r}, not functa")
    net = Config.from_dict(meta["network"])
    check(isinstance(net, FunctaNetConfig), f"{directory}: checkpoint network is not a functa")
    model = build_loaded(net.build, tensors, "model")
    model.eval()
    return model, meta


def load_prior(directory: Path, device: str | None = None) -> LatentDiffusion:
    from fieldcraft.runtime import default_device

    path = Path(directory) / PRIOR_DIR
    check((path / CHECKPOINT_NAME).exists(), f"{directory}: no prior here ({PRIOR_DIR}/{CHECKPOINT_NAME}); "
                                             f"fit one with 'fieldcraft fit functa-prior {directory}'")
    tensors, meta = load_checkpoint(path, device=device or default_device())
    check(meta.get("task") == PRIOR_TASK, f"{path}: checkpoint is for task {meta.get('task')!r}, not functa-prior")
    model = build_loaded(Config.from_dict(meta["diffusion"]).build, tensors, "model")
    model.eval()
    return model


def load_encoder(directory: Path, device: str | None = None) -> tuple[CnnEncoder, dict[str, Any]]:
    from fieldcraft.runtime import default_device

    tensors, meta = load_checkpoint(directory, device=device or default_device())
    check(meta.get("task") == ENCODER_TASK, f"{directory}: checkpoint is for task {meta.get('task')!r}, "
                                            "not functa-encoder")
    model = build_loaded(Config.from_dict(meta["encoder"]).build, tensors, "model")
    model.eval()
    return model, meta


# --- encoding


def encode_functa(functa_dir: Path, source: str, out: Path, *, limit: int | None = None, observe: str | None = None,
                  inner_steps: int | None = None, encoder: Path | None = None, batch_size: int = 500, seed: int = 0,
                  device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Encode every image of ``source`` with the functa of ``functa_dir``; write
    ``out/latents.safetensors``, ``out/reconstructions/<name>.png`` (16-bit) and ``out/metrics.json``.

    ``inner_steps``: None = the fit's ``encode_steps`` (0 with an ``encoder``). ``observe``: fit only these pixels
    (:func:`fieldcraft.latents.functa.observation_mask`; the random mask of image ``i`` is seeded
    with ``seed`` and ``i``); PSNR is then reported over all pixels (``mean_psnr``), the observed
    and the unobserved ones. ``encoder``: a ``fit functa-encoder`` directory whose CNN gives the
    starting latents (amortised encoding)."""
    from tqdm.auto import tqdm

    model, meta = load_functa(functa_dir, device)
    dev = next(model.parameters()).device
    images = Images(source, limit, dev)
    h, w, c = images.ds.shape
    check(c == model.config.channels, f"{source}: images have {c} channels, the functa in {functa_dir} "
                                      f"{model.config.channels}")
    data = meta["data"]
    if (h, w) != (data["height"], data["width"]):
        raise FieldcraftError(f"{source}: images are {w}x{h}, the functa in {functa_dir} was fitted to "
                              f"{data['width']}x{data['height']} images")
    cnn = None
    if encoder is not None:
        cnn, enc_meta = load_encoder(encoder, str(dev))
        check(cnn.config.latent == model.config.latent, f"{encoder}: encoder outputs {cnn.config.latent}-d latents, "
                                                       f"the functa's are {model.config.latent}-d")
    steps = inner_steps if inner_steps is not None else (0 if cnn is not None else encode_steps(meta))
    check(steps >= 0, f"--inner-steps must be >= 0, got {steps}")
    check(steps > 0 or cnn is not None, "--inner-steps 0 needs an --encoder (else every latent is 0)")
    coords = pixel_centres(h, w, dev)
    out = Path(out)
    (out / "reconstructions").mkdir(parents=True, exist_ok=True)
    names = images.ds.names
    zs, rows = [], []
    seconds = 0.0
    for lo in tqdm(range(0, len(images), batch_size), desc="encode functa", disable=not progress):
        idx = np.arange(lo, min(lo + batch_size, len(images)))
        y = images(idx)
        mask = observation_mask(observe, h, w, torch.from_numpy(idx + seed * 1_000_003))
        mask = None if mask is None else mask.to(dev)
        t0 = time.perf_counter()
        with torch.no_grad():
            z0 = cnn(y.reshape(len(idx), h, w, c)) if cnn is not None else None
        z = model.inner_loop(y, coords, steps, mask, z0=z0).detach() if steps > 0 else z0
        recon = model.render(z, h, w)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        zs.append(z.cpu().numpy())
        recon = dequantize(quantize(recon.cpu().numpy(), 16))  # exactly what the PNGs hold
        target = y.reshape(len(idx), h, w, c).cpu().numpy()
        m = None if mask is None else mask.reshape(len(idx), h, w).cpu().numpy() > 0
        for k, i in enumerate(idx):
            write_png(out / "reconstructions" / f"{names[i]}.png", recon[k], bits=16)
            row = {"name": names[i], "psnr": psnr(target[k], recon[k])}
            if m is not None:
                row["psnr_observed"] = psnr(target[k][m[k]], recon[k][m[k]]) if m[k].any() else math.nan
                row["psnr_unobserved"] = psnr(target[k][~m[k]], recon[k][~m[k]]) if (~m[k]).any() else math.nan
            rows.append(row)
    z_all = np.concatenate(zs) if zs else np.zeros((0, model.config.latent), np.float32)
    write_latents(out / "latents.safetensors", z_all, images.ds.labels,
                  {"source": images.ds.source, "names": names, "functa": str(Path(functa_dir).resolve()),
                   "inner_steps": steps, "observe": observe or "all"})
    metrics: dict[str, Any] = {
        "mean_psnr": _nanmean([r["psnr"] for r in rows]), "count": len(rows), "source": images.ds.source,
        "functa": str(functa_dir), "inner_steps": steps, "encoder": None if encoder is None else str(encoder),
        "observe": observe or "all", "seconds": seconds, "seconds_per_signal": seconds / max(len(rows), 1),
        "device": str(dev),
        "psnr_definition": "per image: PSNR of the 16-bit reconstruction against the dataset's image over all pixels "
                           "(and, with --observe, over the observed / unobserved pixels); mean_psnr: mean over "
                           "images; " + PSNR_DEFINITION,
        "timing": "seconds: encoding and decoding only (no reading or writing files)"}
    if observe not in (None, "", "all"):
        metrics["mean_psnr_observed"] = _nanmean([r["psnr_observed"] for r in rows])
        metrics["mean_psnr_unobserved"] = _nanmean([r["psnr_unobserved"] for r in rows])
    metrics["per_image"] = rows
    write_json(out / "metrics.json", metrics)
    return metrics


def _nanmean(values: list[float]) -> float:
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    return float(np.mean(v)) if v.size else math.nan


# --- working on latents


def interpolate(functa_dir: Path, source: str, i: int, j: int, out: Path, *, frames: int = 8,
                size: int | None = None, device: str | None = None) -> np.ndarray:
    """Encode images ``i`` and ``j`` of ``source``, decode ``frames`` latents evenly spaced on the
    segment between them (ends included) at ``size`` (the longer side; default the images'), and
    write them side by side to the PNG ``out``. Returns the strip ``[H, frames * W, C]``."""
    from fieldcraft.datasets import open_images

    check(frames >= 2, f"--frames must be >= 2, got {frames}")
    model, meta = load_functa(functa_dir, device)
    dev = next(model.parameters()).device
    ds = open_images(source)
    check(0 <= i < len(ds) and 0 <= j < len(ds), f"--interpolate {i} {j}: {source} has images 0..{len(ds) - 1}")
    h, w, c = ds.shape
    check((h, w, c) == (meta["data"]["height"], meta["data"]["width"], meta["data"]["channels"]),
          f"{source}: images are {w}x{h}x{c}, the functa's {meta['data']['width']}x{meta['data']['height']}x"
          f"{meta['data']['channels']}")
    y = torch.from_numpy(ds.read([i, j])).reshape(2, h * w, c).to(dev)
    z = model.inner_loop(y, pixel_centres(h, w, dev), encode_steps(meta)).detach()
    t = torch.linspace(0, 1, frames, device=dev)[:, None]
    zt = (1 - t) * z[0] + t * z[1]
    H, W = _render_size(h, w, size)
    strip = model.render(zt, H, W).cpu().numpy()  # [frames, H, W, C]
    strip = np.concatenate(list(strip), axis=1)
    write_png(out, strip, bits=8)
    return strip


def sample_functa(functa_dir: Path, n: int, out: Path, *, seed: int = 0, size: int | None = None,
                  device: str | None = None) -> np.ndarray:
    """Draw ``n`` latents from the prior of ``functa_dir``, decode them at ``size`` and write a grid PNG."""
    check(n >= 1, f"--n must be >= 1, got {n}")
    model, meta = load_functa(functa_dir, device)
    dev = next(model.parameters()).device
    prior = load_prior(functa_dir, str(dev))
    z = prior.sample(n, generator=torch.Generator().manual_seed(seed))
    H, W = _render_size(meta["data"]["height"], meta["data"]["width"], size)
    grid = image_grid(model.render(z, H, W).cpu().numpy())
    write_png(out, grid, bits=8)
    return grid


def _render_size(h: int, w: int, size: int | None) -> tuple[int, int]:
    if size is None:
        return h, w
    check(size >= 1, f"--size must be >= 1, got {size}")
    scale = size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def image_grid(images: np.ndarray, columns: int | None = None, pad: int = 1) -> np.ndarray:
    """``[N, H, W, C]`` images tiled row by row (``columns``: default ``ceil(sqrt(N))``), ``pad`` pixels of 1 between.

    >>> image_grid(np.zeros((3, 2, 2, 1))).shape
    (5, 5, 1)
    """
    n, h, w, c = images.shape
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.ones((rows * (h + pad) - pad, cols * (w + pad) - pad, c), np.float32)
    for k in range(n):
        r, q = divmod(k, cols)
        grid[r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = images[k]
    return grid


# --- the prior


@dataclasses.dataclass(frozen=True)
class PriorFitConfig(Config):
    """A DDPM prior on a functa's training latents (``DIR/latents.safetensors``)."""

    type_name = "FunctaPriorFit"
    width: int = 256
    layers: int = 3
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0

    def optimizer(self) -> OptimizerConfig:
        return OptimizerConfig(lr=self.lr, schedule=ScheduleConfig(kind="cosine", final_factor=0.05))


class DenoisingObjective(Objective):
    def __init__(self, latents: Tensor, config: PriorFitConfig) -> None:
        self.latents, self.config = latents, config
        self.generators = {"batches": torch.Generator().manual_seed(config.seed)}

    def loss(self, model: LatentDiffusion, step: int) -> tuple[Tensor, dict[str, float]]:
        g = self.generators["batches"]
        idx = torch.randint(0, len(self.latents), (self.config.batch_size,), generator=g)
        return model.loss(self.latents[idx.to(self.latents.device)], generator=g), {}


def fit_prior(functa_dir: Path, budget: Budget | None = None, *, resume: bool = False, progress: bool = True,
              device: str | None = None, given: tuple[str, ...] = (), overwrite: bool = False, seed: int = 0,
              config: PriorFitConfig | None = None, checkpoint_seconds: float = 60.0) -> dict[str, Any]:
    """Fit the DDPM prior of ``functa_dir/latents.safetensors`` into ``functa_dir/prior``."""
    from fieldcraft.runtime import default_device

    config = config or PriorFitConfig(seed=seed)
    run = Run.open(Path(functa_dir) / PRIOR_DIR, PRIOR_TASK, config, resume=resume, given=given, budget=budget,
                   default_budget=Budget(steps=20000), device=device or default_device(), overwrite=overwrite)
    config = run.config  # type: ignore[assignment]
    z, _, _ = read_latents(Path(functa_dir) / "latents.safetensors")
    latents = torch.from_numpy(z).to(run.device)
    diffusion = (Config.from_dict(run.meta["diffusion"]) if run.resumed
                 else DiffusionConfig(dim=z.shape[1], width=config.width, layers=config.layers))
    torch.manual_seed(config.seed)
    model = diffusion.build().to(run.device)
    model.set_statistics(latents)
    trainer = run.trainer(model, DenoisingObjective(latents, config), config.optimizer(),
                          meta={"diffusion": diffusion.to_dict()}, prefix="model", log_every=50,
                          checkpoint_seconds=checkpoint_seconds, progress=progress, description="fit functa prior")
    outcome = trainer.run()
    losses = outcome.history.column("loss")
    return {"steps": outcome.step, "fit_seconds": outcome.seconds, "final_loss": losses[-1] if losses else None,
            "stopped": outcome.stopped}


# --- the hypernetwork (amortised encoder)


@dataclasses.dataclass(frozen=True)
class EncoderFitConfig(Config):
    """A CNN trained to map images of ``source`` to latents of the functa in ``functa`` (frozen)."""

    type_name = "FunctaEncoderFit"
    functa: str = ""
    source: str = "sample:mnist-5k"
    limit: int | None = None
    features: int = 32
    hidden: int = 256
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0

    def optimizer(self) -> OptimizerConfig:
        return OptimizerConfig(lr=self.lr, schedule=ScheduleConfig(kind="cosine", final_factor=0.05))


class AmortisedEncoding(Objective):
    """MSE of the frozen functa's decoding of the CNN's latents, on random batches of images."""

    def __init__(self, functa: Functa, images: Images, coords: Tensor, config: EncoderFitConfig) -> None:
        self.functa, self.images, self.coords, self.config = functa, images, coords, config
        self.generators = {"batches": torch.Generator().manual_seed(config.seed)}

    def loss(self, model: CnnEncoder, step: int) -> tuple[Tensor, dict[str, float]]:
        h, w, c = self.images.ds.shape
        idx = torch.randint(0, len(self.images), (self.config.batch_size,), generator=self.generators["batches"])
        y = self.images(idx)
        err = signal_mse(self.functa(model(y.reshape(len(idx), h, w, c)), self.coords), y)
        return err.mean(), {"psnr": mean_psnr(err)}


def fit_functa_encoder(config: EncoderFitConfig, out: Path, budget: Budget | None = None, *, resume: bool = False,
                       progress: bool = True, device: str | None = None, given: tuple[str, ...] = (),
                       overwrite: bool = False, checkpoint_seconds: float = 60.0) -> dict[str, Any]:
    """Train a CNN encoder for the functa of ``config.functa``; write checkpoint and metrics.json to ``out``."""
    from fieldcraft.runtime import default_device

    run = Run.open(out, ENCODER_TASK, config, resume=resume, given=given, budget=budget,
                   default_budget=Budget(steps=3000), device=device or default_device(), overwrite=overwrite)
    config = run.config  # type: ignore[assignment]
    functa, meta = load_functa(Path(config.functa), str(run.device))
    functa.requires_grad_(False)
    images = Images(config.source, config.limit, run.device)
    h, w, c = images.ds.shape
    check((h, w, c) == (meta["data"]["height"], meta["data"]["width"], meta["data"]["channels"]),
          f"{config.source}: images are {w}x{h}x{c}, the functa's {meta['data']['width']}x{meta['data']['height']}x"
          f"{meta['data']['channels']}")
    enc = (Config.from_dict(run.meta["encoder"]) if run.resumed
           else CnnEncoderConfig(channels=c, latent=functa.config.latent, features=config.features, hidden=config.hidden))
    torch.manual_seed(config.seed)
    model = enc.build().to(run.device)
    objective = AmortisedEncoding(functa, images, pixel_centres(h, w, run.device), config)
    trainer = run.trainer(model, objective, config.optimizer(), meta={"encoder": enc.to_dict(), "functa": config.functa},
                          prefix="model", checkpoint_seconds=checkpoint_seconds, progress=progress,
                          description="fit functa encoder (CNN)")
    outcome = trainer.run()
    ps = outcome.history.column("psnr")
    metrics = {"steps": outcome.step, "fit_seconds": outcome.seconds, "train_psnr_last": ps[-1] if ps else None,
               "device": str(run.device), "stopped": outcome.stopped}
    write_json(run.out / "metrics.json", metrics)
    return metrics
