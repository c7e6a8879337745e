"""LLFF forward-facing captures: ``poses_bounds.npy`` + ``images_N/`` (Mildenhall et al. 2019).

``poses_bounds.npy`` is ``[n, 17]``: a ``3 x 5`` matrix per view, ``[R | t | (h, w, f)]`` with
rotation columns in LLFF's ``[down, right, back]`` order, then the near and far depth bounds.
Reading follows the NeRF reference code (``load_llff_data`` with ``bd_factor=0.75``, recentred,
``spherify=False``):

1. axes converted to OpenGL ``[right, up, back]`` (:mod:`fieldcraft.data.cameras`);
2. the focal length is scaled from the original height ``h`` to the images read;
3. positions and bounds are scaled by ``1 / (0.75 min(near bounds))``;
4. poses are recentred on their average pose.

Rays are then warped into normalised device coordinates (``ndc=True``; near plane at ``z = -1``,
so ``near, far = 0, 1`` along NDC rays; scene box ``[-1.5, 1.5]^2 x [-1, 1]``, wider than
the frustum in x, y for views off the average pose). Every 8th view (0, 8, ...)
is held out as ``val``/``test``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fieldcraft.data.cameras import Cameras, check_poses
from fieldcraft.data.scene import PosedImages, read_image, stack_images
from fieldcraft.errors import FieldcraftError, describe

HOLDOUT_EVERY = 8
BD_FACTOR = 0.75
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")


def load_llff(root: str | Path, split: str = "train", factor: int | None = None,
              max_images: int | None = None, *, downscale: int = 1, skip_missing: bool = False) -> PosedImages:
    """Read ``root/poses_bounds.npy`` and ``root/images_{factor}/`` (the smallest available if None),
    those images shrunk ``downscale`` times more on load (``uint8``). ``skip_missing`` has nothing
    to skip: the images are the folder's files, one per pose."""
    root = Path(root)
    source = root / "poses_bounds.npy"
    try:
        arr = np.load(source, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 (numpy raises several types for bad files)
        raise FieldcraftError(f"{source}: unreadable, not a .npy array ({describe(exc)})") from None
    if arr.dtype.kind not in "iuf":
        raise FieldcraftError(f"{source}: expected numeric poses and bounds, got an array of {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != 17 or len(arr) == 0:
        raise FieldcraftError(f"{source}: expected an [n, 17] array (3x5 pose + 2 bounds per view), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise FieldcraftError(f"{source}: view {int(np.nonzero(~np.isfinite(arr).all(1))[0][0])} contains NaN or infinite values")
    if not (arr[:, 15:] > 0).all():
        k = int(np.nonzero(~(arr[:, 15:] > 0).all(1))[0][0])
        raise FieldcraftError(f"{source}: view {k} has depth bounds {arr[k, 15:].tolist()}, they must be positive")
    if not (arr[:, [4, 9, 14]] > 0).all():
        k = int(np.nonzero(~(arr[:, [4, 9, 14]] > 0).all(1))[0][0])
        raise FieldcraftError(f"{source}: view {k} has height, width, focal {arr[k, [4, 9, 14]].tolist()}, "
                              "they must be positive")
    folder = _image_folder(root, factor)
    files = sorted(p for p in folder.iterdir() if p.suffix in IMAGE_EXTS)
    if len(files) != len(arr):
        raise FieldcraftError(f"{folder}: {len(files)} images but {source.name} has {len(arr)} poses")
    poses = arr[:, :15].reshape(-1, 3, 5).astype(np.float64)
    bounds = arr[:, 15:].astype(np.float64)
    h0, _w0, f0 = poses[0, :, 4]
    c2w = np.concatenate([poses[:, :, 1:2], -poses[:, :, 0:1], poses[:, :, 2:4]], axis=2)  # [n, 3, 4] OpenGL
    check_poses(torch.from_numpy(c2w), str(source), [f"view {k}" for k in range(len(c2w))])
    sc = 1.0 / (bounds.min() * BD_FACTOR)
    c2w[:, :, 3] *= sc
    bounds = bounds * sc
    c2w = recenter_poses(c2w)
    held = [k for k in range(len(arr)) if k % HOLDOUT_EVERY == 0]
    keep = [k for k in range(len(arr)) if (k in held) == (split != "train")]
    if max_images is not None:
        keep = keep[:max_images]
    paths = [files[k] for k in keep]
    images = stack_images([read_image(p, downscale, uint8=True) for p in paths], paths)
    h, w = images.shape[1:3]
    f = f0 * h / h0
    n = len(keep)
    full = lambda v: torch.full((n,), float(v))
    cams = Cameras(check_poses(torch.from_numpy(c2w[keep]), str(source)), full(f), full(f), full(w / 2), full(h / 2), w, h)
    aabb = torch.tensor([[-1.5, -1.5, -1.0], [1.5, 1.5, 1.0]])  # NDC x, y of off-centre views exceed [-1, 1]
    return PosedImages(images[..., :3].contiguous(), cams, [p.name for p in paths], 0.0, 1.0, aabb, True, str(source), "llff",
                       scene="forward")


def _image_folder(root: Path, factor: int | None) -> Path:
    if factor is not None:
        folder = root / f"images_{factor}"
        if not folder.is_dir():
            raise FieldcraftError(f"{folder}: image folder not found")
        return folder
    candidates = sorted((int(p.name.split("_")[1]), p) for p in root.glob("images_*") if p.name.split("_")[1].isdigit())
    if candidates:
        return candidates[-1][1]
    if (root / "images").is_dir():
        return root / "images"
    raise FieldcraftError(f"{root}: no images_N/ or images/ folder beside poses_bounds.npy")


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def average_pose(c2w: np.ndarray) -> np.ndarray:
    """The NeRF reference ``poses_avg``: mean centre, mean viewing axis, mean up vector (``[3, 4]``)."""
    centre = c2w[:, :, 3].mean(0)
    z = _normalize(c2w[:, :, 2].sum(0))
    up = c2w[:, :, 1].sum(0)
    x = _normalize(np.cross(up, z))
    y = np.cross(z, x)
    return np.stack([x, y, z, centre], 1)


def recenter_poses(c2w: np.ndarray) -> np.ndarray:
    """Express poses relative to their average pose (so it becomes the identity)."""
    avg = np.concatenate([average_pose(c2w), [[0, 0, 0, 1]]], 0)
    full = np.concatenate([c2w, np.tile([[[0, 0, 0, 1.0]]], (len(c2w), 1, 1))], 1)
    return (np.linalg.inv(avg) @ full)[:, :3, :4]
