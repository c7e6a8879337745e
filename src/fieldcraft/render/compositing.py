"""Emission-absorption volume rendering (Max 1995; NeRF eq. 3), as small pure functions.

Samples along a ray are intervals ``[t_start, t_end]`` with density ``sigma`` (per unit of
``t``) and colour ``c``. With optical depth ``tau_i = sigma_i (t_end_i - t_start_i)``:

- alpha ``a_i = 1 - exp(-tau_i)``,
- transmittance ``T_i = exp(-sum_{j<i} tau_j) = prod_{j<i} (1 - a_j)``,
- weight ``w_i = T_i a_i`` (so ``sum_i w_i = 1 - T_n <= 1``),
- colour ``sum_i w_i c_i + (1 - sum_i w_i) c_background``,
- opacity ``sum_i w_i``, expected depth ``sum_i w_i t_i / sum_i w_i``.

Two layouts are supported (nerfacc's): *padded* tensors ``[..., n_samples]`` with samples
along the last axis, and *packed* flat samples ``[n]`` with ``ray_indices`` (non-decreasing)
naming the ray of each sample, so rays can have different numbers of samples (empty space
skipped, early termination). Functions take ``ray_indices=None`` for the padded layout.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor


def alphas_from_densities(sigmas: Float[Tensor, "*s"], t_starts: Float[Tensor, "*s"], t_ends: Float[Tensor, "*s"]
                          ) -> Float[Tensor, "*s"]:
    """``a = 1 - exp(-sigma (t_end - t_start))``.

    >>> alphas_from_densities(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]))
    tensor([0.0000, 0.6321])
    """
    return 1.0 - torch.exp(-sigmas * (t_ends - t_starts))


def exclusive_cumsum(x: Float[Tensor, "*s"], ray_indices: Int[Tensor, " n"] | None = None) -> Float[Tensor, "*s"]:
    """Sum of the earlier samples of the same ray (padded: along the last axis).

    Packed sums accumulate in float64 so long batches keep float32 accuracy per ray.

    >>> exclusive_cumsum(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0, 0, 1, 1]))
    tensor([0., 1., 0., 3.])
    """
    if ray_indices is None:  # shifted inclusive sum (x_i is never subtracted: no cancellation)
        return torch.cat([torch.zeros_like(x[..., :1]), torch.cumsum(x[..., :-1], -1)], -1)
    if x.numel() == 0:
        return x
    c = torch.cumsum(x.double(), 0) - x.double()
    first = torch.ones_like(ray_indices, dtype=torch.bool)
    first[1:] = ray_indices[1:] != ray_indices[:-1]
    pos = torch.arange(len(x), device=x.device)
    start = torch.cummax(torch.where(first, pos, torch.zeros_like(pos)), 0).values
    return (c - c[start]).to(x.dtype)


def transmittance_from_alphas(alphas: Float[Tensor, "*s"], ray_indices: Int[Tensor, " n"] | None = None) -> Float[Tensor, "*s"]:
    """``T_i = prod_{j<i} (1 - a_j)`` (computed as ``exp(sum log(1 - a))``).

    >>> transmittance_from_alphas(torch.tensor([0.5, 0.5, 0.5]))
    tensor([1.0000, 0.5000, 0.2500])
    """
    log_t = torch.log(torch.clamp(1.0 - alphas, min=1e-10))
    return torch.exp(exclusive_cumsum(log_t, ray_indices))


def weights_from_densities(sigmas: Float[Tensor, "*s"], t_starts: Float[Tensor, "*s"], t_ends: Float[Tensor, "*s"],
                           ray_indices: Int[Tensor, " n"] | None = None
                           ) -> tuple[Float[Tensor, "*s"], Float[Tensor, "*s"], Float[Tensor, "*s"]]:
    """Rendering weights ``w = T a``, transmittance ``T`` and alphas ``a`` from densities.

    >>> w, T, a = weights_from_densities(torch.tensor([[math.log(2.0)] * 2]), torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 2.0]]))
    >>> w, T
    (tensor([[0.5000, 0.2500]]), tensor([[1.0000, 0.5000]]))
    """
    tau = sigmas * (t_ends - t_starts)
    trans = torch.exp(-exclusive_cumsum(tau, ray_indices))
    alphas = 1.0 - torch.exp(-tau)
    return trans * alphas, trans, alphas


def accumulate(weights: Float[Tensor, "*s"], values: Float[Tensor, "*s c"] | None = None,
               ray_indices: Int[Tensor, " n"] | None = None, n_rays: int | None = None) -> Float[Tensor, "*r c"]:
    """Per-ray weighted sums ``sum_i w_i v_i`` (``values=None``: ``sum_i w_i``, shape ``[..., 1]``).

    Packed layout: ``[n]`` weights and ``[n, c]`` values give ``[n_rays, c]`` (rays without
    samples get 0).

    >>> accumulate(torch.tensor([0.5, 0.25, 1.0]), torch.tensor([[2.0], [4.0], [1.0]]), torch.tensor([0, 0, 2]), 3)
    tensor([[2.],
            [0.],
            [1.]])
    """
    src = weights[..., None] if values is None else weights[..., None] * values
    if ray_indices is None:
        return src.sum(-2)
    out = torch.zeros(n_rays, src.shape[-1], dtype=src.dtype, device=src.device)
    return out.index_add_(0, ray_indices, src)


def expected_depth(weights: Float[Tensor, "*s"], t_mid: Float[Tensor, "*s"], ray_indices: Int[Tensor, " n"] | None = None,
                   n_rays: int | None = None, eps: float = 1e-10) -> Float[Tensor, "*r 1"]:
    """``sum w t / sum w``: the depth of the visible surface, independent of opacity (0 if empty).

    >>> expected_depth(torch.tensor([[0.25, 0.25]]), torch.tensor([[2.0, 4.0]]))
    tensor([[3.]])
    """
    opacity = accumulate(weights, None, ray_indices, n_rays)
    return accumulate(weights, t_mid[..., None], ray_indices, n_rays) / opacity.clamp(min=eps)


def apply_background(rgb: Float[Tensor, "*r 3"], opacity: Float[Tensor, "*r 1"], background: Float[Tensor, "*#r 3"]
                     ) -> Float[Tensor, "*r 3"]:
    """``rgb + (1 - opacity) background``: what shows through where the volume is transparent.

    >>> apply_background(torch.tensor([[0.2, 0.0, 0.0]]), torch.tensor([[0.25]]), torch.ones(3))
    tensor([[0.9500, 0.7500, 0.7500]])
    """
    return rgb + (1.0 - opacity) * background


_ = math  # used by the docstring examples
