"""Image fields: fit ``f(x, y) -> colour`` to an image, query it at any resolution.

Conventions (see docs/images.md):

- Pixel ``(row i, column j)`` of an ``H x W`` image has centre ``x = (2j + 1) / W - 1``,
  ``y = (2i + 1) / H - 1``: both axes span ``[-1, 1]`` whatever the aspect ratio, x to the
  right, y downwards. Rendering at ``W' x H'`` queries the pixel centres of a ``W' x H'``
  grid over the same square, so it is super-resolution (or down-sampling) of one field.
- Values are the image's channels in ``[0, 1]`` (1 gray, 3 RGB, 4 RGBA).
- The fitted target is the (resized) image rounded to 16-bit codes; ``target.png`` stores
  exactly those codes, so ``reconstruction.png`` (16-bit) can be compared with it.
- PSNR = ``10 log10(1 / MSE)`` with the MSE over all pixels and channels of values in
  ``[0, 1]`` (or over the named subset: train / held-out pixels). SSIM is scikit-image's
  ``structural_similarity`` with ``data_range=1``, 7x7 uniform window, channels averaged.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from fieldcraft.config import Config
from fieldcraft.data.images import load_image
from fieldcraft.errors import check
from fieldcraft.fields import Field, FieldConfig, image_field_config
from fieldcraft.io.checkpoint import (
    atomic_write_bytes,
    load_checkpoint,
    load_module_tensors,
    module_tensors,
    save_checkpoint,
)
from fieldcraft.io.images import read_png, write_png
from fieldcraft.io.plots import plot_curve
from fieldcraft.train import Budget, History, run_loop
from fieldcraft.train.optimizers import build_optimizer, load_optimizer_state, optimizer_state

TASK = "image"
PROTOCOLS = ("all", "every-other-pixel")
# Adam learning rates per preset (from the papers' image experiments)
PRESET_LR = {"hash": 1e-2, "siren": 1e-4, "relu-pe": 1e-3, "fourier": 1e-3, "gauss": 1e-3}
# per-step learning-rate decay per preset (the MLP papers use a constant rate)
PRESET_LR_DECAY = {"hash": 0.998}


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


def pixel_centres(height: int, width: int, device: torch.device | str = "cpu") -> Float[Tensor, "h*w 2"]:
    """Centres ``(x, y)`` of an ``height x width`` pixel grid in ``[-1, 1]^2``, row-major.

    >>> pixel_centres(2, 2)
    tensor([[-0.5000, -0.5000],
            [ 0.5000, -0.5000],
            [-0.5000,  0.5000],
            [ 0.5000,  0.5000]])
    """
    xs = (2 * torch.arange(width, device=device, dtype=torch.float32) + 1) / width - 1
    ys = (2 * torch.arange(height, device=device, dtype=torch.float32) + 1) / height - 1
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy], dim=-1).reshape(-1, 2)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """``10 log10(1 / MSE)`` over all elements of two arrays with values in ``[0, 1]``."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """scikit-image SSIM of ``[H, W, C]`` images in ``[0, 1]`` (``data_range=1``, channels averaged)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, data_range=1.0, channel_axis=-1))


@torch.no_grad()
def render_field(field: Field, height: int, width: int, chunk: int = 1 << 18) -> np.ndarray:
    """Evaluate ``field`` at the pixel centres of ``height x width``: float32 ``[H, W, C]``."""
    device = next(field.parameters()).device
    xy = pixel_centres(height, width, device)
    out = torch.cat([field(xy[i:i + chunk]) for i in range(0, xy.shape[0], chunk)])
    return out.reshape(height, width, -1).float().cpu().numpy()


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
    device = next(field.parameters()).device
    dtype = next(field.parameters()).dtype
    xy_all = pixel_centres(height, width, device).to(dtype)
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
        user = read_mask(config.mask)
        check(user.shape == (height, width),
              f"{config.mask}: mask is {user.shape[1]}x{user.shape[0]}, image is {width}x{height} (after --size)")
        mask &= user
    if config.train_fraction < 1.0:
        rng = np.random.default_rng(config.seed)
        mask &= rng.random((height, width)) < config.train_fraction
    check(mask.any(), "no training pixels left (mask / --train-fraction selected none)")
    return mask


def read_mask(path: str) -> np.ndarray:
    img = load_image(path).pixels
    return img[..., 0] > 0


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


def fit_image(config: ImageFitConfig, out: Path, budget: Budget, *, resume: bool = False, progress: bool = True,
              device: str | None = None) -> dict[str, Any]:
    """Fit an image field and write checkpoint, target.png, reconstruction.png, metrics.json,
    psnr_curve.png to ``out``. Returns the metrics."""
    from fieldcraft.runtime import default_device

    device = device or default_device()
    out = Path(out)
    meta_prev: dict[str, Any] | None = None
    tensors_prev: dict[str, Tensor] = {}
    if resume:
        tensors_prev, meta_prev = load_checkpoint(out)
        check(meta_prev.get("task") == TASK, f"{out}: checkpoint is for task {meta_prev.get('task')!r}, not image")
        config = ImageFitConfig.from_dict(meta_prev["fit"])  # type: ignore[assignment]
    target, info = load_target(config)
    h, w, c = target.shape
    mask = train_mask(config, h, w)
    # grid presets size their finest level to the density of the fitted pixels
    density = math.sqrt(mask.mean())
    field_config = image_field_config(config.preset, c, resolution=max(8, round(max(h, w) * density)), seed=config.seed)
    if meta_prev is not None:
        field_config = Config.from_dict(meta_prev["field"])  # type: ignore[assignment]
    torch.manual_seed(config.seed)
    field = field_config.build().to(device)
    lr = config.lr if config.lr is not None else PRESET_LR.get(config.preset, 1e-3)
    optimizer = build_optimizer(field, lr)
    decay = config.lr_decay if config.lr_decay is not None else PRESET_LR_DECAY.get(config.preset, 1.0)
    start_step, start_seconds, history = 0, 0.0, History()
    if meta_prev is not None:
        load_module_tensors(field, tensors_prev, "field")
        load_optimizer_state(optimizer, tensors_prev, meta_prev["optimizer"])
        start_step, start_seconds = meta_prev["step"], meta_prev["seconds"]
        history = History.from_dict(meta_prev.get("history", {}))

    out.mkdir(parents=True, exist_ok=True)
    write_png(out / "target.png", target, bits=16)
    coords = pixel_centres(h, w, device)
    values = torch.from_numpy(target.reshape(-1, c)).to(device)
    train_idx = torch.from_numpy(np.flatnonzero(mask.reshape(-1))).to(device)
    x_train, y_train = coords[train_idx], values[train_idx]
    n_train = x_train.shape[0]
    gen = torch.Generator(device="cpu").manual_seed(config.seed + start_step)
    warm_up(field, lr, x_train[:64], y_train[:64])

    def step(i: int) -> dict[str, float]:
        if n_train <= config.batch_size:
            x, y = x_train, y_train
        else:
            idx = torch.randint(0, n_train, (config.batch_size,), generator=gen).to(device)
            x, y = x_train[idx], y_train[idx]
        pred = field(x)
        loss = torch.mean((pred - y) ** 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in optimizer.param_groups:
            group["lr"] = lr * decay**i
        optimizer.step()
        mse = float(loss.detach())
        return {"loss": mse, "psnr": 10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf}

    def meta(step_i: int, seconds: float, hist: History) -> dict[str, Any]:
        return {"task": TASK, "fit": config.to_dict(), "field": field_config.to_dict(), "image": info,
                "step": step_i, "seconds": seconds, "lr": lr, "history": hist.to_dict()}

    def checkpoint(step_i: int, seconds: float, hist: History) -> None:
        opt_tensors, opt_meta = optimizer_state(optimizer)
        save_checkpoint(out, {**module_tensors(field, "field"), **opt_tensors},
                        {**meta(step_i, seconds, hist), "optimizer": opt_meta})

    steps, seconds, history = run_loop(step, budget, start_step=start_step, start_seconds=start_seconds,
                                       history=history, checkpoint=checkpoint, checkpoint_seconds=60.0,
                                       description=f"fit image [{config.preset}]", progress=progress)
    recon = render_field(field, h, w)
    write_png(out / "reconstruction.png", recon, bits=16)
    metrics = image_metrics(out / "target.png", out / "reconstruction.png", mask)
    metrics.update({"steps": steps, "fit_seconds": seconds, "preset": config.preset, "protocol": config.protocol,
                    "steps_per_second": steps / seconds if seconds > 0 else None,
                    "seconds_to_30db": seconds_to(history, 30.0)})
    write_metrics(out / "metrics.json", metrics)
    if history.seconds:
        plot_curve(out / "psnr_curve.png", history.seconds, history.column("psnr"), xlabel="fitting time (s)",
                   ylabel="training PSNR (dB)", title=f"{info['source']} [{config.preset}]")
    return metrics


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """Write metrics as strict JSON; an infinite PSNR (MSE exactly 0) is written as the string "inf"."""
    clean = {k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in metrics.items()}
    atomic_write_bytes(path, (json.dumps(clean, indent=2) + "\n").encode())


def warm_up(field: Field, lr: float, x: Tensor, y: Tensor) -> None:
    """One step on a throwaway copy of the field and optimiser, so JIT compilation (numba grid
    kernels, row-sparse Adam) is not charged to the fitting-time budget. ``field`` is untouched."""
    import copy

    clone = copy.deepcopy(field)
    optimizer = build_optimizer(clone, lr)
    torch.mean((clone(x) - y) ** 2).backward()
    optimizer.step()


def image_metrics(target_png: Path, recon_png: Path, mask: np.ndarray | None = None) -> dict[str, Any]:
    """PSNR/SSIM of ``recon_png`` against ``target_png`` (all pixels; train and held-out
    pixels when ``mask`` holds some out)."""
    t, r = read_png(target_png), read_png(recon_png)
    m: dict[str, Any] = {"psnr": psnr(t, r), "mse": float(np.mean((t.astype(np.float64) - r) ** 2)), "ssim": ssim(t, r)}
    if mask is not None and not mask.all():
        m["psnr_train"] = psnr(t[mask], r[mask])
        m["psnr_heldout"] = psnr(t[~mask], r[~mask])
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
    """Rebuild the fitted field from ``directory``'s checkpoint."""
    from fieldcraft.runtime import default_device

    tensors, meta = load_checkpoint(directory)
    check(meta.get("task") in (TASK, "image-gradients"), f"{directory}: checkpoint is for task {meta.get('task')!r}, not image")
    config = Config.from_dict(meta["field"])
    check(isinstance(config, FieldConfig), f"{directory}: checkpoint field config is not a Field")
    field = config.build().to(device or default_device())
    load_module_tensors(field, tensors, "field")
    field.eval()
    return field, meta

