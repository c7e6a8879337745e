"""What a fitted NeRF produces: test-view renders with their scores, and orbit videos.

- :func:`load_model` rebuilds the model of a run directory (the averaged weights when the run
  kept them).
- :func:`evaluate` renders every view of a split to ``<run>/eval/<split>/`` (the dataset's file
  names as 8-bit PNGs, depth pictures in ``depth/``, :func:`fieldcraft.render.depth.depth_picture`)
  and writes ``metrics.json``: per-view and mean PSNR and SSIM (:mod:`fieldcraft.metrics`; SSIM
  with the papers' 11x11 Gaussian window) of the float renders against the views composited on
  the evaluation background, in ``[0, 1]``.
- :func:`render_orbit` renders a camera orbit (:func:`orbit_cameras`), or the smoothed captured
  camera path (:func:`path_cameras`), to a video (:func:`fieldcraft.io.video.write_video`).

Rendering happens on the requested device; images come to the CPU only to be scored and written.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fieldcraft.config import Config
from fieldcraft.data.cameras import Cameras
from fieldcraft.data.scene import PosedImages, composite, load_posed_images
from fieldcraft.errors import check, reading
from fieldcraft.io.checkpoint import build_loaded, load_checkpoint
from fieldcraft.metrics import PSNR_DEFINITION, SSIM_DEFINITION, psnr, ssim
from fieldcraft.render.cameras import orbit, smooth_path
from fieldcraft.tasks.nerf.config import TASK, NerfConfig
from fieldcraft.tasks.nerf.model import NerfModel, background_colour


def load_model(out_dir: str | Path, averaged: bool = True, device: str | None = None) -> tuple[NerfModel, dict[str, Any]]:
    """The fitted model of ``out_dir``'s checkpoint on ``device`` (default: cuda when available), with
    the averaged weights when the run kept them (``ema_decay > 0``) and ``averaged``, else the last
    step's; and the checkpoint's header."""
    from fieldcraft.runtime import default_device

    device = device or default_device()
    tensors, meta = load_checkpoint(Path(out_dir), device=device)
    check(meta.get("task") == TASK, f"{out_dir}: the checkpoint is of task {meta.get('task')!r}, not {TASK!r}")
    with reading(out_dir, "checkpoint"):
        config = Config.from_dict(meta["config"])
        check(isinstance(config, NerfConfig), f"{out_dir}: the checkpoint's config is not a NeRF config")
        aabb = torch.tensor(meta["aabb"], dtype=torch.float32)
        check(aabb.shape == (2, 3) and bool(torch.isfinite(aabb).all()) and bool((aabb[1] > aabb[0]).all()),
              f"{out_dir}: malformed checkpoint: 'aabb' must be [[min x, y, z], [max x, y, z]], got {meta['aabb']!r:.80}")
        model = build_loaded(lambda: NerfModel(config, aabb, bool(meta["ndc"]), int(meta.get("n_images", 0))),
                             tensors, "model").to(device)
        if averaged and any(k.startswith("extra.ema.") for k in tensors):
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(tensors[f"extra.ema.{n}"])
        check(isinstance(meta.get("data"), str), f"{out_dir}: malformed checkpoint: no dataset path ('data')")
        for key in ("near", "far", "step", "seconds"):
            check(key not in meta or isinstance(meta[key], (int, float)),
                  f"{out_dir}: malformed checkpoint: {key!r} is not a number")
    model.eval()
    return model, meta


def fitted_views(meta: dict[str, Any], data_path: str | Path | None, split: str,
                 max_images: int | None = None) -> PosedImages:
    """A split of the fitted dataset (or of ``data_path``) in the box the field was fitted in."""
    data = load_posed_images(data_path or meta["data"], split, max_images=max_images,
                             downscale=int(meta.get("downscale", 1)), skip_missing=bool(meta.get("skip_missing", False)))
    return dataclasses.replace(data, aabb=torch.tensor(meta["aabb"], dtype=data.aabb.dtype))


def evaluate(out_dir: str | Path, split: str = "test", data_path: str | Path | None = None,
             max_images: int | None = None, progress: bool = True, averaged: bool = True,
             device: str | None = None) -> dict[str, Any]:
    """Render and score every view of ``split`` (module docstring); ``max_images``: the first N views.
    ``averaged=False`` evaluates the last step's weights of a run that kept an average, in
    ``eval/<split>-last/``. Returns the metrics written to ``metrics.json``."""
    from tqdm.auto import tqdm

    from fieldcraft.io.images import write_png
    from fieldcraft.io.records import write_json
    from fieldcraft.render.depth import depth_picture

    model, meta = load_model(out_dir, averaged, device)
    device = model.aabb.device
    data = fitted_views(meta, data_path, split, max_images)
    bg = background_colour(model.config.background)
    last = not averaged and model.config.ema_decay > 0
    dest = Path(out_dir) / "eval" / (f"{split}-last" if last else split)
    views = []
    t0 = time.perf_counter()
    for k in tqdm(range(len(data)), desc=f"eval {split}", disable=not progress):
        rays = model.view_rays(data.cameras, k, data.near, data.far)
        out = {key: v.float().cpu().numpy() for key, v in
               model.render_image(rays, bg.to(device)[None], data.height, data.width).items()}
        gt = composite(data.image(k), bg).cpu().numpy()
        name = Path(data.names[k]).with_suffix(".png")
        write_png(dest / name, out["rgb"])
        write_png(dest / "depth" / name, depth_picture(out["depth"], out["opacity"]))
        views.append({"name": str(name), "psnr": psnr(out["rgb"], gt), "ssim": ssim(out["rgb"], gt)})
    seconds = time.perf_counter() - t0
    metrics = {"split": split, "data": str(data.source), "views": len(views), "step": meta["step"],
               "fit_seconds": meta["seconds"], "preset": model.config.preset,
               "weights": "average" if averaged and model.config.ema_decay > 0 else "last",
               "psnr": float(np.mean([v["psnr"] for v in views])) if views else math.nan,
               "ssim": float(np.mean([v["ssim"] for v in views])) if views else math.nan,
               "psnr_definition": PSNR_DEFINITION + "; mean over views", "ssim_definition": SSIM_DEFINITION + "; mean over views",
               "render_seconds_per_view": seconds / max(len(views), 1), "device": str(device),
               "directory": str(dest), "per_view": views}
    write_json(dest / "metrics.json", metrics)
    return metrics


def orbit_cameras(data: PosedImages, frames: int) -> Cameras:
    """``frames`` cameras with the intrinsics of ``data``'s first view on an orbit around the scene:
    for object scenes a circle at the training cameras' mean distance from the origin and mean
    height along their mean up axis, looking at the origin; for forward-facing (NDC) scenes a
    small circle of camera centres in the image plane of the average pose (the identity)."""
    c2w = data.cameras.c2w.cpu()
    if data.ndc:
        radius = c2w[:, :2, 3].std(0) * 0.5
        angles = 2 * math.pi * torch.arange(frames) / frames
        poses = torch.eye(4)[:3].repeat(frames, 1, 1)
        poses[:, 0, 3], poses[:, 1, 3] = radius[0] * torch.cos(angles), radius[1] * torch.sin(angles)
    else:
        up = c2w[:, :, 1].mean(0)
        up = up / up.norm()
        centres = c2w[:, :, 3]
        dist = centres.norm(dim=-1).mean()
        height = (centres @ up).mean()
        start = torch.linalg.cross(up, torch.tensor([1.0, 0.0, 0.0]))
        if start.norm() < 1e-3:
            start = torch.linalg.cross(up, torch.tensor([0.0, 1.0, 0.0]))
        ring = torch.sqrt(torch.clamp(dist**2 - height**2, min=1e-6))
        poses = orbit(frames, float(ring), float(height), up, start / start.norm())[:, :3]
    cams = data.cameras
    first = lambda t: t[:1].cpu().expand(frames).clone()
    return Cameras(poses, first(cams.fx), first(cams.fy), first(cams.cx), first(cams.cy), cams.width, cams.height)


def render_orbit(out_dir: str | Path, dest: str | Path, frames: int = 60, fps: int = 30,
                 data_path: str | Path | None = None, progress: bool = True, device: str | None = None,
                 path: bool = False) -> Path:
    """Render :func:`orbit_cameras` of the fitted training views (``path``: :func:`path_cameras`, the
    smoothed captured camera path) to the video ``dest``; returns the path written (``.gif`` when
    mp4 cannot be encoded, :func:`fieldcraft.io.video.write_video`)."""
    from tqdm.auto import tqdm

    from fieldcraft.io.video import write_video

    check(frames >= 1, f"--frames must be >= 1, got {frames}")
    model, meta = load_model(out_dir, device=device)
    data = fitted_views(meta, data_path, "train")
    cams = path_cameras(data, frames) if path else orbit_cameras(data, frames)
    bg = background_colour(model.config.background, model.aabb.device)[None]
    images = []
    for k in tqdm(range(frames), desc="render path" if path else "render orbit", disable=not progress):
        rays = model.view_rays(cams, k, data.near, data.far)
        images.append(model.render_image(rays, bg, cams.height, cams.width)["rgb"].float().cpu().numpy())
    return write_video(Path(dest), images, fps)


def path_cameras(data: PosedImages, frames: int, sigma: float = 2.0) -> Cameras:
    """``frames`` pinhole cameras with the intrinsics of ``data``'s first view along the captured
    camera path: the training poses in the dataset's order, smoothed and resampled
    (:func:`fieldcraft.render.cameras.smooth_path`, Gaussian of ``sigma`` poses)."""
    cams = data.cameras
    first = lambda t: t[:1].cpu().expand(frames).clone()
    poses = smooth_path(cams.c2w.cpu(), frames, sigma)
    return Cameras(poses, first(cams.fx), first(cams.fy), first(cams.cx), first(cams.cy), cams.width, cams.height)
