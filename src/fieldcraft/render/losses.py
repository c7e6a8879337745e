"""Regularisers on the rendering weights along rays: Mip-NeRF 360's distortion loss.

Mip-NeRF 360 (Barron et al. 2022, eq. 15) penalises weight spread along a ray: with the ray's
intervals ``[s_i, s_{i+1}]`` in *normalised ray distance* ``s`` (each ray's range mapped to
``[0, 1]`` by the sampler's spacing, so a far interval counts no more than a near one) and
rendering weights ``w_i``::

    L_dist = sum_{i,j} w_i w_j |m_i - m_j|  +  1/3 sum_i w_i^2 (s_{i+1} - s_i)      m_i = (s_i + s_{i+1}) / 2

The first term pulls the weight of a ray together, the second shrinks each interval's weight.
For sorted, non-overlapping intervals the double sum is ``2 sum_i w_i (m_i W_i - M_i)`` with the
exclusive prefix sums ``W_i = sum_{j<i} w_j`` and ``M_i = sum_{j<i} w_j m_j``: O(n), as nerfacc's
``distortion`` and nerfstudio's ``distortion_loss`` compute it.

:func:`normalized_distance` maps distances along rays to ``s``: linear over the ray's range, or
through the contracted spacing of :func:`fieldcraft.render.contraction.spacing` (linear inside the
inner box, disparity beyond) for unbounded scenes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from jaxtyping import Float, Int
from torch import Tensor

from fieldcraft.render.compositing import exclusive_cumsum
from fieldcraft.render.contraction import spacing, spacing_inverse


def distortion_loss(weights: Float[Tensor, " n"], s_starts: Float[Tensor, " n"], s_ends: Float[Tensor, " n"],
                    ray_indices: Int[Tensor, " n"], n_rays: int) -> Float[Tensor, " r"]:
    """Distortion loss of each ray (module docstring) from packed samples: ``ray_indices``
    non-decreasing and, within a ray, intervals sorted and not overlapping (gaps allowed).
    Rays without samples get 0. Differentiable in ``weights`` (and in ``s``).

    >>> w, s0, s1 = torch.tensor([0.5, 0.5, 1.0]), torch.tensor([0.0, 0.5, 0.0]), torch.tensor([0.5, 1.0, 0.25])
    >>> [round(v, 6) for v in distortion_loss(w, s0, s1, torch.tensor([0, 0, 2]), 3).tolist()]  # 2 * 0.25 * 0.5 + 0.25 / 3
    [0.333333, 0.0, 0.083333]
    """
    mid = 0.5 * (s_starts + s_ends)
    wm = weights * mid
    inter = 2 * (wm * exclusive_cumsum(weights, ray_indices) - weights * exclusive_cumsum(wm, ray_indices))
    uni = weights**2 * (s_ends - s_starts) / 3
    out = torch.zeros(n_rays, dtype=weights.dtype, device=weights.device)
    return out.index_add(0, ray_indices, inter + uni)


def distortion_loss_reference(weights: Float[Tensor, " n"], s_starts: Float[Tensor, " n"], s_ends: Float[Tensor, " n"],
                              ray_indices: Int[Tensor, " n"], n_rays: int) -> Float[Tensor, " r"]:
    """The same as :func:`distortion_loss` by the O(n^2) double sum of eq. 15 (for tests).

    >>> w, s0, s1 = torch.tensor([0.5, 0.5, 1.0]), torch.tensor([0.0, 0.5, 0.0]), torch.tensor([0.5, 1.0, 0.25])
    >>> [round(v, 6) for v in distortion_loss_reference(w, s0, s1, torch.tensor([0, 0, 2]), 3).tolist()]
    [0.333333, 0.0, 0.083333]
    """
    mid = 0.5 * (s_starts + s_ends)
    same = ray_indices[:, None] == ray_indices[None, :]
    pair = torch.where(same, weights[:, None] * weights[None, :] * (mid[:, None] - mid[None, :]).abs(), 0.0).sum(1)
    out = torch.zeros(n_rays, dtype=weights.dtype, device=weights.device)
    return out.index_add(0, ray_indices, pair + weights**2 * (s_ends - s_starts) / 3)


def normalized_distance(t: Float[Tensor, "*s"], t_min: Float[Tensor, "*s"], t_max: Float[Tensor, "*s"],
                        half: float | None = None) -> Float[Tensor, "*s"]:
    """Distances ``t`` along rays as normalised ray distance ``s`` in ``[0, 1]`` over each ray's range
    ``[t_min, t_max]`` (broadcast to ``t``): linear (``half`` None), or uniform in the contracted
    spacing ``spacing(t / half)`` of an inner box of half-size ``half`` (unbounded scenes).

    >>> normalized_distance(torch.tensor([1.0, 2.0]), torch.tensor([0.0]), torch.tensor([4.0])).tolist()
    [0.25, 0.5]
    >>> normalized_distance(torch.tensor([1.0, 2.0]), torch.tensor([0.0]), torch.tensor([4.0]), half=1.0).tolist()
    [0.5714285969734192, 0.8571428656578064]
    """
    if half is not None:
        t, t_min, t_max = spacing(t / half), spacing(t_min / half), spacing(t_max / half)
    return ((t - t_min) / (t_max - t_min).clamp(min=1e-12)).clamp(0, 1)


def distance_from_normalized(s: Float[Tensor, "*s"], t_min: Float[Tensor, "*s"], t_max: Float[Tensor, "*s"],
                             half: float | None = None) -> Float[Tensor, "*s"]:
    """Inverse of :func:`normalized_distance`: distances along rays of normalised distances ``s``.

    >>> distance_from_normalized(torch.tensor([0.5714285969734192, 0.8571428656578064]), torch.tensor([0.0]), torch.tensor([4.0]),
    ...                          half=1.0).round(decimals=4).tolist()
    [1.0, 2.0]
    """
    if half is None:
        return t_min + s * (t_max - t_min)
    s_min, s_max = spacing(t_min / half), spacing(t_max / half)
    return spacing_inverse(s_min + s * (s_max - s_min)) * half


def sample_losses(out: Mapping[str, Tensor | int], n_rays: int, distortion_weight: float = 0.0,
                  interlevel_weight: float = 0.0) -> Float[Tensor, ""] | float:
    """``distortion_weight`` x the distortion loss plus ``interlevel_weight`` x the interlevel loss,
    summed over the ``n_rays`` rays of a render's outputs ``out`` (``NerfModel.render(...,
    with_samples=True)``: packed ``ray_indices``, ``s_starts``, ``s_ends``, ``weights`` and per-ray
    ``interlevel``); terms whose inputs are missing count 0.

    >>> out = {"ray_indices": torch.tensor([0, 0]), "s_starts": torch.tensor([0.0, 0.5]),
    ...        "s_ends": torch.tensor([0.5, 1.0]), "weights": torch.tensor([0.5, 0.5]), "interlevel": torch.tensor([0.1])}
    >>> round(float(sample_losses(out, 1, distortion_weight=1.0, interlevel_weight=2.0)), 6)   # 1/3 + 0.2
    0.533333
    """
    total: Tensor | float = 0.0
    if distortion_weight > 0 and "weights" in out:
        w, s0, s1, ri = out["weights"], out["s_starts"], out["s_ends"], out["ray_indices"]
        total = total + distortion_weight * distortion_loss(w, s0, s1, ri, n_rays).sum()  # type: ignore[arg-type]
    if interlevel_weight > 0 and "interlevel" in out:
        total = total + interlevel_weight * out["interlevel"].sum()  # type: ignore[union-attr]
    return total
