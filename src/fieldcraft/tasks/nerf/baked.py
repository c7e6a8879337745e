"""What a baked octree produces: test-view renders with their scores, and orbit videos.

- :func:`evaluate_octree` renders every view of a split with the baked grid to
  ``<run>/eval/<split>-octree/`` (the layout of :func:`fieldcraft.tasks.nerf.evaluate`: the
  dataset's file names as 8-bit PNGs, depth pictures in ``depth/``, ``metrics.json`` with
  per-view and mean PSNR and SSIM against the views composited on the grid's background), plus
  the rendering milliseconds of each view and their mean. Scoring and writing a view happen in a
  second thread while the next view renders.
- :func:`render_orbit_octree` renders the orbit of :func:`fieldcraft.tasks.nerf.orbit_cameras`.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from fieldcraft.errors import FieldcraftError, check
from fieldcraft.io.octree_file import load_octree
from fieldcraft.render.octree import OctreeRenderer


def run_header(out_dir: str | Path) -> dict[str, Any]:
    """The JSON header of the run's checkpoint (no tensors read)."""
    from fieldcraft.io.checkpoint import load_checkpoint_arrays

    _, meta = load_checkpoint_arrays(Path(out_dir), "\0")
    check(meta.get("task") == "nerf", f"{out_dir}: the checkpoint is of task {meta.get('task')!r}, not 'nerf'")
    check(isinstance(meta.get("data"), str), f"{out_dir}: malformed checkpoint: no dataset path ('data')")
    return meta


def _camera(cams, k: int) -> tuple:
    return (cams.c2w[k].cpu().numpy(), float(cams.fx[k]), float(cams.fy[k]), float(cams.cx[k]), float(cams.cy[k]),
            cams.height, cams.width)


def _score_and_write(dest: Path, name: Path, out: dict[str, np.ndarray], gt: np.ndarray, ms: float) -> dict[str, Any]:
    from fieldcraft.io.images import write_png
    from fieldcraft.metrics import psnr, ssim
    from fieldcraft.render.depth import depth_picture

    rgb = np.clip(out["rgb"], 0.0, 1.0)
    write_png(dest / name, rgb)
    write_png(dest / "depth" / name, depth_picture(out["depth"], out["opacity"]))
    return {"name": str(name), "psnr": psnr(rgb, gt), "ssim": ssim(rgb, gt), "ms": ms}


def evaluate_octree(out_dir: str | Path, octree: str | Path, split: str = "test", data_path: str | Path | None = None,
                    max_images: int | None = None, progress: bool = True, device: str | None = None) -> dict[str, Any]:
    """Render and score every view of ``split`` with the baked grid ``octree`` (module docstring);
    ``max_images``: the first N views. Returns the metrics written to ``metrics.json``."""
    import torch
    from tqdm.auto import tqdm

    from fieldcraft.data.scene import composite
    from fieldcraft.io.records import write_json
    from fieldcraft.metrics import PSNR_DEFINITION, SSIM_DEFINITION
    from fieldcraft.tasks.nerf.outputs import fitted_views

    meta = run_header(out_dir)
    tree = load_octree(octree)
    renderer = OctreeRenderer(tree, device)
    data = fitted_views(meta, data_path, split, max_images)
    if data.ndc:
        raise FieldcraftError(f"{data.source}: a forward-facing (NDC) dataset cannot be rendered from an octree")
    bg = torch.as_tensor(tree.background, dtype=data.images.dtype)
    dest = Path(out_dir) / "eval" / f"{split}-octree"
    renderer.render_camera(*_camera(data.cameras.rescaled(8, 8), 0))  # compile or load the kernels
    pending = []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as pool:
        for k in tqdm(range(len(data)), desc=f"eval {split} (octree)", disable=not progress):
            t = time.perf_counter()
            out = renderer.render_camera(*_camera(data.cameras, k))
            ms = 1000.0 * (time.perf_counter() - t)
            gt = composite(data.image(k), bg).numpy()
            pending.append(pool.submit(_score_and_write, dest, Path(data.names[k]).with_suffix(".png"), out, gt, ms))
        views = [p.result() for p in pending]
    seconds = time.perf_counter() - t0
    mean = lambda key: float(np.mean([v[key] for v in views])) if views else math.nan  # noqa: E731
    metrics = {"split": split, "data": str(data.source), "views": len(views), "octree": str(Path(octree).resolve()),
               "resolution": tree.resolution, "sh_degree": tree.sh_degree, "bricks": len(tree.bricks),
               "step": meta.get("step"), "fit_seconds": meta.get("seconds"),
               "psnr": mean("psnr"), "ssim": mean("ssim"),
               "psnr_definition": PSNR_DEFINITION + "; mean over views",
               "ssim_definition": SSIM_DEFINITION + "; mean over views",
               "ms_per_view": mean("ms"), "render_seconds_per_view": seconds / max(len(views), 1),
               "kernels": "numba" if renderer.fast else "reference", "device": renderer.device,
               "directory": str(dest), "per_view": views}
    write_json(dest / "metrics.json", metrics)
    return metrics


def render_orbit_octree(out_dir: str | Path, octree: str | Path, dest: str | Path, frames: int = 60, fps: int = 30,
                        data_path: str | Path | None = None, progress: bool = True, device: str | None = None) -> Path:
    """Render the orbit of :func:`fieldcraft.tasks.nerf.orbit_cameras` (training views of the fitted
    dataset) with the baked grid to the video ``dest``; returns the path written."""
    from tqdm.auto import tqdm

    from fieldcraft.io.video import write_video
    from fieldcraft.tasks.nerf.outputs import fitted_views, orbit_cameras

    check(frames >= 1, f"--frames must be >= 1, got {frames}")
    meta = run_header(out_dir)
    renderer = OctreeRenderer(load_octree(octree), device)
    data = fitted_views(meta, data_path, "train", max_images=None)
    check(not data.ndc, f"{data.source}: a forward-facing (NDC) dataset cannot be rendered from an octree")
    cams = orbit_cameras(data, frames)
    images = [renderer.render_camera(*_camera(cams, k))["rgb"]
              for k in tqdm(range(frames), desc="render orbit (octree)", disable=not progress)]
    return write_video(Path(dest), images, fps)
