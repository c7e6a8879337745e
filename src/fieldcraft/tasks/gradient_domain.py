"""Gradient-domain image fields (SIREN, Sitzmann et al. 2020, sec. 4.1 / fig. 5).

Fit a field ``f`` so that its spatial gradient matches a target gradient field ``g``:
``loss = mean_pixels |grad_x f(x) - g(x)|^2`` (summed over x/y and channels), on random
batches of pixel centres (:func:`fieldcraft.coords.pixel_centres`); the training core
(:mod:`fieldcraft.train`) does the rest.

- Poisson reconstruction (``fit image-gradients``): ``g`` = the image's gradient; ``f``
  recovers the image up to a constant per channel.
- Blending (``fit blend``): ``g = w grad A + (1 - w) grad B`` with a constant ``w`` or a weight map.

Image gradients are central differences (``numpy.gradient``; one-sided at the border) in
units of ``[0, 1]`` intensity per unit of normalised coordinate (per pixel times ``W / 2``
along x and ``H / 2`` along y), so they compare directly with autograd gradients of the
field over ``[-1, 1]^2``. The constant lost by fitting gradients is fixed afterwards by
matching the per-channel mean of the reference (the image, or ``w A + (1 - w) B``): the
checkpoint stores it as ``offset`` (``render image`` adds it). PSNR is reported after that
shift, as stated in ``metrics.json``.
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
from fieldcraft.errors import check
from fieldcraft.fields import Field, image_field_config
from fieldcraft.fields.presets import IMAGE_PRESET_OPTIMIZATION
from fieldcraft.io.images import write_png
from fieldcraft.io.plots import plot_curve
from fieldcraft.io.records import write_json
from fieldcraft.metrics import PSNR_DEFINITION, psnr
from fieldcraft.render.grid import render_grid
from fieldcraft.train import Budget, Objective, OptimizerConfig, Run, ScheduleConfig

TASK = "image-gradients"


@dataclasses.dataclass(frozen=True)
class GradientFitConfig(Config):
    """- ``sources``: one image (Poisson reconstruction) or two (blending A, B).
    - ``weight``: constant weight of A's gradient when blending; ``mask``: PNG weight map
      (white = A), overriding ``weight``.
    - ``preset``, ``size``, ``seed``: as for image fits; ``lr``: Adam learning rate (None: the
      preset's, with the preset's per-step decay, :data:`~fieldcraft.fields.presets.IMAGE_PRESET_OPTIMIZATION`);
      ``batch_size``: pixels per step.
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

    def optimizer(self) -> OptimizerConfig:
        """Adam with the preset's learning rate (unless given) and per-step decay."""
        lr, decay = IMAGE_PRESET_OPTIMIZATION.get(self.preset, (1e-3, 1.0))
        lr = self.lr if self.lr is not None else lr
        return OptimizerConfig(lr=lr, schedule=ScheduleConfig(kind="per_step", decay_per_step=decay))


def image_gradient(pixels: Float[np.ndarray, "h w c"]) -> Float[np.ndarray, "h w c 2"]:
    """Gradient ``(d/dx, d/dy)`` per unit of normalised coordinate (central differences).

    >>> ramp = np.tile(np.arange(4.0), (2, 1))[..., None]  # +1 per pixel along x, 4 / 2 pixels per unit
    >>> image_gradient(ramp)[0, :, 0].tolist()
    [[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0]]
    """
    h, w = pixels.shape[:2]
    gy, gx = np.gradient(pixels.astype(np.float64), axis=(0, 1))
    return np.stack([gx * (w / 2.0), gy * (h / 2.0)], axis=-1).astype(np.float32)


def field_gradient(field: Field, x: Float[Tensor, "n 2"], create_graph: bool = False) -> Float[Tensor, "n c 2"]:
    """Autograd gradient of each of ``field``'s channels with respect to the coordinates ``x``."""
    x = x.detach().clone().requires_grad_(True)
    y = field(x)
    c = y.shape[-1]
    return torch.stack([torch.autograd.grad(y[:, k].sum(), x, create_graph=create_graph,
                                            retain_graph=create_graph or k < c - 1)[0] for k in range(c)], 1)


class GradientMatching(Objective):
    """Mean over a random batch of ``batch_size`` pixel centres ``x`` ``[n, 2]`` of
    ``|grad f(x) - g(x)|^2`` summed over channels and x/y (``g``: ``[n, C, 2]``)."""

    def __init__(self, x: Float[Tensor, "n 2"], g: Float[Tensor, "n c 2"], batch_size: int, seed: int) -> None:
        self.x, self.g, self.batch_size = x, g, batch_size
        self.generators = {"batches": torch.Generator(device="cpu").manual_seed(seed)}

    def loss(self, model: Field, step: int) -> tuple[Tensor, dict[str, float]]:
        n = self.x.shape[0]
        idx = torch.randint(0, n, (min(self.batch_size, n),), generator=self.generators["batches"]).to(self.x.device)
        grads = field_gradient(model, self.x[idx], create_graph=True)
        return torch.mean(((grads - self.g[idx]) ** 2).sum((-1, -2))), {}


def gradient_target(config: GradientFitConfig) -> tuple[np.ndarray, np.ndarray]:
    """The target gradient ``[H, W, C, 2]`` and the reference image ``[H, W, C]`` (the image, or
    the naive blend ``w A + (1 - w) B``) of ``config``."""
    check(len(config.sources) in (1, 2), "gradient fits take one image (reconstruction) or two (blending)")
    images = [load_image(s, size=config.size).pixels for s in config.sources]
    if len(images) == 1:
        return image_gradient(images[0]), images[0]
    a, b = images
    check(a.shape == b.shape, f"{config.sources[0]} is {a.shape[1]}x{a.shape[0]}x{a.shape[2]} but "
                              f"{config.sources[1]} is {b.shape[1]}x{b.shape[0]}x{b.shape[2]} after resizing")
    if config.mask is not None:
        wmap = load_image(config.mask).pixels[..., :1]
        check(wmap.shape[:2] == a.shape[:2], f"{config.mask}: weight map is {wmap.shape[1]}x{wmap.shape[0]}, "
                                             f"the images are {a.shape[1]}x{a.shape[0]}")
    else:
        check(0.0 <= config.weight <= 1.0, f"--weight must be in [0, 1], got {config.weight}")
        wmap = np.full(a.shape[:2] + (1,), config.weight, np.float32)
    grad = wmap[..., None] * image_gradient(a) + (1 - wmap[..., None]) * image_gradient(b)
    return grad.astype(np.float32), (wmap * a + (1 - wmap) * b).astype(np.float32)


def fit_gradients(config: GradientFitConfig, out: str | Path, budget: Budget | None = None, *, resume: bool = False,
                  progress: bool = True, device: str | None = None, given: tuple[str, ...] = (),
                  overwrite: bool = False, checkpoint_seconds: float = 60.0) -> dict[str, Any]:
    """Fit a field to the gradient target of ``config`` and write checkpoint, reconstruction.png
    (16-bit, offset applied), target.png (one image) or naive_blend.png (two), target_gradient.png
    and fit_gradient.png (``|g|``, same scale), metrics.json, loss_curve.png and history.jsonl to
    ``out``. Returns the metrics (``stopped`` names the signal that ended the run early).

    ``budget`` None: 1000 steps, or the stored budget when resuming."""
    from fieldcraft.runtime import default_device

    run = Run.open(out, TASK, config, resume=resume, given=given, budget=budget, default_budget=Budget(steps=1000),
                   device=device or default_device(), overwrite=overwrite)
    config = run.config  # type: ignore[assignment]
    grad, reference = gradient_target(config)
    h, w, c = reference.shape
    field_config = (Config.from_dict(run.meta["field"]) if run.resumed
                    else image_field_config(config.preset, c, resolution=max(h, w), seed=config.seed))
    torch.manual_seed(config.seed)
    field = field_config.build().to(run.device)
    objective = GradientMatching(pixel_centres(h, w, run.device), torch.from_numpy(grad.reshape(-1, c, 2)).to(run.device),
                                 config.batch_size, config.seed)
    static = {"field": field_config.to_dict(), "image": {"height": h, "width": w, "channels": c}, "offset": None}
    trainer = run.trainer(field, objective, config.optimizer(), meta=static, checkpoint_seconds=checkpoint_seconds,
                          description=f"fit {'blend' if len(config.sources) == 2 else 'gradients'} [{config.preset}]",
                          progress=progress)
    outcome = trainer.run()
    field.eval()
    raw = render_grid(field, h, w, device=run.device).float().cpu().numpy()
    offset = (reference.reshape(-1, c).mean(0) - raw.reshape(-1, c).mean(0)).astype(np.float32)
    # the checkpoint again, now with the offset that render image adds
    trainer.meta["offset"] = offset.tolist()
    trainer.save()
    recon = raw + offset
    write_png(run.out / "reconstruction.png", recon, bits=16)
    write_png(run.out / ("target.png" if len(config.sources) == 1 else "naive_blend.png"), reference, bits=16)
    fit_grad = rendered_gradient(field, h, w)
    scale = max(float(np.sqrt((grad**2).sum((-1, -2))).max()), 1e-12)
    write_png(run.out / "target_gradient.png", np.sqrt((grad**2).sum((-1, -2))) / scale)
    write_png(run.out / "fit_gradient.png", np.sqrt((fit_grad**2).sum((-1, -2))) / scale)
    metrics: dict[str, Any] = {
        "gradient_mse": float(np.mean(((fit_grad - grad) ** 2).sum(-1))),
        "steps": outcome.step, "fit_seconds": outcome.seconds, "preset": config.preset, "device": str(run.device),
        "stopped": outcome.stopped, "offset": offset.tolist(),
        "gradient_mse_definition": "mean over pixels and channels of |grad f - g|^2 (x and y summed), "
                                   "per unit of normalised coordinate",
    }
    if len(config.sources) == 1:
        metrics["psnr"] = psnr(np.clip(recon, 0, 1), reference)
        metrics["psnr_definition"] = f"{PSNR_DEFINITION}; after adding offset (each channel's mean matched to the image's)"
    write_json(run.out / "metrics.json", metrics)
    history = outcome.history
    if history.seconds:
        plot_curve(run.out / "loss_curve.png", history.seconds,
                   [math.log10(max(v, 1e-12)) for v in history.column("loss")],
                   xlabel="fitting time (s)", ylabel="log10 gradient loss")
    return metrics


def rendered_gradient(field: Field, height: int, width: int, chunk: int = 1 << 15) -> Float[np.ndarray, "h w c 2"]:
    """:func:`field_gradient` at the pixel centres of ``height x width`` (CPU array)."""
    device = next(field.parameters()).device
    xy = pixel_centres(height, width, device)
    out = [field_gradient(field, xy[i:i + chunk]).detach() for i in range(0, xy.shape[0], chunk)]
    return torch.cat(out).reshape(height, width, -1, 2).cpu().numpy()
