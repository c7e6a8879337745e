"""Posed images: what every multi-view reader (Blender, nerfstudio, LLFF, COLMAP) returns.

:func:`load_posed_images` detects the format of a dataset directory:

- ``transforms_train.json`` -> NeRF-synthetic / Blender (:mod:`fieldcraft.data.blender`),
- ``transforms.json`` -> nerfstudio / instant-ngp (:mod:`fieldcraft.data.nerfstudio`),
- ``poses_bounds.npy`` -> LLFF (:mod:`fieldcraft.data.llff`), unless its cameras do not face one
  way (a viewing direction more than :data:`FORWARD_DEGREES` from their mean: NDC rays would
  not hold) and a COLMAP model is beside it, which is then read instead (LLFF's ``imgs2poses``
  leaves both),
- a COLMAP sparse model (``cameras``, ``images``, ``points3D`` as ``.bin`` or ``.txt``) in the
  directory itself or in its ``sparse/0/`` or ``sparse/`` -> COLMAP (:mod:`fieldcraft.data.colmap`).

Every reader takes ``downscale`` (an integer factor ``N``: each image shrinks to ``(H // N, W // N)``
by averaging ``N x N`` blocks, an anti-aliased box filter, and its intrinsics scale by ``1 / N``;
nerfstudio reads ``images_N/`` folders when they exist) and ``skip_missing`` (frames whose image
file is missing are dropped, and how many is printed, instead of stopping with one line naming
the first missing file).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from fieldcraft.data.cameras import Cameras
from fieldcraft.errors import FieldcraftError

SPLITS = ("train", "val", "test")
FORWARD_DEGREES = 45.0  # LLFF's forward-facing scenes: within 10-30 degrees; a capture all around: 60-90 and more


@dataclasses.dataclass
class PosedImages:
    """Images of one split with their cameras.

    - ``images``: ``[n, H, W, C]``, ``uint8`` codes when every file is 8-bit (nerfstudio, LLFF and
      COLMAP readers: a quarter of the memory), else float32 in ``[0, 1]`` (16-bit files keep every
      bit; Blender scenes are read as float32); :meth:`image` gives one view as float32 in ``[0, 1]``.
      ``C = 4`` (straight RGBA, not yet composited: see :func:`composite`) or ``C = 3``.
    - ``cameras``: :class:`~fieldcraft.data.cameras.Cameras` (OpenGL convention).
    - ``names``: file name of each image relative to its split folder (used for outputs).
    - ``near, far``: ray distance bounds (world units; NDC ``0, 1`` for forward-facing scenes).
    - ``aabb``: ``[2, 3]`` scene box (min, max) the field is defined on.
    - ``ndc``: rays are warped to normalised device coordinates (LLFF forward-facing).
    - ``source``: the file the split was read from (for messages).
    - ``format``: ``blender``, ``nerfstudio``, ``llff`` or ``colmap``.
    - ``scene``: ``object`` (object-centred, bounded by ``aabb``), ``forward`` (forward-facing, NDC)
      or ``unbounded`` (the scene reaches beyond the box: nerfstudio with ``aabb_scale > 1`` or a capture tool's
      file without it, COLMAP); presets choose their defaults by it.
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
    scene: str = "object"

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        return int(self.images.shape[2])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def image(self, k: int) -> Float[Tensor, "H W C"]:
        """View ``k`` as float32 in ``[0, 1]``."""
        return unit_pixels(self.images[k])

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


def unit_pixels(pixels: Tensor) -> Tensor:
    """Pixels as float32 in ``[0, 1]``: ``uint8`` codes divided by 255, floats as they are.

    >>> unit_pixels(torch.tensor([0, 51, 255], dtype=torch.uint8)).tolist()
    [0.0, 0.20000000298023224, 1.0]
    """
    return pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels


def downscale_image(arr: np.ndarray, factor: int) -> np.ndarray:
    """Shrink ``[H, W, C]`` to ``[H // factor, W // factor, C]`` by averaging ``factor x factor``
    blocks (an anti-aliased box filter; the last ``H % factor`` rows and ``W % factor`` columns
    are dropped, so pixel coordinates scale by exactly ``1 / factor``). ``uint8`` stays ``uint8``
    (rounded).

    >>> downscale_image(np.arange(16, dtype=np.uint8).reshape(4, 4, 1), 2)[..., 0].tolist()
    [[2, 4], [10, 12]]
    """
    if factor == 1:
        return arr
    h, w = arr.shape[0] // factor, arr.shape[1] // factor
    if h < 1 or w < 1:
        raise FieldcraftError(f"--downscale {factor} leaves no pixel of a {arr.shape[1]}x{arr.shape[0]} image")
    blocks = arr[:h * factor, :w * factor].reshape(h, factor, w, factor, -1).astype(np.float32).mean((1, 3))
    return np.round(blocks).astype(np.uint8) if arr.dtype == np.uint8 else blocks.astype(np.float32)


def read_image(path: Path, downscale: int = 1, uint8: bool = False) -> np.ndarray:
    """An image file as float32 ``[H, W, C]`` in ``[0, 1]`` (:func:`fieldcraft.data.images.load_image`:
    8-bit and 16-bit PNGs keep all their bits), grey expanded to RGB, grey + alpha to RGBA;
    ``uint8``: 8-bit files as their ``uint8`` codes; ``downscale``: :func:`downscale_image`."""
    from fieldcraft.data.images import load_image

    if not path.is_file():
        raise FieldcraftError(f"{path}: image file not found")
    loaded = load_image(path)
    arr = loaded.pixels
    if uint8 and loaded.bit_depth == 8 and loaded.value_range == (0.0, 255.0):
        arr = np.round(arr * 255.0).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.shape[-1] not in (3, 4):
        raise FieldcraftError(f"{path}: expected an RGB or RGBA image, got shape {arr.shape}")
    return downscale_image(arr, downscale)


def check_downscale(downscale: object) -> int:
    """``downscale`` as a whole factor >= 1, else one line.

    >>> check_downscale(0)
    Traceback (most recent call last):
    fieldcraft.errors.FieldcraftError: --downscale must be a whole number >= 1, got 0
    """
    if isinstance(downscale, bool) or not isinstance(downscale, int) or downscale < 1:
        raise FieldcraftError(f"--downscale must be a whole number >= 1, got {downscale!r}")
    return downscale


def present_frames(paths: list[Path], labels: list[str], source: str | Path, skip_missing: bool) -> list[int]:
    """Indices of the frames whose image file exists. A missing one stops with one line naming it
    (and the frame), unless ``skip_missing``: then those frames are dropped and one line on
    stderr says how many.

    >>> present_frames([Path("/nonexistent/a.png")], ["frame 0"], "t.json", False)
    Traceback (most recent call last):
    fieldcraft.errors.FieldcraftError: /nonexistent/a.png: image file not found (frame 0 of t.json; --skip-missing drops such frames)
    """
    keep = [k for k, p in enumerate(paths) if p.is_file()]
    if len(keep) < len(paths):
        first = next(k for k in range(len(paths)) if k not in set(keep))
        if not skip_missing:
            raise FieldcraftError(f"{paths[first]}: image file not found ({labels[first]} of {source}; "
                                  "--skip-missing drops such frames)")
        print(f"fieldcraft: {source}: skipped {len(paths) - len(keep)} of {len(paths)} frames whose image is "
              f"missing (first: {paths[first]})", file=sys.stderr)
        if not keep:
            raise FieldcraftError(f"{source}: no frame of the split has its image")
    return keep


def same_size(arrays: list[np.ndarray], intrinsics: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Bring images of different sizes to the most common size: each other image is resampled
    (anti-aliased, :func:`skimage.transform.resize`) and its intrinsics ``[n, 4]``
    ``(fx, fy, cx, cy)`` scaled by the same factors per axis (an affine change of pixel
    coordinates, which the intrinsics absorb exactly; distortion is unchanged)."""
    import collections

    import skimage.transform

    sizes = [a.shape[:2] for a in arrays]
    common = collections.Counter(sizes).most_common(1)[0][0]
    out, intr = [], intrinsics.astype(np.float64).copy()
    for k, a in enumerate(arrays):
        if a.shape[:2] != common:
            sy, sx = common[0] / a.shape[0], common[1] / a.shape[1]
            r = skimage.transform.resize(a.astype(np.float32) / (255.0 if a.dtype == np.uint8 else 1.0),
                                         common + (a.shape[2],), anti_aliasing=True, preserve_range=True)
            a = np.round(r * 255).astype(np.uint8) if a.dtype == np.uint8 else r.astype(np.float32)
            intr[k] *= (sx, sy, sx, sy)
        out.append(a)
    return out, intr


def stack_images(arrays: list[np.ndarray], paths: list[Path], size: tuple[int, int] | None = None) -> Tensor:
    """Stack equally sized images (resizing to ``size = (H, W)`` if given) into ``[n, H, W, C]``."""
    import skimage.transform

    out = []
    channels = max(a.shape[-1] for a in arrays)
    if any(a.dtype != np.uint8 for a in arrays):
        arrays = [a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a for a in arrays]
    for a, p in zip(arrays, paths):
        if size is not None and a.shape[:2] != size:
            a = skimage.transform.resize(a, size + (a.shape[2],), anti_aliasing=True, preserve_range=True).astype(np.float32)
        if a.shape[:2] != arrays[0].shape[:2] and size is None:
            raise FieldcraftError(f"{p}: image size {a.shape[:2]} differs from {arrays[0].shape[:2]} of {paths[0]}")
        if a.shape[-1] < channels:
            a = np.concatenate([a, np.full_like(a[..., :1], 255 if a.dtype == np.uint8 else 1)], -1)
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
    from fieldcraft.data.colmap import find_model

    for name, fmt in (("transforms_train.json", "blender"), ("transforms.json", "nerfstudio"),
                      ("poses_bounds.npy", "llff")):
        if (path / name).exists():
            if fmt == "llff" and find_model(path) is not None and not _llff_forward(path)[0]:
                return "colmap", path  # a capture all around, with its COLMAP model beside: no NDC
            return fmt, path
    if find_model(path) is not None:
        return "colmap", path
    raise FieldcraftError(f"{path}: not a NeRF dataset (expected transforms_train.json, transforms.json, "
                          "poses_bounds.npy or a COLMAP sparse model: cameras, images, points3D .bin/.txt)")


def _llff_forward(path: Path) -> tuple[bool, float]:
    """Whether ``path/poses_bounds.npy``'s cameras face one way (every viewing direction within
    :data:`FORWARD_DEGREES` of their mean; NDC rays assume it), and the largest angle (degrees);
    ``(True, 0)`` for a file :func:`fieldcraft.data.llff.load_llff` would refuse (it says why)."""
    try:
        arr = np.load(path / "poses_bounds.npy", allow_pickle=False)
        back = arr[:, :15].reshape(-1, 3, 5)[:, :, 2].astype(np.float64)  # LLFF's third axis: backwards
    except Exception:  # noqa: BLE001 (numpy raises several types for bad files; load_llff reports them)
        return True, 0.0
    norm = np.linalg.norm(back, axis=1, keepdims=True)
    if not (np.isfinite(back).all() and (norm > 0).all()):
        return True, 0.0
    fwd = -back / norm
    mean = fwd.mean(0)
    if np.linalg.norm(mean) < 1e-6:  # directions that cancel out: all around
        return False, 180.0
    angle = float(np.degrees(np.arccos(np.clip(fwd @ (mean / np.linalg.norm(mean)), -1, 1))).max())
    return angle <= FORWARD_DEGREES, angle


def dataset_scene(path: str | Path) -> tuple[str, str]:
    """The kind of scene a dataset holds (:attr:`PosedImages.scene`: ``object``, ``forward`` or
    ``unbounded``) without reading its images, and why (for messages): Blender -> object, LLFF ->
    forward-facing, COLMAP -> unbounded, nerfstudio -> unbounded when ``aabb_scale > 1`` or, without
    ``aabb_scale``, when a capture tool wrote it (:func:`fieldcraft.data.nerfstudio.transforms_scene`)."""
    fmt, root = dataset_format(path)
    if fmt == "blender":
        return "object", "NeRF-synthetic scene"
    if fmt == "llff":
        forward, angle = _llff_forward(root)
        return "forward", "LLFF forward-facing capture" if forward else (
            f"LLFF capture, read with NDC rays although its cameras look up to {angle:.0f} degrees from their mean "
            "direction, with no COLMAP model beside it to read instead")
    if fmt == "colmap":
        if (root / "poses_bounds.npy").exists():
            return "unbounded", (f"COLMAP capture; the cameras of its poses_bounds.npy look up to "
                                 f"{_llff_forward(root)[1]:.0f} degrees from their mean direction, not forward-facing")
        return "unbounded", "COLMAP capture"
    from fieldcraft.data.nerfstudio import transforms_scene

    return transforms_scene(read_json(root / "transforms.json"))


def forward_facing(path: str | Path) -> bool:
    """Whether the dataset's rays are warped to NDC (LLFF forward-facing captures)."""
    return dataset_format(path)[0] == "llff"


def load_posed_images(path: str | Path, split: str = "train", max_images: int | None = None, *,
                      downscale: int = 1, skip_missing: bool = False) -> PosedImages:
    """Read one split of a dataset directory (format detected; ``downscale``, ``skip_missing``: see
    the module docstring)."""
    if split not in SPLITS:
        raise FieldcraftError(f"unknown split {split!r} (use {', '.join(SPLITS)})")
    downscale = check_downscale(downscale)
    fmt, path = dataset_format(path)
    opts = {"max_images": max_images, "downscale": downscale, "skip_missing": skip_missing}
    if fmt == "blender":
        from fieldcraft.data.blender import load_blender

        return load_blender(path, split, **opts)
    if fmt == "nerfstudio":
        from fieldcraft.data.nerfstudio import load_nerfstudio

        return load_nerfstudio(path / "transforms.json", split, **opts)
    if fmt == "colmap":
        from fieldcraft.data.colmap import load_colmap

        return load_colmap(path, split, **opts)
    from fieldcraft.data.llff import load_llff

    return load_llff(path, split, **opts)


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
