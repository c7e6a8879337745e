"""Scene bounds from silhouettes: the visual hull of posed RGBA images and the box around it.

A point of the scene box that projects onto a transparent pixel of any view (``alpha == 0`` after
a small dilation) lies outside the object; the points no view rules out form the visual hull,
which contains the object. :func:`visual_hull` carves it on a grid of cells (NeRF ``box="hull"``
samples each ray only over its stretch through it); :func:`silhouette_aabb` returns the
axis-aligned box around it, padded (NeRF-synthetic lego: 30 % of the ``[-1.5, 1.5]^3`` box's volume).
:func:`pixel_resolution` gives the grid resolution at which a cell of the box looks one pixel wide.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from fieldcraft.data.cameras import Cameras, project
from fieldcraft.data.scene import PosedImages
from fieldcraft.errors import FieldcraftError


def visual_hull(data: PosedImages, resolution: int = 96, dilate: int = 2, grow: int = 0) -> Bool[Tensor, "R R R"]:
    """The visual hull of ``data``'s alpha masks on a ``resolution^3`` grid of cells over ``data.aabb``
    (x-major, as :class:`fieldcraft.render.occupancy_grid.BinaryGrid`): a cell is kept when its centre
    projects onto a pixel with ``alpha > 0`` (after growing each mask by ``dilate`` pixels) in every
    view that sees it; then the kept cells grow by ``grow`` cells (a conservative margin).

    Views that do not see a point (outside the image or behind the camera) do not rule it out.
    Raises :class:`FieldcraftError` without an alpha channel or if the hull is empty.
    """
    if data.images.shape[-1] != 4:
        raise FieldcraftError(f"{data.source or 'images'}: silhouette bounds need RGBA images (alpha masks), got {data.images.shape[-1]} channels")
    lo, hi = data.aabb[0].float(), data.aabb[1].float()
    axes = [lo[i] + (torch.arange(resolution) + 0.5) * (hi[i] - lo[i]) / resolution for i in range(3)]
    pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    masks = (data.images[..., 3] > 0).float()[:, None]
    if dilate > 0:
        masks = torch.nn.functional.max_pool2d(masks, 2 * dilate + 1, stride=1, padding=dilate)
    masks = masks[:, 0] > 0
    h, w = data.height, data.width
    keep = torch.ones(len(pts), dtype=torch.bool)
    for k in range(len(data)):
        uv, depth = project(data.cameras, pts, torch.full((len(pts),), k, dtype=torch.long))
        j, i = uv[:, 0].floor().long(), uv[:, 1].floor().long()
        seen = (depth > 0) & (j >= 0) & (j < w) & (i >= 0) & (i < h)
        inside = torch.zeros_like(seen)
        inside[seen] = masks[k, i[seen], j[seen]]
        keep &= inside | ~seen
    if not keep.any():
        raise FieldcraftError(f"{data.source or 'images'}: the alpha masks leave no point of the scene box (empty visual hull)")
    hull = keep.reshape(resolution, resolution, resolution)
    if grow > 0:
        hull = torch.nn.functional.max_pool3d(hull[None, None].float(), 2 * grow + 1, stride=1, padding=grow)[0, 0] > 0
    return hull


def silhouette_aabb(data: PosedImages, resolution: int = 96, dilate: int = 2, pad: float = 0.05) -> Float[Tensor, "2 3"]:
    """Box (min, max) around the visual hull of ``data``'s alpha masks, within ``data.aabb``.

    - ``resolution``: voxel centres per axis of ``data.aabb`` tested against every view.
    - ``dilate``: grow each mask by this many pixels first (soft, antialiased edges).
    - ``pad``: add this fraction of the hull's extent (plus one voxel) on every side.

    Views that do not see a point (outside the image or behind the camera) do not rule it out.
    Raises :class:`FieldcraftError` without an alpha channel or if the hull is empty.

    >>> from fieldcraft.data.cameras import Cameras
    >>> c2w = torch.tensor([[[1., 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 6]]])  # at z = 6, looking down -z
    >>> img = torch.zeros(1, 64, 64, 4); img[:, 28:36, 28:36, 3] = 1    # an opaque square in the middle
    >>> d = PosedImages(img, Cameras.from_fov(c2w, 1.0, 64, 64), ["a"], 2.0, 9.0, torch.tensor([[-1.5] * 3, [1.5] * 3]))
    >>> box = silhouette_aabb(d)             # x, y shrink to the square's cone; z (along the view) cannot
    >>> bool((box[1, :2] < 1.0).all() and (box[0, :2] > -1.0).all()), box[:, 2].tolist()
    (True, [-1.5, 1.5])
    """
    hull = visual_hull(data, resolution, dilate)
    lo, hi = data.aabb[0].float(), data.aabb[1].float()
    voxel = (hi - lo) / resolution
    ijk = hull.nonzero().float()
    a, b = lo + (ijk.min(0).values + 0.5) * voxel, lo + (ijk.max(0).values + 0.5) * voxel
    margin = pad * (b - a) + voxel
    return torch.stack([torch.maximum(a - margin, lo), torch.minimum(b + margin, hi)])


def pixel_resolution(cameras: Cameras, aabb: Float[Tensor, "2 3"]) -> int:
    """Cells per axis of a grid over ``aabb`` whose cells look about one pixel wide from the views:
    the median over the cameras of ``f * side / d`` (``f`` the focal length in pixels, ``side`` the
    box's longest side, ``d`` the camera's distance to the box centre), rounded up to a power of two.
    What a grid encoding's finest level needs to resolve what the views resolve, and no more.

    >>> from fieldcraft.data.cameras import Cameras
    >>> c2w = torch.eye(4)[None, :3].clone(); c2w[0, 2, 3] = 4.0   # 4 units in front of the box centre
    >>> pixel_resolution(Cameras.from_fov(c2w, 0.69, 100, 100), torch.tensor([[-1.5] * 3, [1.5] * 3]))
    128
    """
    side = float((aabb[1] - aabb[0]).max())
    dist = (cameras.c2w[:, :, 3].float() - 0.5 * (aabb[0] + aabb[1]).float()).norm(dim=-1).clamp(min=1e-6)
    r = float((torch.maximum(cameras.fx, cameras.fy).float() * side / dist).median())
    return 1 << max(0, math.ceil(math.log2(max(r, 1.0))))
