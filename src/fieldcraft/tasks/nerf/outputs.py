"""What a fitted NeRF produces: test-view renders with their scores, and orbit videos.

- :func:`load_model` rebuilds the model of a run directory (the averaged weights when the run
  kept them).
- :func:`evaluate` renders every view of a split to ``<run>/eval/<split>/`` (the dataset's file
  names as 8-bit PNGs, depth pictures in ``depth/``, :func:`fieldcraft.render.depth.depth_picture`)
  and writes ``metrics.json``: per-view and mean PSNR and SSIM (:mod:`fieldcraft.metrics`; SSIM
  with the papers' 11x11 Gaussian window) of the float renders against the views composited on
  the evaluation background, in ``[0, 1]``.
- :func:`render_orbit` renders a camera orbit (:func:`orbit_cameras`), or the smoothed captured
  camera path (:func:`path_cameras`), to a video (:func:`fieldcraft.io.video.write_video`);
  :func:`render_camera_path` the frames of a camera path file (``fieldcraft view``'s export,
  :mod:`fieldcraft.io.camera_path`) with the field or a baked octree, to a video or PNGs.

Rendering happens on the requested device; images come to the CPU only to be scored and written.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fieldcraft.config import Config
from fieldcraft.data.cameras import Cameras
from fieldcraft.data.scene import PosedImages, composite, load_posed_images
from fieldcraft.errors import check, reading
from fieldcraft.io.camera_path import CameraPath
from fieldcraft.io.checkpoint import build_loaded, load_checkpoint
from fieldcraft.metrics import PSNR_DEFINITION, SSIM_DEFINITION, psnr, ssim
from fieldcraft.render.cameras import orbit_around, smooth_path
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
    fitted_ndc = bool(meta.get("ndc", data.ndc))
    check(fitted_ndc == data.ndc, f"{data.source}: reads as a {data.format} dataset {'with' if data.ndc else 'without'} "
                                  f"NDC rays, but the run was fitted {'with' if fitted_ndc else 'without'} them: refit it")
    return dataclasses.replace(data, aabb=torch.tensor(meta["aabb"], dtype=data.aabb.dtype))


def evaluate(out_dir: str | Path, split: str = "test", data_path: str | Path | None = None,
             max_images: int | None = None, progress: bool = True, averaged: bool = True,
             device: str | None = None, align: bool = False) -> dict[str, Any]:
    """Render and score every view of ``split`` (module docstring); ``max_images``: the first N views.
    ``averaged=False`` evaluates the last step's weights of a run that kept an average, in
    ``eval/<split>-last/``. ``align`` (runs fitted with ``pose_refine``): the views' poses moved by the
    similarity from the given to the refined training poses (:func:`aligned_cameras`), in
    ``eval/<split>-aligned/``. Returns the metrics written to ``metrics.json``."""
    from tqdm.auto import tqdm

    from fieldcraft.io.images import write_png
    from fieldcraft.io.records import write_json
    from fieldcraft.render.depth import depth_picture

    model, meta = load_model(out_dir, averaged, device)
    device = model.aabb.device
    data = fitted_views(meta, data_path, split, max_images)
    if align:
        data = dataclasses.replace(data, cameras=aligned_cameras(model, meta, data_path, data.cameras, out_dir))
    bg = background_colour(model.config.background)
    last = not averaged and model.config.ema_decay > 0
    dest = Path(out_dir) / "eval" / (f"{split}-last" if last else split + ("-aligned" if align else ""))
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
               "fit_seconds": meta["seconds"], "preset": model.config.preset, "aligned": align,
               "weights": "average" if averaged and model.config.ema_decay > 0 else "last",
               "psnr": float(np.mean([v["psnr"] for v in views])) if views else math.nan,
               "ssim": float(np.mean([v["ssim"] for v in views])) if views else math.nan,
               "psnr_definition": PSNR_DEFINITION + "; mean over views", "ssim_definition": SSIM_DEFINITION + "; mean over views",
               "render_seconds_per_view": seconds / max(len(views), 1), "device": str(device),
               "directory": str(dest), "per_view": views}
    write_json(dest / "metrics.json", metrics)
    return metrics


def refined_poses(model: NerfModel, meta: dict[str, Any], data_path: str | Path | None = None
                  ) -> tuple[PosedImages, torch.Tensor]:
    """The training views the run was fitted on (``data_path``: another dataset's training split,
    e.g. with the true poses) and their poses refined by the run's corrections ``[n, 3, 4]``."""
    train = fitted_views(meta, data_path, "train")
    if meta.get("frames") is not None:
        train = train.subset([int(i) for i in meta["frames"]])
    n = int(meta.get("n_images", len(train)))
    check(len(train) >= n, f"{train.source}: {len(train)} training views, the run was fitted on {n}")
    train = train.subset(list(range(n)))
    with torch.no_grad():
        refined = model.poses(train.cameras.c2w.to(model.aabb.device)).cpu()
    return train, refined


def aligned_cameras(model: NerfModel, meta: dict[str, Any], data_path: str | Path | None, cameras: Cameras,
                    out_dir: str | Path = "") -> Cameras:
    """``cameras`` moved by the similarity (:func:`fieldcraft.render.pose_refinement.similarity`) that
    best maps the given training camera centres to the refined ones: held-out poses expressed in the
    frame the field was fitted in (their own poses are not refined)."""
    from fieldcraft.render.pose_refinement import similarity, transform_poses

    check(model.poses is not None, f"{out_dir}: --align needs a run fitted with --refine-poses")
    train, refined = refined_poses(model, meta, data_path)
    s, rot, t = similarity(train.cameras.c2w[:, :, 3].cpu(), refined[:, :, 3])
    c2w = transform_poses(cameras.c2w.cpu().double(), s, rot, t).float().to(cameras.c2w.device)
    return dataclasses.replace(cameras, c2w=c2w)


def write_poses(path: str | Path, model: NerfModel, data: PosedImages, step: int) -> Path:
    """Write ``poses.json`` (strict JSON) of a run fitted with ``pose_refine``: for each training view
    its file, the refined camera-to-world matrix (``transform_matrix``, 4x4), the given one
    (``given_matrix``) and the size of the correction (``rotation_degrees``, ``translation``: how far
    the camera centre moved, world units)."""
    from fieldcraft.io.records import write_json
    from fieldcraft.render.pose_refinement import rotation_angle

    given = data.cameras.c2w.detach().cpu()
    with torch.no_grad():
        refined = model.poses(given.to(model.aabb.device)).cpu()
        corr = model.poses.corrections().cpu()[:len(given)]
    row = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    angles = torch.rad2deg(rotation_angle(given[:, :, :3].transpose(1, 2) @ refined[:, :, :3]))
    moved = (refined[:, :, 3] - given[:, :, 3]).norm(dim=-1)
    frames = [{"file_path": str(name), "transform_matrix": torch.cat([refined[k], row]).tolist(),
               "given_matrix": torch.cat([given[k], row]).tolist(), "rotation_degrees": float(angles[k]),
               "translation": float(moved[k]), "correction": corr[k].tolist()}
              for k, name in enumerate(data.names)]
    record = {"convention": "camera-to-world matrices, OpenGL camera axes (x right, y up, looking down -z), in the "
                            "world frame and units the run was fitted in; correction = (axis-angle rotation in "
                            "radians, translation in world units) in the camera's frame: R' = R exp(w), "
                            "centre' = centre + R v",
              "data": str(data.source), "step": int(step), "frames": frames}
    return write_json(path, record)


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
        poses = orbit_around(c2w, frames)
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


def camera_path_cameras(path: CameraPath) -> Cameras:
    """The frames of a camera path file (:func:`fieldcraft.io.camera_path.read_camera_path`) as
    :class:`~fieldcraft.data.cameras.Cameras`: square pixels, principal point at the image centre."""
    fx, fy, cx, cy = (torch.tensor([path.intrinsics(k)[i] for k in range(len(path))], dtype=torch.float32)
                      for i in range(4))
    c2w = torch.as_tensor(path.c2w[:, :3, :], dtype=torch.float32)
    return Cameras(c2w, fx, fy, cx, cy, path.width, path.height)


def render_camera_path(out_dir: str | Path, camera_path: str | Path | CameraPath, dest: str | Path,
                       octree: str | Path | None = None, data_path: str | Path | None = None, progress: bool = True,
                       device: str | None = None) -> list[Path]:
    """Render every frame of a camera path file (``fieldcraft view``'s export, nerfstudio's layout,
    :mod:`fieldcraft.io.camera_path`) with the fitted field of ``out_dir`` or, given ``octree``, with
    that baked grid (which needs only the run's checkpoint header). ``dest``: a video (``.mp4`` / ``.gif``,
    at the file's ``fps``) or ``.png`` frames (``dest`` itself for a one-frame path, else
    ``<stem>_0000.png``, ...). Returns the files written."""
    from tqdm.auto import tqdm

    from fieldcraft.io.camera_path import read_camera_path
    from fieldcraft.io.images import write_png
    from fieldcraft.io.video import write_video

    path = camera_path if isinstance(camera_path, CameraPath) else read_camera_path(camera_path)
    images = list(tqdm(camera_path_frames(out_dir, path, octree, data_path, device), total=len(path),
                       desc="render camera path", disable=not progress))
    dest = Path(dest)
    if dest.suffix.lower() != ".png":
        return [write_video(dest, images, max(1, round(path.fps)))]
    if len(images) == 1:
        return [write_png(dest, images[0])]
    return [write_png(dest.with_name(f"{dest.stem}_{k:04d}.png"), image) for k, image in enumerate(images)]


def camera_path_frames(out_dir: str | Path, path: CameraPath, octree: str | Path | None = None,
                       data_path: str | Path | None = None, device: str | None = None) -> Iterator[np.ndarray]:
    """The pictures ``[H, W, 3]`` (float32 in ``[0, 1]``) of ``path``'s frames, one at a time, rendered
    as :func:`render_camera_path` does (the field's near and far bounds are the fitted dataset's)."""
    if octree is not None:
        from fieldcraft.io.octree_file import load_octree
        from fieldcraft.render.octree import OctreeRenderer
        from fieldcraft.tasks.nerf.baked import run_header

        run_header(out_dir)  # a NeRF run, as for every render nerf (only its header is read)
        renderer = OctreeRenderer(load_octree(octree), device)
        for k in range(len(path)):
            out = renderer.render_camera(path.c2w[k, :3], *path.intrinsics(k), path.height, path.width)
            yield np.clip(out["rgb"], 0.0, 1.0)
        return
    model, meta = load_model(out_dir, device=device)
    data = fitted_views(meta, data_path, "train")
    yield from field_frames(model, camera_path_cameras(path), data.near, data.far)


def field_frames(model: NerfModel, cams: Cameras, near: float, far: float) -> Iterator[np.ndarray]:
    """The field's pictures ``[H, W, 3]`` (float32 in ``[0, 1]``, over its background) of every camera of ``cams``."""
    bg = background_colour(model.config.background, model.aabb.device)[None]
    with torch.no_grad():
        for k in range(len(cams.c2w)):
            rays = model.view_rays(cams, k, near, far)
            yield model.render_image(rays, bg, cams.height, cams.width)["rgb"].float().cpu().numpy()
