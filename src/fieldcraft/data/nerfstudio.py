"""nerfstudio / instant-ngp ``transforms.json``.

Top-level intrinsics ``fl_x``, ``fl_y`` (or ``camera_angle_x``), ``cx``, ``cy``, ``w``, ``h``
may be overridden per frame; ``frames[].file_path`` is relative to the JSON file and
``frames[].transform_matrix`` is camera-to-world in the OpenGL convention
(:mod:`fieldcraft.data.cameras`). Per-frame image sizes must agree.

Scene box: instant-ngp maps world points by ``p * scale + offset`` (defaults 0.33 and 0.5) into
the unit cube and enlarges it to ``aabb_scale`` (default 1) cubes; fieldcraft uses the same box
in world units, ``centre = (0.5 - offset) / scale``, half-size ``aabb_scale / (2 scale)``. The
scene is unbounded with ``aabb_scale > 1``, or without ``aabb_scale`` when a capture tool wrote
the file (:func:`transforms_scene`), else an object. A capture without ``aabb_scale`` keeps
COLMAP's arbitrary scale (ns-process-data leaves it to the reader), so its world is brought to
the one instant-ngp's colmap2nerf writes (:func:`colmap2nerf_normalisation`): centred on the point
the cameras look at, the cameras at a mean distance 4 from it. ``nerfacto`` depends on that
scale (its densities are per world unit; ``bench/nerf_world_scale.py`` compares it with the
farthest camera at 1, docs/nerf.md "World scale").

Camera models (``camera_model``, top level or per frame; instant-ngp's ``is_fisheye: true`` means
``OPENCV_FISHEYE``): ``OPENCV`` (default), ``PINHOLE``, ``SIMPLE_PINHOLE``, ``SIMPLE_RADIAL``,
``RADIAL`` with coefficients ``k1, k2, k3, k4, p1, p2`` (absent ones 0) and ``OPENCV_FISHEYE``
with ``k1..k4``; rays are undistorted in ray generation (:mod:`fieldcraft.data.cameras`).
Other models (e.g. ``EQUIRECTANGULAR``) are refused with one line.

Per-frame intrinsics (``fl_x, fl_y, cx, cy``, coefficients) and image sizes (``w, h``) are kept;
frames whose images differ in size from the most common one are resampled to it, their
intrinsics scaled to match (:func:`fieldcraft.data.scene.same_size`). ``downscale N`` reads
nerfstudio's pre-shrunk folders when every frame has one (``images/x.jpg`` ->
``images_N/x.jpg``, or ``<folder>_N/x.jpg`` for another folder name; intrinsics scaled by
``1 / N``), otherwise shrinks the full images on load.

There are no splits in the format: every 8th frame (0, 8, 16, ...) is held out as the
``val``/``test`` split, the rest is ``train`` (LLFF's convention).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from fieldcraft.data.cameras import DISTORTION_PARAMS, Cameras, look_centre, pose_from_json
from fieldcraft.data.scene import (
    PosedImages,
    check_unique,
    dataset_file,
    number,
    present_frames,
    read_image,
    read_json,
    same_size,
    stack_images,
)
from fieldcraft.errors import FieldcraftError

HOLDOUT_EVERY = 8


MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV_FISHEYE")


def load_nerfstudio(path: str | Path, split: str = "train", max_images: int | None = None, *, downscale: int = 1,
                    skip_missing: bool = False) -> PosedImages:
    path = Path(path)
    meta = read_json(path)
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise FieldcraftError(f"{path}: 'frames' must be a non-empty list")
    labels = [f"frame {k}" for k in range(len(frames))]
    for k, fr in enumerate(frames):
        if not isinstance(fr, dict) or "file_path" not in fr or "transform_matrix" not in fr:
            raise FieldcraftError(f"{path}: frame {k} needs 'file_path' and 'transform_matrix'")
    files = [dataset_file(path.parent, fr["file_path"], path, labels[k]) for k, fr in enumerate(frames)]
    check_unique(files, labels, path)
    held = [k for k in range(len(frames)) if k % HOLDOUT_EVERY == 0]
    keep = [k for k in range(len(frames)) if (k in held) == (split != "train")]
    if not keep:
        raise FieldcraftError(f"{path}: split {split!r} is empty")
    shrunk = _shrunk_files(path.parent, [files[k] for k in keep], downscale)
    read_from = shrunk or [files[k] for k in keep]
    keep = [keep[i] for i in present_frames(read_from, [labels[k] for k in keep], path, skip_missing)]
    if shrunk is not None:
        shrunk = _shrunk_files(path.parent, [files[k] for k in keep], downscale)
    if max_images is not None:
        keep = keep[:max_images]
    mats, intr, dist, fisheye, arrays, sizes = [], [], [], [], [], []
    for k in keep:
        fr = frames[k]
        get = lambda key, default=None, fr=fr: fr.get(key, meta.get(key, default))  # per-frame override
        model, coeffs = _camera_model(path, k, get)
        if get("w") is None or get("h") is None:
            raise FieldcraftError(f"{path}: frame {k} has no image size ('w', 'h')")
        w, h = (number(get(key), f"frame {k} '{key}'", path, positive=True) for key in ("w", "h"))
        if w != int(w) or h != int(h):
            raise FieldcraftError(f"{path}: frame {k} image size must be whole pixels, got {w} x {h}")
        fx = get("fl_x")
        if fx is None and get("camera_angle_x") is not None:
            angle = number(get("camera_angle_x"), f"frame {k} 'camera_angle_x'", path, positive=True)
            fx = 0.5 * w / math.tan(0.5 * angle)
        if fx is None:
            raise FieldcraftError(f"{path}: frame {k} has no focal length ('fl_x' or 'camera_angle_x')")
        fx = number(fx, f"frame {k} 'fl_x'", path, positive=True)
        fy = number(get("fl_y", fx), f"frame {k} 'fl_y'", path, positive=True)
        cx = number(get("cx", w / 2), f"frame {k} 'cx'", path)
        cy = number(get("cy", h / 2), f"frame {k} 'cy'", path)
        intr.append([fx / downscale, fy / downscale, cx / downscale, cy / downscale])
        dist.append(coeffs)
        fisheye.append(model == "OPENCV_FISHEYE")
        mats.append(pose_from_json(fr["transform_matrix"], str(path), k))
        file = shrunk[keep.index(k)] if shrunk is not None else files[k]
        arr = read_image(file, 1 if shrunk is not None else downscale, uint8=True)
        want = (int(h) // downscale, int(w) // downscale)
        ok = arr.shape[:2] == want if shrunk is None else all(abs(a - b) <= 1 for a, b in zip(arr.shape[:2], want))
        if not ok:
            raise FieldcraftError(f"{file}: image is {arr.shape[1]}x{arr.shape[0]} but {path.name} says "
                                  f"{int(w)}x{int(h)}" + (f" (/{downscale}: {want[1]}x{want[0]})" if downscale > 1 else ""))
        arrays.append(arr)
        sizes.append(arr.shape[:2])
    arrays, it = same_size(arrays, np.array(intr))
    paths = [files[k] for k in keep]
    images = stack_images(arrays, paths)
    h, w = images.shape[1:3]
    it = torch.tensor(it, dtype=torch.float32)
    cams = Cameras(torch.stack(mats).float(), it[:, 0], it[:, 1], it[:, 2], it[:, 3], w, h,
                   torch.tensor(dist, dtype=torch.float32), torch.tensor(fisheye))
    scale = number(meta.get("scale", 0.33), "'scale'", path, positive=True)
    offset = meta.get("offset", [0.5, 0.5, 0.5])
    if not isinstance(offset, list) or len(offset) != 3:
        raise FieldcraftError(f"{path}: 'offset' must be a list of 3 numbers, got {offset!r:.40}")
    offset = [number(v, "'offset'", path) for v in offset]
    aabb_scale = number(meta.get("aabb_scale", 1), "'aabb_scale'", path, positive=True)
    half = aabb_scale / (2 * scale)
    centre = (0.5 - torch.tensor(offset, dtype=torch.float32)) / scale
    aabb = torch.stack([centre - half, centre + half])
    scene = transforms_scene(meta)[0]
    if "aabb_scale" not in meta and scene == "unbounded":  # ns-process-data: COLMAP's scale
        centre, factor = colmap2nerf_normalisation(
            torch.stack([pose_from_json(fr["transform_matrix"], str(path), k) for k, fr in enumerate(frames)]))
        cams.c2w[:, :, 3] = ((cams.c2w[:, :, 3].double() - centre) * factor).float()
    near = number(meta.get("near", 0.05), "'near'", path)
    far = number(meta.get("far", 1e3), "'far'", path)
    if not 0 <= near < far:
        raise FieldcraftError(f"{path}: needs 0 <= 'near' < 'far', got near {near}, far {far}")
    names = [files[k].name for k in keep]
    return PosedImages(images, cams, names, near, far, aabb, False, str(path), "nerfstudio",
                       scene=scene)


def colmap2nerf_normalisation(c2w: Float[Tensor, "n 3 4"]) -> tuple[Float[Tensor, " 3"], float]:
    """instant-ngp's colmap2nerf world: centre (the point the cameras look at,
    :func:`~fieldcraft.data.cameras.look_centre`) and scale (``4 / mean |camera - centre|``).

    >>> from fieldcraft.render.cameras import look_at
    >>> ring = torch.stack([look_at(torch.tensor([0.5 * math.cos(a), 0.0, 0.5 * math.sin(a)]))[:3] for a in (0, 2, 4)])
    >>> centre, factor = colmap2nerf_normalisation(ring)
    >>> centre.abs().max().item() < 1e-5, round(factor, 4)
    (True, 8.0)
    """
    centre = look_centre(c2w)
    spread = float((c2w[:, :, 3] - centre).norm(dim=-1).mean())
    return centre, 4.0 / spread if spread > 0 else 1.0


def transforms_scene(meta: dict) -> tuple[str, str]:
    """The kind of scene a ``transforms.json`` holds (``unbounded`` or ``object``) and why (for
    messages): ``aabb_scale > 1`` (instant-ngp's colmap2nerf) -> unbounded, ``aabb_scale`` 1 ->
    object; without ``aabb_scale``, a capture tool's camera description (``camera_model`` or a
    non-zero distortion coefficient, top level or per frame, as nerfstudio's ns-process-data
    writes) -> unbounded, else object (a synthetic scene).

    >>> transforms_scene({"camera_model": "OPENCV", "frames": []})[0], transforms_scene({"frames": []})[0]
    ('unbounded', 'object')
    """
    scale = meta.get("aabb_scale")
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        return ("unbounded" if scale > 1 else "object"), f"transforms.json with aabb_scale {scale:g}"
    frames = meta.get("frames") if isinstance(meta.get("frames"), list) else []
    for d in [meta, *(fr for fr in frames if isinstance(fr, dict))]:
        if "camera_model" in d:
            return "unbounded", f"transforms.json of a capture, camera_model {d['camera_model']} and no aabb_scale"
        if any(isinstance(d.get(k), (int, float)) and d.get(k) for k in DISTORTION_PARAMS):
            return "unbounded", "transforms.json of a capture, distortion coefficients and no aabb_scale"
    return "object", "transforms.json without aabb_scale or a camera model"


def _shrunk_files(root: Path, files: list[Path], factor: int) -> list[Path] | None:
    """nerfstudio's pre-shrunk copies of ``files`` for ``factor`` (module docstring), when every one exists."""
    if factor == 1:
        return None
    for name in (lambda p: p.parent.with_name(f"{p.parent.name}_{factor}") / p.name,
                 lambda p: root / f"images_{factor}" / p.name):
        alt = [name(p) for p in files]
        if all(p.is_file() for p in alt):
            return alt
    return None


def _camera_model(path: Path, k: int, get) -> tuple[str, list[float]]:
    """Frame ``k``'s camera model and its coefficients ``(k1, k2, k3, k4, p1, p2)``."""
    model = str(get("camera_model", "OPENCV_FISHEYE" if get("is_fisheye", False) is True else "OPENCV")).upper()
    if model not in MODELS:
        raise FieldcraftError(f"{path}: frame {k}: camera_model {model} is not supported (use one of "
                              f"{', '.join(MODELS)}); reproject the images to one of them first")
    coeffs = {key: number(get(key, 0.0) or 0.0, f"frame {k} '{key}'", path) for key in DISTORTION_PARAMS}
    if model == "OPENCV_FISHEYE" and (coeffs["p1"] or coeffs["p2"]):
        raise FieldcraftError(f"{path}: frame {k}: OPENCV_FISHEYE has no tangential coefficients, got "
                              f"p1={coeffs['p1']:g}, p2={coeffs['p2']:g}")
    return model, [coeffs[key] for key in DISTORTION_PARAMS]
