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

from pathlib import Path

import torch

from fieldcraft.data.cameras import Cameras, check_poses
from fieldcraft.data.scene import PosedImages, read_image, read_json, stack_images
from fieldcraft.errors import FieldcraftError

AABB = ((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))
NEAR, FAR = 2.0, 6.0


def load_blender(root: str | Path, split: str = "train", max_images: int | None = None) -> PosedImages:
    """Read ``root/transforms_{split}.json`` and its images."""
    root = Path(root)
    source = root / f"transforms_{split}.json"
    meta = read_json(source)
    if "camera_angle_x" not in meta or "frames" not in meta:
        raise FieldcraftError(f"{source}: needs 'camera_angle_x' and 'frames'")
    frames = meta["frames"]
    if not isinstance(frames, list) or not frames:
        raise FieldcraftError(f"{source}: 'frames' must be a non-empty list")
    if max_images is not None:
        frames = frames[:max_images]
    mats, paths = [], []
    for k, fr in enumerate(frames):
        if not isinstance(fr, dict) or "file_path" not in fr or "transform_matrix" not in fr:
            raise FieldcraftError(f"{source}: frame {k} needs 'file_path' and 'transform_matrix'")
        try:
            m = torch.tensor(fr["transform_matrix"], dtype=torch.float64)
        except (TypeError, ValueError):
            raise FieldcraftError(f"{source}: frame {k} 'transform_matrix' is not a numeric matrix") from None
        if m.ndim != 2 or tuple(m.shape) not in ((3, 4), (4, 4)):
            raise FieldcraftError(f"{source}: frame {k} 'transform_matrix' must be 3x4 or 4x4, got shape {tuple(m.shape)}")
        mats.append(m[:3, :4])
        paths.append(_image_path(root, fr["file_path"]))
    c2w = check_poses(torch.stack(mats), str(source))
    arrays = [read_image(p) for p in paths]
    images = stack_images(arrays, paths)
    h, w = images.shape[1:3]
    cams = Cameras.from_fov(c2w, float(meta["camera_angle_x"]), w, h)
    names = [str(p.relative_to(root / split)) if p.is_relative_to(root / split) else p.name for p in paths]
    return PosedImages(images.float(), cams, names, NEAR, FAR, torch.tensor(AABB), False, str(source), "blender")


def _image_path(root: Path, file_path: str) -> Path:
    p = root / file_path
    if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".exr"):
        return p
    for ext in (".png", ".jpg", ".jpeg"):
        if p.with_name(p.name + ext).exists():
            return p.with_name(p.name + ext)
    return p.with_name(p.name + ".png")  # reported as missing by read_image
