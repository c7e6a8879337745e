"""nerfstudio / instant-ngp ``transforms.json``.

Top-level intrinsics ``fl_x``, ``fl_y`` (or ``camera_angle_x``), ``cx``, ``cy``, ``w``, ``h``
may be overridden per frame; ``frames[].file_path`` is relative to the JSON file and
``frames[].transform_matrix`` is camera-to-world in the OpenGL convention
(:mod:`fieldcraft.data.cameras`). Per-frame image sizes must agree.

Scene box: instant-ngp maps world points by ``p * scale + offset`` (defaults 0.33 and 0.5) into
the unit cube and enlarges it to ``aabb_scale`` (default 1) cubes; fieldcraft uses the same box
in world units, ``centre = (0.5 - offset) / scale``, half-size ``aabb_scale / (2 scale)``.

Lens distortion (non-zero ``k1..k4``, ``p1``, ``p2``) and camera models other than ``OPENCV``,
``PINHOLE``, ``SIMPLE_PINHOLE`` (e.g. ``OPENCV_FISHEYE``) are *rejected* with a message: undistort the
images first (e.g. ``ns-process-data`` or COLMAP ``image_undistorter``).

There are no splits in the format: every 8th frame (0, 8, 16, ...) is held out as the
``val``/``test`` split, the rest is ``train`` (LLFF's convention).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from fieldcraft.data.cameras import Cameras, pose_from_json
from fieldcraft.data.scene import PosedImages, check_unique, dataset_file, number, read_image, read_json, stack_images
from fieldcraft.errors import FieldcraftError

DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
HOLDOUT_EVERY = 8


def load_nerfstudio(path: str | Path, split: str = "train", max_images: int | None = None) -> PosedImages:
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
    if max_images is not None:
        keep = keep[:max_images]
    mats, paths, intr = [], [], []
    size = None
    for k in keep:
        fr = frames[k]
        get = lambda key, default=None, fr=fr: fr.get(key, meta.get(key, default))  # per-frame override
        _check_distortion(path, k, get)
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
        intr.append((fx, fy, cx, cy))
        if size is None:
            size = (int(w), int(h))
        elif size != (int(w), int(h)):
            raise FieldcraftError(f"{path}: frame {k} size {w:g}x{h:g} differs from {size[0]}x{size[1]} "
                                  "(mixed sizes unsupported)")
        mats.append(pose_from_json(fr["transform_matrix"], str(path), k))
        paths.append(files[k])
    if not keep:
        raise FieldcraftError(f"{path}: split {split!r} is empty")
    c2w = torch.stack(mats).float()
    images = stack_images([read_image(p) for p in paths], paths)
    h, w = images.shape[1:3]
    if (w, h) != size:
        raise FieldcraftError(f"{paths[0]}: image is {w}x{h} but the JSON says {size[0]}x{size[1]}")
    it = torch.tensor(intr, dtype=torch.float32)
    cams = Cameras(c2w, it[:, 0], it[:, 1], it[:, 2], it[:, 3], w, h)
    scale = number(meta.get("scale", 0.33), "'scale'", path, positive=True)
    offset = meta.get("offset", [0.5, 0.5, 0.5])
    if not isinstance(offset, list) or len(offset) != 3:
        raise FieldcraftError(f"{path}: 'offset' must be a list of 3 numbers, got {offset!r:.40}")
    offset = [number(v, "'offset'", path) for v in offset]
    half = number(meta.get("aabb_scale", 1), "'aabb_scale'", path, positive=True) / (2 * scale)
    centre = (0.5 - torch.tensor(offset, dtype=torch.float32)) / scale
    aabb = torch.stack([centre - half, centre + half])
    near = number(meta.get("near", 0.05), "'near'", path)
    far = number(meta.get("far", 1e3), "'far'", path)
    if not 0 <= near < far:
        raise FieldcraftError(f"{path}: needs 0 <= 'near' < 'far', got near {near}, far {far}")
    names = [files[k].name for k in keep]
    return PosedImages(images.float(), cams, names, near, far, aabb, False, str(path), "nerfstudio")


def _check_distortion(path: Path, k: int, get) -> None:
    model = str(get("camera_model", "OPENCV")).upper()
    coeffs = {key: number(get(key, 0.0) or 0.0, f"frame {k} '{key}'", path) for key in DISTORTION_KEYS}
    nonzero = {key: v for key, v in coeffs.items() if v != 0.0}
    if model not in ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE"):
        raise FieldcraftError(f"{path}: frame {k}: camera_model {model} is not supported (pinhole only); "
                              "undistort the images first (ns-process-data or COLMAP image_undistorter)")
    if nonzero:
        listed = ", ".join(f"{key}={v:g}" for key, v in nonzero.items())
        raise FieldcraftError(f"{path}: frame {k} has lens distortion ({listed}); fieldcraft renders pinhole cameras "
                              "only, undistort the images first (ns-process-data or COLMAP image_undistorter)")
