"""Coordinate conventions shared by every 2-D field (images, CT slices, codecs).

Pixel ``(row i, column j)`` of an ``H x W`` grid has centre ``x = (2j + 1) / W - 1``,
``y = (2i + 1) / H - 1``: both axes span ``[-1, 1]`` whatever the aspect ratio, x to the right,
y downwards. Rendering at another size queries the same square, so it resamples one field.
(Cameras use pixel coordinates instead: :func:`fieldcraft.render.rays.pixel_centres`.)
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def pixel_centres(height: int, width: int, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> Float[Tensor, "h*w 2"]:
    """Centres ``(x, y)`` of an ``height x width`` pixel grid in ``[-1, 1]^2``, row-major.

    >>> pixel_centres(2, 2)
    tensor([[-0.5000, -0.5000],
            [ 0.5000, -0.5000],
            [-0.5000,  0.5000],
            [ 0.5000,  0.5000]])
    """
    xs = (2 * torch.arange(width, device=device, dtype=dtype) + 1) / width - 1
    ys = (2 * torch.arange(height, device=device, dtype=dtype) + 1) / height - 1
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy], dim=-1).reshape(-1, 2)
