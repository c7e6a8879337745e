"""Where to sample along rays: stratified (NeRF coarse) and inverse-CDF importance (NeRF fine).

Samples are intervals: ``edges [..., n + 1]`` bound ``n`` intervals, each evaluated at a point
``t_mid`` inside it (jittered uniformly when training). Interval lengths are what
:mod:`fieldcraft.render.compositing` multiplies densities by.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def stratified_edges(near: Float[Tensor, " r"], far: Float[Tensor, " r"], n_samples: int) -> Float[Tensor, "r n+1"]:
    """``n_samples`` equal intervals between ``near`` and ``far`` per ray (their ``n + 1`` edges).

    >>> stratified_edges(torch.tensor([2.0]), torch.tensor([6.0]), 4)
    tensor([[2., 3., 4., 5., 6.]])
    """
    s = torch.linspace(0.0, 1.0, n_samples + 1, device=near.device, dtype=near.dtype)
    return near[:, None] + (far - near)[:, None] * s


def interval_points(edges: Float[Tensor, "*r n+1"], jitter: bool, generator: torch.Generator | None = None
                    ) -> Float[Tensor, "*r n"]:
    """One point per interval: its midpoint, or uniform within it when ``jitter`` (NeRF's stratified sampling).

    >>> interval_points(torch.tensor([[2.0, 3.0, 4.0]]), jitter=False)
    tensor([[2.5000, 3.5000]])
    """
    lo, hi = edges[..., :-1], edges[..., 1:]
    if not jitter:
        return 0.5 * (lo + hi)
    u = torch.rand(lo.shape, generator=generator, device=lo.device, dtype=lo.dtype)
    return lo + (hi - lo) * u


def sample_pdf(bins: Float[Tensor, "*r m+1"], weights: Float[Tensor, "*r m"], n_samples: int, deterministic: bool = False,
               generator: torch.Generator | None = None, eps: float = 1e-5) -> Float[Tensor, "*r n"]:
    """Draw ``n_samples`` positions from the piecewise-constant PDF with mass ``weights`` on ``bins`` (inverse CDF; NeRF 5.2).

    ``eps`` is added to every weight (so empty rays sample uniformly). ``deterministic`` uses
    evenly spaced quantiles (sorted output). Results lie in ``[bins[..., 0], bins[..., -1]]``.

    >>> sample_pdf(torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[0.0, 1.0]]), 2, deterministic=True, eps=0.0).tolist()
    [[1.0, 2.0]]
    """
    w = weights + eps
    pdf = w / w.sum(-1, keepdim=True)
    cdf = torch.cumsum(pdf, -1).clamp(max=1.0)
    cdf = torch.cat([torch.zeros_like(cdf[..., :1]), cdf], -1)  # [*, m+1]
    shape = (*cdf.shape[:-1], n_samples)
    if deterministic:
        u = torch.linspace(0.0, 1.0, n_samples, device=bins.device, dtype=bins.dtype).expand(shape).contiguous()
    else:
        u = torch.rand(shape, generator=generator, device=bins.device, dtype=bins.dtype)
    idx = torch.searchsorted(cdf.contiguous(), u, right=True)
    below = (idx - 1).clamp(min=0, max=cdf.shape[-1] - 1)
    above = idx.clamp(max=cdf.shape[-1] - 1)
    c0, c1 = torch.gather(cdf, -1, below), torch.gather(cdf, -1, above)
    b0, b1 = torch.gather(bins, -1, below), torch.gather(bins, -1, above)
    denom = torch.where(c1 - c0 < 1e-12, torch.ones_like(c0), c1 - c0)
    return b0 + (u - c0) / denom * (b1 - b0)


def merge_edges(edges: Float[Tensor, "*r a"], extra: Float[Tensor, "*r b"]) -> Float[Tensor, "*r a+b"]:
    """Sorted union of two sets of interval edges (coarse edges + importance samples).

    >>> merge_edges(torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0]]))
    tensor([[0., 1., 2.]])
    """
    return torch.sort(torch.cat([edges, extra], -1), -1).values
