"""Posed images: what every multi-view reader (Blender, nerfstudio, LLFF) returns.

:func:`load_posed_images` detects the format of a dataset directory:

- ``transforms_train.json`` -> NeRF-synthetic / Blender (:mod:`fieldcraft.data.blender`),
- ``transforms.json`` -> nerfstudio / instant-ngp (:mod:`fieldcraft.data.nerfstudio`),
- ``poses_bounds.npy`` -> LLFF (:mod:`fieldcraft.data.llff`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from fieldcraft.data.cameras import Cameras
from fieldcraft.errors import FieldcraftError

SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class PosedImages:
    """Images of one split with their cameras.

    - ``images``: ``[n, H, W, C]`` float32 in ``[0, 1]`` (8- or 16-bit files, every bit kept);
      ``C = 4`` (straight RGBA, not yet composited: see :func:`composite`) or ``C = 3``.
    - ``cameras``: :class:`~fieldcraft.data.cameras.Cameras` (OpenGL convention).
    - ``names``: file name of each image relative to its split folder (used for outputs).
    - ``near, far``: ray distance bounds (world units; NDC ``0, 1`` for forward-facing scenes).
    - ``aabb``: ``[2, 3]`` scene box (min, max) the field is defined on.
    - ``ndc``: rays are warped to normalised device coordinates (LLFF forward-facing).
    - ``source``: the file the split was read from (for messages).
    - ``format``: ``blender``, ``nerfstudio`` or ``llff``.
    """

    images: Float[Tensor, "n H W C"]
    cameras: Cameras
    names: list[str]
    near: float
    far: float
    aabb: Float[Tensor, "2 3"]
    ndc: bool = False
    source: str = ""
    format: str = ""

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        return int(self.images.shape[2])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, idx: list[int]) -> PosedImages:
        return dataclasses.replace(self, images=self.images[idx], cameras=self.cameras[idx],
                                   names=[self.names[i] for i in idx])

    def to(self, device: torch.device | str) -> PosedImages:
        """Images, cameras and box on ``device``."""
        return dataclasses.replace(self, images=self.images.to(device), cameras=self.cameras.to(device),
                                   aabb=self.aabb.to(device))


def composite(images: Float[Tensor, "*b C"], background: Float[Tensor, "*#b 3"]) -> Float[Tensor, "*b 3"]:
    """Composite straight-alpha RGBA on a background colour (``rgb a + bg (1 - a)``); RGB passes through.

    >>> composite(torch.tensor([[1.0, 0.0, 0.0, 0.25]]), torch.ones(3))
    tensor([[1.0000, 0.7500, 0.7500]])
    """
    if images.shape[-1] == 3:
        return images
    rgb, a = images[..., :3], images[..., 3:4]
    return rgb * a + background * (1.0 - a)


def read_image(path: Path) -> np.ndarray:
    """An image file as float32 ``[H, W, C]`` in ``[0, 1]`` (:func:`fieldcraft.data.images.load_image`:
    8-bit and 16-bit PNGs keep all their bits), grey expanded to RGB, grey + alpha to RGBA."""
    from fieldcraft.data.images import load_image

    if not path.is_file():
        raise FieldcraftError(f"{path}: image file not found")
    arr = load_image(path).pixels
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.shape[-1] not in (3, 4):
        raise FieldcraftError(f"{path}: expected an RGB or RGBA image, got shape {arr.shape}")
    return arr


def stack_images(arrays: list[np.ndarray], paths: list[Path], size: tuple[int, int] | None = None) -> Tensor:
    """Stack equally sized images (resizing to ``size = (H, W)`` if given) into ``[n, H, W, C]``."""
    import skimage.transform

    out = []
    channels = max(a.shape[-1] for a in arrays)
    for a, p in zip(arrays, paths):
        if size is not None and a.shape[:2] != size:
            a = skimage.transform.resize(a, size + (a.shape[2],), anti_aliasing=True, preserve_range=True).astype(np.float32)
        if a.shape[:2] != arrays[0].shape[:2] and size is None:
            raise FieldcraftError(f"{p}: image size {a.shape[:2]} differs from {arrays[0].shape[:2]} of {paths[0]}")
        if a.shape[-1] < channels:
            a = np.concatenate([a, np.ones_like(a[..., :1])], -1)
        out.append(a)
    return torch.from_numpy(np.stack(out))


def dataset_format(path: str | Path) -> tuple[str, Path]:
    """The format of a dataset directory (``blender``, ``nerfstudio`` or ``llff``, see module
    docstring) and the directory itself (a ``transforms*.json`` path names its folder)."""
    path = Path(path)
    if not path.exists():
        raise FieldcraftError(f"{path}: dataset directory not found")
    if path.is_file() and path.name.startswith("transforms") and path.suffix == ".json":
        path = path.parent
    for name, fmt in (("transforms_train.json", "blender"), ("transforms.json", "nerfstudio"),
                      ("poses_bounds.npy", "llff")):
        if (path / name).exists():
            return fmt, path
    raise FieldcraftError(f"{path}: not a NeRF dataset (expected transforms_train.json, transforms.json or poses_bounds.npy)")


def forward_facing(path: str | Path) -> bool:
    """Whether the dataset's rays are warped to NDC (LLFF forward-facing captures)."""
    return dataset_format(path)[0] == "llff"


def load_posed_images(path: str | Path, split: str = "train", max_images: int | None = None) -> PosedImages:
    """Read one split of a dataset directory (format detected, see module docstring)."""
    if split not in SPLITS:
        raise FieldcraftError(f"unknown split {split!r} (use {', '.join(SPLITS)})")
    fmt, path = dataset_format(path)
    if fmt == "blender":
        from fieldcraft.data.blender import load_blender

        return load_blender(path, split, max_images=max_images)
    if fmt == "nerfstudio":
        from fieldcraft.data.nerfstudio import load_nerfstudio

        return load_nerfstudio(path / "transforms.json", split, max_images=max_images)
    from fieldcraft.data.llff import load_llff

    return load_llff(path, split, max_images=max_images)


def read_json(path: Path) -> dict:
    """Parse a JSON file into a dict, one-line errors for missing or malformed files."""
    import json

    if not path.is_file():
        raise FieldcraftError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FieldcraftError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, dict):
        raise FieldcraftError(f"{path}: expected a JSON object at the top level")
    return data


def number(value: object, what: str, source: str | Path, *, positive: bool = False) -> float:
    """``value`` as a finite float (``positive``: > 0), else one line naming ``what`` and ``source``.

    >>> number("wide", "'camera_angle_x'", "t.json")
    Traceback (most recent call last):
    fieldcraft.errors.FieldcraftError: t.json: 'camera_angle_x' must be a number, got 'wide'
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldcraftError(f"{source}: {what} must be a number, got {value!r:.40}")
    if not math.isfinite(value):
        raise FieldcraftError(f"{source}: {what} must be finite, got {value}")
    if positive and value <= 0:
        raise FieldcraftError(f"{source}: {what} must be positive, got {value}")
    return float(value)


def dataset_file(root: Path, file_path: object, source: str | Path, label: str) -> Path:
    """``root / file_path`` for a frame's relative ``file_path``, refused (one line) when it is not a
    string, is absolute, or leads outside ``root`` (``..``); compared lexically, so symbolic links
    inside the dataset may point anywhere.

    >>> dataset_file(Path("/data/scene"), "../other/r_0.png", "t.json", "frame 3")
    Traceback (most recent call last):
    fieldcraft.errors.FieldcraftError: t.json: frame 3 'file_path' '../other/r_0.png' points outside the dataset directory /data/scene
    """
    if not isinstance(file_path, str) or not file_path.strip():
        raise FieldcraftError(f"{source}: {label} 'file_path' must be a non-empty string, got {file_path!r:.40}")
    base = os.path.normpath(os.path.abspath(root))
    full = os.path.normpath(os.path.join(base, file_path))
    if os.path.isabs(file_path) or not full.startswith(base + os.sep):
        raise FieldcraftError(f"{source}: {label} 'file_path' {file_path!r} points outside the dataset directory {root}")
    return root / os.path.relpath(full, base)


def check_unique(paths: list[Path], labels: list[str], source: str | Path) -> None:
    """One line when two frames name the same image file.

    >>> check_unique([Path("a.png"), Path("b.png"), Path("./a.png")], ["frame 0", "frame 1", "frame 2"], "t.json")
    Traceback (most recent call last):
    fieldcraft.errors.FieldcraftError: t.json: frame 2 repeats the image of frame 0 (a.png)
    """
    seen: dict[str, int] = {}
    for k, p in enumerate(paths):
        key = os.path.normpath(p)
        if key in seen:
            raise FieldcraftError(f"{source}: {labels[k]} repeats the image of {labels[seen[key]]} ({p})")
        seen[key] = k
