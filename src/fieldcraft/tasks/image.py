"""Image fields: fit ``f(x, y) -> colour`` to an image, query it at any resolution.

Task = data (the image's pixels at :func:`fieldcraft.coords.pixel_centres`) + field + identity
forward model + MSE loss; the training core (:mod:`fieldcraft.train`) does the rest.

Conventions (see docs/images.md):

- Coordinates: :mod:`fieldcraft.coords` (both axes span ``[-1, 1]``, x right, y down).
  Rendering at ``W' x H'`` queries the pixel centres of a ``W' x H'`` grid over the same
  square, so it is super-resolution (or down-sampling) of one field.
- Values are the image's channels in ``[0, 1]`` (1 gray, 3 RGB, 4 RGBA).
- The fitted target is the (resized) image rounded to 16-bit codes; ``target.png`` stores
  exactly those codes, so ``reconstruction.png`` (16-bit) can be compared with it.
- Metrics (:mod:`fieldcraft.metrics`): PSNR over all pixels and channels; SSIM with the
  papers' 11x11 Gaussian window. When pixels are held out (``--protocol every-other-pixel``,
  ``--train-fraction``, ``--mask``) the headline ``psnr`` is the held-out pixels' PSNR, reported
  beside ``psnr_heldout_cubic``: the same pixels predicted by cubic interpolation of the
  training pixels (bicubic on the every-other-pixel grid, Clough-Tocher for scattered pixels).
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
from fieldcraft.coords import pixel_centres
from fieldcraft.data.images import load_image
from fieldcraft.errors import check, reading
from fieldcraft.fields import Field, FieldConfig, image_field_config
from fieldcraft.fields.presets import IMAGE_PRESET_OPTIMIZATION
from fieldcraft.io.checkpoint import build_loaded, load_checkpoint
from fieldcraft.io.images import read_png, write_png
from fieldcraft.io.plots import plot_curve
from fieldcraft.io.records import write_json
from fieldcraft.metrics import PSNR_DEFINITION, SSIM_DEFINITION, psnr, psnr_from_mse, ssim
from fieldcraft.render.grid import render_grid
from fieldcraft.train import Budget, History, Objective, OptimizerConfig, Run, ScheduleConfig

TASK = "image"
PROTOCOLS = ("all", "every-other-pixel")


@dataclasses.dataclass(frozen=True)
class ImageFitConfig(Config):
    """Everything that defines an image fit (saved in the checkpoint).

    - ``source``: image path or ``sample:NAME``.
    - ``preset``: field preset (see :mod:`fieldcraft.fields.presets`).
    - ``size``: resize the longer side to this many pixels (None: keep).
    - ``seed``: seeds the field initialisation, pixel subsets and batches.
    - ``lr``: Adam learning rate (None: the preset's).
    - ``train_fraction``: fit on this random fraction of pixels, hold out the rest.
    - ``mask``: PNG of the image's size; non-zero pixels are fitted, zero pixels held out.
    - ``protocol``: ``all`` or ``every-other-pixel`` (Tancik et al. 2020: centre-crop to a square,
      resize to 512 x 512, fit the 256 x 256 pixels with even row and column, test on all).
    - ``batch_size``: pixels per step (all training pixels when fewer).
    - ``lr_decay``: the learning rate at step ``i`` is ``lr * lr_decay^i`` (None: the preset's,
      0.998 for ``hash`` (halves every ~350 steps; keeps Adam from oscillating once the error
      nears float precision), 1 for the others).
    """

    type_name = "ImageFit"
    source: str = "sample:camera"
    preset: str = "hash"
    size: int | None = None
    seed: int = 0
    lr: float | None = None
    train_fraction: float = 1.0
    mask: str | None = None
    protocol: str = "all"
    batch_size: int = 1 << 18
    lr_decay: float | None = None

    def optimizer(self) -> OptimizerConfig:
        """Adam with the preset's learning rate and per-step decay unless given."""
        lr, decay = IMAGE_PRESET_OPTIMIZATION.get(self.preset, (1e-3, 1.0))
        lr = self.lr if self.lr is not None else lr
        decay = self.lr_decay if self.lr_decay is not None else decay
        return OptimizerConfig(lr=lr, schedule=ScheduleConfig(kind="per_step", decay_per_step=decay))


class PixelRegression(Objective):
    """MSE between the field at training pixel centres ``x`` ``[n, 2]`` and their values ``y`` ``[n, C]``,
    on random batches of ``batch_size`` pixels (all of them when fewer)."""

    def __init__(self, x: Float[Tensor, "n 2"], y: Float[Tensor, "n c"], batch_size: int, seed: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generators = {"batches": torch.Generator(device="cpu").manual_seed(seed)}

    def loss(self, model: Field, step: int) -> tuple[Tensor, dict[str, float]]:
        n = self.x.shape[0]
        if n <= self.batch_size:
            x, y = self.x, self.y
        else:
            idx = torch.randint(0, n, (self.batch_size,), generator=self.generators["batches"]).to(self.x.device)
            x, y = self.x[idx], self.y[idx]
        loss = torch.mean((model(x) - y) ** 2)
        return loss, {"psnr": psnr_from_mse(float(loss.detach()))}


def render_field(field: Field, height: int, width: int, chunk: int = 1 << 18) -> np.ndarray:
    """Evaluate ``field`` at the pixel centres of ``height x width``: float32 ``[H, W, C]`` (on the CPU)."""
    p = next(field.parameters())
    return render_grid(field, height, width, device=p.device, chunk=chunk).float().cpu().numpy()


def field_derivative(field: Field, xy: Float[Tensor, "n 2"], kind: str) -> Float[Tensor, " n"]:
    """``|grad f|`` (``kind="grad"``: Euclidean norm over x, y and channels) or the Laplacian
    ``d2f/dx2 + d2f/dy2`` summed over channels (``kind="laplace"``) at points ``xy``, by autograd."""
    check(kind in ("grad", "laplace"), f"--derivative must be grad or laplace, got {kind!r}")
    xy = xy.detach().clone().requires_grad_(True)
    y = field(xy)
    grads = [torch.autograd.grad(y[:, c].sum(), xy, create_graph=kind == "laplace", retain_graph=True)[0]
             for c in range(y.shape[1])]
    if kind == "grad":
        return torch.sqrt(sum((g**2).sum(-1) for g in grads)).detach()
    lap = torch.zeros(xy.shape[0], device=xy.device, dtype=xy.dtype)
    for g in grads:
        for d in range(2):
            lap = lap + torch.autograd.grad(g[:, d].sum(), xy, retain_graph=True)[0][:, d]
    return lap.detach()


def render_derivative(field: Field, height: int, width: int, kind: str, chunk: int = 1 << 16) -> np.ndarray:
    """:func:`field_derivative` at the pixel centres of ``height x width``: ``[H, W]`` array, in
    units of ``[0, 1]`` intensity per unit of normalised coordinate (the image spans 2 units)."""
    p = next(field.parameters())
    xy_all = pixel_centres(height, width, p.device, p.dtype)
    out = [field_derivative(field, xy_all[i:i + chunk], kind) for i in range(0, xy_all.shape[0], chunk)]
    return torch.cat(out).reshape(height, width).cpu().numpy()


def train_mask(config: ImageFitConfig, height: int, width: int) -> np.ndarray:
    """Boolean ``[H, W]``: True where pixels are fitted (the rest are held out)."""
    check(0.0 < config.train_fraction <= 1.0, f"--train-fraction must be in (0, 1], got {config.train_fraction}")
    mask = np.ones((height, width), bool)
    if config.protocol == "every-other-pixel":
        mask[:] = False
        mask[::2, ::2] = True
    if config.mask is not None:
        user = load_image(config.mask).pixels[..., 0] > 0
        check(user.shape == (height, width),
              f"{config.mask}: mask is {user.shape[1]}x{user.shape[0]}, image is {width}x{height} (after --size)")
        mask &= user
    if config.train_fraction < 1.0:
        rng = np.random.default_rng(config.seed)
        mask &= rng.random((height, width)) < config.train_fraction
    check(mask.any(), "no training pixels left (mask / --train-fraction selected none)")
    return mask


def load_target(config: ImageFitConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """The fitted target (16-bit-rounded floats ``[H, W, C]``) and its description."""
    check(config.protocol in PROTOCOLS, f"--protocol must be one of {', '.join(PROTOCOLS)}, got {config.protocol!r}")
    if config.protocol == "every-other-pixel":
        image = load_image(config.source, size=config.size or 512, square=True)
    else:
        image = load_image(config.source, size=config.size)
    target = np.rint(image.pixels.astype(np.float64) * 65535.0) / 65535.0
    h, w, c = target.shape
    info = {"source": image.source, "height": h, "width": w, "channels": c,
            "value_range": list(image.value_range), "bit_depth": image.bit_depth}
    return target.astype(np.float32), info


def fit_image(config: ImageFitConfig, out: Path, budget: Budget | None = None, *, resume: bool = False,
              progress: bool = True, device: str | None = None, given: tuple[str, ...] = (),
              overwrite: bool = False, checkpoint_seconds: float = 60.0) -> dict[str, Any]:
    """Fit an image field and write checkpoint, target.png, reconstruction.png, metrics.json,
    psnr_curve.png and history.jsonl to ``out``. Returns the metrics (``stopped`` names the signal
    that ended the run early, if one did).

    ``budget`` None: 2000 steps, or the stored budget when resuming. ``given``: the option names
    the user set (on resume, stored settings are kept and the differing given ones reported)."""
    from fieldcraft.runtime import default_device

    preset_lr, preset_decay = IMAGE_PRESET_OPTIMIZATION.get(config.preset, (1e-3, 1.0))
    config = config.replace(lr=preset_lr if config.lr is None else config.lr,  # stored explicitly
                            lr_decay=preset_decay if config.lr_decay is None else config.lr_decay)
    run = Run.open(out, TASK, config, resume=resume, given=given, budget=budget, default_budget=Budget(steps=2000),
                   device=device or default_device(), overwrite=overwrite)
    config = run.config  # type: ignore[assignment]
    target, info = load_target(config)
    h, w, c = target.shape
    mask = train_mask(config, h, w)
    if run.resumed:
        field_config = Config.from_dict(run.meta["field"])
    else:  # grid presets size their finest level to the density of the fitted pixels
        density = math.sqrt(mask.mean())
        field_config = image_field_config(config.preset, c, resolution=max(8, round(max(h, w) * density)),
                                          seed=config.seed)
    torch.manual_seed(config.seed)
    field = field_config.build().to(run.device)
    write_png(run.out / "target.png", target, bits=16)
    coords = pixel_centres(h, w, run.device)
    values = torch.from_numpy(target.reshape(-1, c)).to(run.device)
    train_idx = torch.from_numpy(np.flatnonzero(mask.reshape(-1))).to(run.device)
    objective = PixelRegression(coords[train_idx], values[train_idx], config.batch_size, config.seed)
    trainer = run.trainer(field, objective, config.optimizer(), meta={"field": field_config.to_dict(), "image": info},
                          checkpoint_seconds=checkpoint_seconds, description=f"fit image [{config.preset}]", progress=progress)
    outcome = trainer.run()
    field.eval()
    recon = render_field(field, h, w)
    write_png(run.out / "reconstruction.png", recon, bits=16)
    metrics = image_metrics(run.out / "target.png", run.out / "reconstruction.png", mask)
    history = outcome.history
    metrics.update({"steps": outcome.step, "fit_seconds": outcome.seconds, "preset": config.preset,
                    "protocol": config.protocol,
                    "steps_per_second": outcome.step / outcome.seconds if outcome.seconds > 0 else None,
                    "seconds_to_30db": seconds_to(history, 30.0), "device": str(run.device),
                    "stopped": outcome.stopped})
    write_json(run.out / "metrics.json", metrics)
    if history.seconds:
        plot_curve(run.out / "psnr_curve.png", history.seconds, history.column("psnr"), xlabel="fitting time (s)",
                   ylabel="training PSNR (dB)", title=f"{info['source']} [{config.preset}]")
    return metrics


def cubic_prediction(target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``target`` ``[H, W, C]`` predicted everywhere from its ``mask`` pixels by cubic interpolation:
    bicubic (``RegularGridInterpolator``, cubic splines, nearest value beyond the last row/column)
    when the mask is a regular sub-grid (every-other-pixel), else Clough-Tocher (``griddata``
    cubic) with the nearest training pixel outside their convex hull."""
    from scipy.interpolate import RegularGridInterpolator, griddata

    h, w, c = target.shape
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    query = np.stack([ii.ravel(), jj.ravel()], -1).astype(np.float64)
    if mask.sum() == len(rows) * len(cols) and mask[np.ix_(rows, cols)].all() and len(rows) >= 4 and len(cols) >= 4:
        grid = target[np.ix_(rows, cols)].astype(np.float64)
        clipped = np.stack([np.clip(query[:, 0], rows[0], rows[-1]), np.clip(query[:, 1], cols[0], cols[-1])], -1)
        out = RegularGridInterpolator((rows, cols), grid, method="cubic")(clipped)
    else:
        pts = np.argwhere(mask).astype(np.float64)
        vals = target[mask].astype(np.float64)
        out = griddata(pts, vals, query, method="cubic")
        near = griddata(pts, vals, query, method="nearest")
        out = np.where(np.isnan(out), near, out)
    return np.clip(out.reshape(h, w, c), 0.0, 1.0)


def image_metrics(target_png: Path, recon_png: Path, mask: np.ndarray | None = None) -> dict[str, Any]:
    """PSNR / SSIM of ``recon_png`` against ``target_png``. With pixels held out by ``mask``:
    ``psnr`` is the held-out PSNR (next to ``psnr_heldout_cubic``, see module docstring),
    ``psnr_all`` and ``psnr_train`` the others."""
    t, r = read_png(target_png), read_png(recon_png)
    m: dict[str, Any] = {"psnr": psnr(t, r), "mse": float(np.mean((t.astype(np.float64) - r) ** 2)), "ssim": ssim(t, r),
                         "psnr_definition": PSNR_DEFINITION, "ssim_definition": SSIM_DEFINITION}
    if mask is not None and not mask.all():
        m["psnr_all"] = m["psnr"]
        m["psnr"] = m["psnr_heldout"] = psnr(t[~mask], r[~mask])
        m["psnr_train"] = psnr(t[mask], r[mask])
        m["psnr_heldout_cubic"] = psnr(t[~mask], cubic_prediction(t, mask)[~mask])
        m["headline"] = "psnr = held-out pixels; psnr_heldout_cubic = the same pixels by cubic interpolation"
        m["train_pixels"] = int(mask.sum())
        m["heldout_pixels"] = int((~mask).sum())
    return m


def seconds_to(history: History, db: float) -> float | None:
    """First fitting time at which the logged training PSNR reached ``db`` (None if never)."""
    for s, p in zip(history.seconds, history.column("psnr")):
        if p >= db:
            return s
    return None


def load_image_field(directory: Path, device: str | None = None) -> tuple[Field, dict[str, Any]]:
    """Rebuild the fitted field from ``directory``'s checkpoint (image and image-gradients fits)."""
    from fieldcraft.runtime import default_device

    tensors, meta = load_checkpoint(directory, device=device or default_device())
    check(meta.get("task") in (TASK, "image-gradients"), f"{directory}: checkpoint is for task {meta.get('task')!r}, not image")
    with reading(directory, "checkpoint"):
        config = Config.from_dict(meta["field"])
        check(isinstance(config, FieldConfig), f"{directory}: checkpoint field config is not a Field")
        size = meta["image"]
        check(isinstance(size, dict) and all(type(size.get(k)) is int and size[k] > 0 for k in ("height", "width")),
              f"{directory}: malformed checkpoint: its 'image' needs a positive integer height and width")
        field = build_loaded(config.build, tensors, "field")
    field.eval()
    return field, meta
