"""Unbounded scenes: scene contraction (Mip-NeRF 360, nerfacto) and sampling along rays in it.

Positions are first normalised by an *inner box* (centre ``c``, half-size ``h``: ``x' = (x - c) / h``,
so the inner box is ``[-1, 1]^3``) and then contracted with the infinity norm, as nerfacto's
``SceneContraction(order=inf)``::

    contract(x') = x'                              if |x'|_inf <= 1
                 = (2 - 1 / |x'|_inf) x' / |x'|_inf  otherwise

which maps all of space into ``[-2, 2]^3``: the inner box keeps its resolution and everything
beyond is squeezed into the shell ``1 < |y|_inf < 2`` (infinity to its surface). Fields and
the occupancy grid live in this contracted space.

:func:`contracted_march` places candidate intervals along each ray uniformly in the
Mip-NeRF 360 / nerfstudio spacing ``s(t) = t / 2`` for ``t < 1`` and ``1 - 1 / (2 t)`` beyond
(``t`` in units of ``h``): linear inside the inner box, uniform in disparity outside, so far
away the intervals grow in proportion to their distance, as the contracted cells do. Intervals
whose contracted midpoint lies in an empty cell of the occupancy grid are dropped; the result is
packed like :func:`fieldcraft.render.occupancy_grid.march`.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from fieldcraft.data.cameras import look_centre
from fieldcraft.render.occupancy_grid import BinaryGrid

CONTRACTED_BOX = ((-2.0, -2.0, -2.0), (2.0, 2.0, 2.0))


def contract(x: Float[Tensor, "n 3"]) -> Float[Tensor, "n 3"]:
    """Infinity-norm scene contraction of normalised points (module docstring).

    >>> contract(torch.tensor([[0.5, -0.25, 0.0], [4.0, 2.0, 0.0]])).tolist()
    [[0.5, -0.25, 0.0], [1.75, 0.875, 0.0]]
    """
    n = x.abs().amax(-1, keepdim=True).clamp(min=1e-12)
    return torch.where(n <= 1, x, (2 - 1 / n) * x / n)


def contraction_scale(y: Float[Tensor, "n 3"], cap: float = 1e3) -> Float[Tensor, " n"]:
    """World length (in units of the inner box) per unit of contracted length at contracted
    points ``y`` along the radial direction: 1 inside the inner box, ``1 / (2 - |y|_inf)^2``
    beyond (capped at ``cap``). An occupancy grid in contracted space scales densities by it, so
    a far cell is judged by the opacity of a world step as long as the cell.

    >>> contraction_scale(torch.tensor([[0.5, 0, 0], [1.5, 0, 0]])).tolist()
    [1.0, 4.0]
    """
    n = y.abs().amax(-1)
    return torch.where(n <= 1, torch.ones_like(n), 1 / (2 - n).clamp(min=1 / math.sqrt(cap)) ** 2)


def spacing(t: Tensor) -> Tensor:
    """``s(t)``: ``t / 2`` below 1, ``1 - 1 / (2 t)`` beyond (nerfstudio's ``UniformLinDispPiecewiseSampler``).

    >>> spacing(torch.tensor([0.5, 1.0, 4.0])).tolist()
    [0.25, 0.5, 0.875]
    """
    return torch.where(t < 1, t / 2, 1 - 1 / (2 * t.clamp(min=1e-12)))


def spacing_inverse(s: Tensor) -> Tensor:
    """Inverse of :func:`spacing` (``s < 1``).

    >>> spacing_inverse(torch.tensor([0.25, 0.5, 0.875])).tolist()
    [0.5, 1.0, 4.0]
    """
    return torch.where(s < 0.5, 2 * s, 1 / (2 * (1 - s).clamp(min=1e-12)))


def inner_box(c2w: Float[Tensor, "n 3 4"], margin: float = 1.0) -> Float[Tensor, "2 3"]:
    """The inner box of a capture: centred on the point the cameras look at
    (:func:`fieldcraft.data.cameras.look_centre`), half-size the largest
    distance of a camera from it along an axis times ``margin``, so every camera is inside.

    >>> from fieldcraft.render.cameras import look_at
    >>> ring = torch.stack([look_at(torch.tensor([2.0 * math.cos(a), 0.5, 2.0 * math.sin(a)]))[:3] for a in (0, 2, 4)])
    >>> inner_box(ring).round(decimals=3).tolist()
    [[-2.0, -2.0, -2.0], [2.0, 2.0, 2.0]]
    """
    centre = look_centre(c2w)
    half = float((c2w[:, :, 3].double() - centre).abs().max()) * margin
    half = half if half > 0 else 1.0
    return torch.stack([centre - half, centre + half]).float()


def contracted_march(grid: BinaryGrid | None, origins: Float[Tensor, "r 3"], dirs: Float[Tensor, "r 3"],
                     t_min: Float[Tensor, " r"], t_max: Float[Tensor, " r"], box: Float[Tensor, "2 3"], n_steps: int,
                     jitter: bool = False) -> tuple[Int[Tensor, " n"], Float[Tensor, " n"], Float[Tensor, " n"]]:
    """``n_steps`` intervals per ray, uniform in :func:`spacing` of ``t / h`` between ``t_min`` and
    ``t_max`` (world distances along unit ``dirs``; shifted by one random offset per ray when
    ``jitter``, the two end intervals then partial), kept where the contracted midpoint is an
    occupied cell of ``grid`` (None: all kept); packed, ray-major, in world ``t``.

    >>> box = torch.tensor([[-1.0] * 3, [1.0] * 3])
    >>> ri, t0, t1 = contracted_march(None, torch.zeros(1, 3), torch.tensor([[1.0, 0, 0]]), torch.tensor([0.0]),
    ...                               torch.tensor([4.0]), box, 4)
    >>> [round(v, 4) for v in t1.tolist()]    # s from 0 to 0.875 in four equal steps of 0.21875
    [0.4375, 0.875, 1.4545, 4.0]
    """
    if len(origins) == 0:
        empty = torch.zeros(0, device=origins.device)
        return empty.long(), empty, empty
    centre, half = 0.5 * (box[0] + box[1]), 0.5 * float((box[1] - box[0]).max())
    s0, s1 = spacing(t_min / half), spacing(t_max / half)
    offset = torch.rand_like(t_min) if jitter else torch.zeros_like(t_min)
    k = torch.arange(-1 if jitter else 0, n_steps + 1, device=origins.device, dtype=origins.dtype)
    s = s0[:, None] + (k[None] + offset[:, None]) / n_steps * (s1 - s0)[:, None]
    s = torch.minimum(torch.maximum(s, s0[:, None]), s1[:, None])
    t = spacing_inverse(s) * half
    t0, t1 = t[:, :-1], t[:, 1:]
    keep = t1 > t0
    if grid is not None:
        mid = 0.5 * (t0 + t1)
        pts = contract((origins[:, None, :] + mid[..., None] * dirs[:, None, :] - centre) / half)
        keep &= grid.occupied(pts.reshape(-1, 3)).reshape(keep.shape)
    ray_idx, step_idx = keep.nonzero(as_tuple=True)
    return ray_idx, t0[ray_idx, step_idx], t1[ray_idx, step_idx]
