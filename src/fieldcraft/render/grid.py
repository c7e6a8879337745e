"""Evaluate a 2-D field on a pixel grid (the forward model of image and CT fields)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from fieldcraft.coords import pixel_centres


def render_grid(fn: Callable[[Tensor], Tensor], height: int, width: int, *, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32, chunk: int = 1 << 18) -> Float[Tensor, "h w c"]:
    """``fn`` (``[n, 2] -> [n, C]`` or ``[n]``) at the pixel centres of ``height x width``
    (:func:`fieldcraft.coords.pixel_centres`), in chunks, without autograd: ``[H, W, C]`` on ``device``.

    >>> render_grid(lambda xy: xy[:, :1], 1, 2)[..., 0]
    tensor([[-0.5000,  0.5000]])
    """
    xy = pixel_centres(height, width, device, dtype)
    with torch.no_grad():
        out = torch.cat([fn(xy[i:i + chunk]).reshape(min(chunk, len(xy) - i), -1) for i in range(0, len(xy), chunk)])
    return out.reshape(height, width, -1)
