"""Gradient-domain image fields (SIREN, Sitzmann et al. 2020, sec. 4.1 / fig. 5).

Fit a field ``f`` so that its spatial gradient matches a target gradient field ``g``:
``loss = mean_pixels |grad_x f(x) - g(x)|^2`` (summed over x/y and channels).

- Poisson reconstruction: ``g`` = the image's gradient; ``f`` recovers the image up to a
  constant per channel.
- Blending: ``g = w grad A + (1 - w) grad B`` with a constant ``w`` or a weight map.

Image gradients are central differences (``numpy.gradient``; one-sided at the border) in
units of ``[0, 1]`` intensity per unit of normalised coordinate (per pixel times ``W / 2``
along x and ``H / 2`` along y), so they compare directly with autograd gradients of the
field over ``[-1, 1]^2``. The constant lost by fitting gradients is fixed afterwards by
matching the per-channel mean of the reference (the image, or ``w A + (1 - w) B``); PSNR is
reported after that shift, as stated in ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fieldcraft.config import Config
from fieldcraft.data.images import load_image
from fieldcraft.errors import check
from fieldcraft.fields import image_field_config
from fieldcraft.io.checkpoint import atomic_write_bytes, module_tensors, save_checkpoint
from fieldcraft.io.images import write_png
from fieldcraft.io.plots import plot_curve
from fieldcraft.tasks.image import PRESET_LR, pixel_centres, psnr, render_field
from fieldcraft.train import Budget, run_loop
from fieldcraft.train.optimizers import build_optimizer

TASK = "image-gradients"


@dataclasses.dataclass(frozen=True)
class GradientFitConfig(Config):
    """- ``sources``: one image (Poisson reconstruction) or two (blending A, B).
    - ``weight``: constant weight of A's gradient when blending; ``mask``: PNG weight map
      (white = A), overriding ``weight``.
    - ``preset``, ``size``, ``seed``, ``lr``: as for image fits; ``batch_size``: pixels per step.
    """

    type_name = "GradientFit"
    sources: tuple[str, ...] = ("sample:camera",)
    weight: float = 0.5
    mask: str | None = None
    preset: str = "siren"
    size: int | None = 256
    seed: int = 0
    lr: float | None = None
    batch_size: int = 1 << 14


def image_gradient(pixels: np.ndarray) -> np.ndarray:
    """``[H, W, C]`` -> ``[H, W, C, 2]`` gradient (d/dx, d/dy) per unit of normalised coordinate."""
    h, w = pixels.shape[:2]
    gy, gx = np.gradient(pixels.astype(np.float64), axis=(0, 1))
    return np.stack([gx * (w / 2.0), gy * (h / 2.0)], axis=-1).astype(np.float32)


def fit_gradients(config: GradientFitConfig, out: Path, budget: Budget, *, progress: bool = True,
                  device: str | None = None) -> dict[str, Any]:
    from fieldcraft.runtime import default_device

    device = device or default_device()
    check(len(config.sources) in (1, 2), "gradient fits take one image (reconstruction) or two (blending)")
    images = [load_image(s, size=config.size).pixels for s in config.sources]
    if len(images) == 2:
        a, b = images
        check(a.shape == b.shape, f"{config.sources[0]} is {a.shape[1]}x{a.shape[0]}x{a.shape[2]} but "
                                  f"{config.sources[1]} is {b.shape[1]}x{b.shape[0]}x{b.shape[2]} after resizing")
        if config.mask is not None:
            wmap = load_image(config.mask).pixels[..., :1]
            check(wmap.shape[:2] == a.shape[:2], f"{config.mask}: weight map size differs from the images")
        else:
            check(0.0 <= config.weight <= 1.0, f"--weight must be in [0, 1], got {config.weight}")
            wmap = np.full(a.shape[:2] + (1,), config.weight, np.float32)
        grad = wmap[..., None] * image_gradient(a) + (1 - wmap[..., None]) * image_gradient(b)
        reference = wmap * a + (1 - wmap) * b
    else:
        reference = images[0]
        grad = image_gradient(reference)
    h, w, c = reference.shape
    torch.manual_seed(config.seed)
    field_config = image_field_config(config.preset, c, resolution=max(h, w), seed=config.seed)
    field = field_config.build().to(device)
    lr = config.lr if config.lr is not None else PRESET_LR.get(config.preset, 1e-3)
    optimizer = build_optimizer(field, lr)
    coords = pixel_centres(h, w, device)
    target = torch.from_numpy(grad.reshape(-1, c, 2)).to(device)
    gen = torch.Generator().manual_seed(config.seed)
    n = coords.shape[0]

    def step(i: int) -> dict[str, float]:
        idx = torch.randint(0, n, (min(config.batch_size, n),), generator=gen).to(device)
        x = coords[idx].clone().requires_grad_(True)
        y = field(x)
        grads = torch.stack([torch.autograd.grad(y[:, k].sum(), x, create_graph=True)[0] for k in range(c)], 1)
        loss = torch.mean(((grads - target[idx]) ** 2).sum(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": float(loss.detach())}

    steps, seconds, history = run_loop(step, budget, description=f"fit gradients [{config.preset}]", progress=progress)
    raw = render_field(field, h, w)
    offset = (reference.reshape(-1, c).mean(0) - raw.reshape(-1, c).mean(0)).astype(np.float32)
    recon = raw + offset
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_png(out / "reconstruction.png", recon, bits=16)
    write_png(out / ("target.png" if len(images) == 1 else "naive_blend.png"), reference, bits=16)
    gmag_t = np.sqrt((grad**2).sum((-1, -2)))
    scale = max(float(gmag_t.max()), 1e-12)
    write_png(out / "target_gradient.png", gmag_t / scale)
    fit_grad = _field_gradient(field, h, w, c)
    write_png(out / "fit_gradient.png", np.sqrt((fit_grad**2).sum((-1, -2))) / scale)
    metrics: dict[str, Any] = {
        "gradient_mse": float(np.mean(((fit_grad - grad) ** 2).sum(-1))),
        "steps": steps, "fit_seconds": seconds, "preset": config.preset,
        "psnr_definition": "10 log10(1/MSE) after shifting each channel's mean to the reference's",
    }
    if len(images) == 1:
        metrics["psnr"] = psnr(np.clip(recon, 0, 1), reference)
    atomic_write_bytes(out / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
    save_checkpoint(out, module_tensors(field, "field"),
                    {"task": TASK, "fit": config.to_dict(), "field": field_config.to_dict(),
                     "image": {"height": h, "width": w, "channels": c}, "offset": offset.tolist(),
                     "step": steps, "seconds": seconds, "lr": lr})
    if history.seconds:
        plot_curve(out / "loss_curve.png", history.seconds, [math.log10(max(v, 1e-12)) for v in history.column("loss")],
                   xlabel="fitting time (s)", ylabel="log10 gradient loss")
    return metrics


def _field_gradient(field, h: int, w: int, c: int, chunk: int = 1 << 15) -> np.ndarray:
    device = next(field.parameters()).device
    xy_all = pixel_centres(h, w, device)
    out = []
    for i in range(0, xy_all.shape[0], chunk):
        x = xy_all[i:i + chunk].clone().requires_grad_(True)
        y = field(x)
        out.append(torch.stack([torch.autograd.grad(y[:, k].sum(), x, retain_graph=k < c - 1)[0] for k in range(c)], 1))
    return torch.cat(out).reshape(h, w, c, 2).detach().cpu().numpy()
