"""NeRF-synthetic ("Blender") datasets: ``transforms_{train,val,test}.json`` + RGBA PNGs.

Each JSON holds ``camera_angle_x`` (horizontal field of view, radians) and ``frames``, each
with ``file_path`` (relative, usually without extension, e.g. ``./train/r_0``) and a 4x4
camera-to-world ``transform_matrix`` in the OpenGL convention
(:mod:`fieldcraft.data.cameras`). Images are straight-alpha RGBA; they are returned
uncomposited (``C = 4``) so the task chooses the background (white, black or random per ray,
see :func:`fieldcraft.data.scene.composite`). Scene box ``[-1.5, 1.5]^3``, near 2, far 6
(the NeRF paper's values for these scenes).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from fieldcraft.data.cameras import Cameras, pose_from_json
from fieldcraft.data.scene import (
    PosedImages,
    check_unique,
    dataset_file,
    number,
    present_frames,
    read_image,
    read_json,
    stack_images,
)
from fieldcraft.errors import FieldcraftError

AABB = ((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))
NEAR, FAR = 2.0, 6.0


def load_blender(root: str | Path, split: str = "train", max_images: int | None = None, *, downscale: int = 1,
                 skip_missing: bool = False) -> PosedImages:
    """Read ``root/transforms_{split}.json`` and its images (float32; ``downscale``, ``skip_missing``:
    :mod:`fieldcraft.data.scene`)."""
    root = Path(root)
    source = root / f"transforms_{split}.json"
    meta = read_json(source)
    if "camera_angle_x" not in meta or "frames" not in meta:
        raise FieldcraftError(f"{source}: needs 'camera_angle_x' and 'frames'")
    angle = number(meta["camera_angle_x"], "'camera_angle_x'", source, positive=True)
    if angle >= math.pi:
        raise FieldcraftError(f"{source}: 'camera_angle_x' is a field of view in radians, must be below pi, got {angle}")
    frames = meta["frames"]
    if not isinstance(frames, list) or not frames:
        raise FieldcraftError(f"{source}: 'frames' must be a non-empty list")
    if max_images is not None:
        frames = frames[:max_images]
    mats, paths = [], []
    for k, fr in enumerate(frames):
        if not isinstance(fr, dict) or "file_path" not in fr or "transform_matrix" not in fr:
            raise FieldcraftError(f"{source}: frame {k} needs 'file_path' and 'transform_matrix'")
        mats.append(pose_from_json(fr["transform_matrix"], str(source), k))
        paths.append(_image_path(dataset_file(root, fr["file_path"], source, f"frame {k}")))
    check_unique(paths, [f"frame {k}" for k in range(len(paths))], source)
    keep = present_frames(paths, [f"frame {k}" for k in range(len(paths))], source, skip_missing)
    paths = [paths[k] for k in keep]
    c2w = torch.stack([mats[k] for k in keep]).float()
    arrays = [read_image(p, downscale) for p in paths]
    images = stack_images(arrays, paths)
    h, w = images.shape[1:3]
    cams = Cameras.from_fov(c2w, angle, w, h)
    names = [str(p.relative_to(root / split)) if p.is_relative_to(root / split) else p.name for p in paths]
    return PosedImages(images.float(), cams, names, NEAR, FAR, torch.tensor(AABB), False, str(source), "blender")


def _image_path(p: Path) -> Path:
    """The image file of a frame's path, which may leave out the extension (``./train/r_0``)."""
    if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".exr"):
        return p
    for ext in (".png", ".jpg", ".jpeg"):
        if p.with_name(p.name + ext).exists():
            return p.with_name(p.name + ext)
    return p.with_name(p.name + ".png")  # reported as missing by read_image
