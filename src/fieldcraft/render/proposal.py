"""Proposal sampling (Mip-NeRF 360 sec. 3 / nerfstudio's nerfacto): small density-only fields
say where along each ray the radiance field should be sampled.

Along each ray, positions are *normalised ray distances* ``s`` in ``[0, 1]``
(:func:`fieldcraft.render.losses.normalized_distance`; for unbounded scenes uniform in the
contracted spacing: linear inside the inner box, disparity beyond). Sampling is hierarchical::

    n_0 intervals uniform in s  --proposal field 1-->  weights w_1 (a histogram over s)
    n_1 intervals drawn from w_1 --proposal field 2-->  weights w_2
    ...
    n_k intervals drawn from w_k --radiance field-->   weights w (rendered colour)

Each level's intervals are ``n + 1`` edges drawn by inverse transform sampling of the previous
histogram (:func:`pdf_edges`: stratified quantiles, jittered while training; weights raised to
an annealing power that rises from 0 to 1 early in training, :func:`anneal_power`, and padded by
:data:`HISTOGRAM_PADDING` per interval, as nerfstudio's ``PDFSampler``). Sample positions carry
no gradient. A proposal field is trained only by the *interlevel loss* (Mip-NeRF 360 eq. 13,
:func:`interlevel_loss`): its histogram must bound the radiance field's weights (held fixed), i.e.
the proposal weight of the intervals overlapping a NeRF interval must be at least that interval's
weight.

:class:`ProposalField`: density only, a small hash grid (:data:`PROPOSAL_LEVELS` levels of 2
features, 2^17 rows, 16 to ``max_resolution`` cells) and a one-hidden-layer MLP of 16 (nerfstudio's
``HashMLPDensityField`` with its proposal settings), on field coordinates (the contracted cube
for unbounded scenes).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from fieldcraft.encodings import HashGridConfig
from fieldcraft.fields.radiance import density_activation
from fieldcraft.networks import MLPConfig

HISTOGRAM_PADDING = 0.01
PROPOSAL_LEVELS = 5


class ProposalField(nn.Module):
    """``density(x [n, 3]) -> sigma [n]`` over the box ``aabb`` ``[2, 3]`` (module docstring);
    ``sigma = trunc_exp(raw - 1)`` as the ``instant`` preset's radiance field.

    >>> f = ProposalField(torch.tensor([[-2.0] * 3, [2.0] * 3]), max_resolution=64)
    >>> tuple(f.density(torch.zeros(5, 3)).shape), f.encoding.out_dim
    ((5,), 10)
    """

    def __init__(self, aabb: Float[Tensor, "2 3"], max_resolution: int = 128, hidden_width: int = 16) -> None:
        super().__init__()
        self.register_buffer("aabb", aabb.clone().float())
        self.encoding = HashGridConfig(n_levels=PROPOSAL_LEVELS, n_features=2, log2_table_size=17, base_resolution=16,
                                       max_resolution=max_resolution).build(3)
        self.mlp = MLPConfig(hidden_width=hidden_width, hidden_layers=1, activation="relu").build(
            self.encoding.out_dim, 1)

    def density(self, x: Float[Tensor, "n 3"]) -> Float[Tensor, " n"]:
        u = (x - self.aabb[0]) / (self.aabb[1] - self.aabb[0]) * 2.0 - 1.0
        return density_activation(self.mlp(self.encoding(u))[..., 0] - 1.0, "trunc_exp")


def uniform_edges(n_rays: int, n: int, jitter: bool, device: torch.device | str = "cpu"
                  ) -> Float[Tensor, "r n+1"]:
    """``n`` equal intervals of ``[0, 1]`` per ray; ``jitter`` shifts the inner edges of each ray by
    one random offset in ``[-1/2n, 1/2n)`` (the end edges stay at 0 and 1).

    >>> uniform_edges(1, 4, jitter=False).tolist()
    [[0.0, 0.25, 0.5, 0.75, 1.0]]
    """
    e = torch.linspace(0.0, 1.0, n + 1, device=device).expand(n_rays, n + 1)
    if not jitter:
        return e.contiguous()
    shift = (torch.rand(n_rays, 1, device=device) - 0.5) / n
    inner = torch.zeros(n + 1, dtype=torch.bool, device=device)
    inner[1:-1] = True
    return torch.where(inner, e + shift, e)


def anneal_power(step: int | None, steps: int, slope: float = 10.0) -> float:
    """nerfstudio's proposal-weight annealing exponent: ``b p / ((b - 1) p + 1)`` with ``p = step / steps``
    clamped to ``[0, 1]`` and slope ``b``: 0 at the start (uniform histograms), 1 from ``steps`` on
    (and when ``step`` is None or ``steps`` is 0).

    >>> anneal_power(0, 100), anneal_power(10, 100), anneal_power(100, 100), anneal_power(None, 100)
    (0.0, 0.5263157894736842, 1.0, 1.0)
    """
    if step is None or steps <= 0:
        return 1.0
    p = min(max(step / steps, 0.0), 1.0)
    return slope * p / ((slope - 1) * p + 1)


def pdf_edges(edges: Float[Tensor, "r m+1"], weights: Float[Tensor, "r m"], n: int, jitter: bool,
              padding: float = HISTOGRAM_PADDING) -> Float[Tensor, "r n+1"]:
    """``n`` intervals (``n + 1`` sorted edges) drawn from the histogram ``weights + padding`` on
    ``edges`` by inverse transform sampling of stratified quantiles ``(k + u) / (n + 1)``, ``k = 0..n``
    (``u = 1/2``, or uniform per quantile when ``jitter``); no gradient. Rays whose histogram is
    empty sample uniformly.

    >>> pdf_edges(torch.tensor([[0.0, 0.5, 1.0]]), torch.tensor([[0.0, 1.0]]), 3, jitter=False, padding=0.0).tolist()
    [[0.5625, 0.6875, 0.8125, 0.9375]]
    """
    with torch.no_grad():
        w = weights.float() + padding
        w = w + (1e-5 - w.sum(-1, keepdim=True)).clamp(min=0) / w.shape[-1]
        cdf = torch.cumsum(w / w.sum(-1, keepdim=True), -1).clamp(max=1.0)
        cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], -1)  # [r, m+1]
        k = torch.arange(n + 1, device=edges.device, dtype=cdf.dtype)
        u = torch.rand(len(edges), n + 1, device=edges.device) if jitter else torch.full((len(edges), n + 1), 0.5,
                                                                                         device=edges.device)
        q = (k + u) / (n + 1)
        hi = torch.searchsorted(cdf, q, right=True).clamp(1, cdf.shape[-1] - 1)
        c0, c1 = cdf.gather(-1, hi - 1), cdf.gather(-1, hi)
        e0, e1 = edges.gather(-1, hi - 1), edges.gather(-1, hi)
        frac = ((q - c0) / (c1 - c0).clamp(min=1e-12)).clamp(0, 1)
        return torch.sort(e0 + frac * (e1 - e0), -1).values


def proposal_bound(edges: Float[Tensor, "r n+1"], prop_edges: Float[Tensor, "r m+1"], prop_weights: Float[Tensor, "r m"]
                   ) -> Float[Tensor, "r n"]:
    """For each interval of ``edges``, the summed proposal weight of the proposal intervals that
    overlap it (Mip-NeRF 360's ``bound``; both sets of edges sorted per ray, in the same ``s``;
    intervals that only touch do not overlap).

    >>> proposal_bound(torch.tensor([[0.0, 0.3, 0.6]]), torch.tensor([[0.0, 0.5, 1.0]]), torch.tensor([[0.2, 0.7]])).round(decimals=6).tolist()
    [[0.20000000298023224, 0.8999999761581421]]
    """
    csum = torch.cat([torch.zeros_like(prop_weights[:, :1]), torch.cumsum(prop_weights, -1)], -1)  # [r, m+1]
    m = prop_weights.shape[-1]
    lo = (torch.searchsorted(prop_edges[:, :-1].contiguous(), edges[:, :-1].contiguous(), right=True) - 1).clamp(0, m - 1)
    hi = torch.searchsorted(prop_edges[:, 1:].contiguous(), edges[:, 1:].contiguous()).clamp(0, m - 1)
    return csum.gather(-1, hi + 1) - csum.gather(-1, lo)


def interlevel_loss(edges: Float[Tensor, "r n+1"], weights: Float[Tensor, "r n"], prop_edges: Float[Tensor, "r m+1"],
                    prop_weights: Float[Tensor, "r m"], eps: float = 1e-7) -> Float[Tensor, " r"]:
    """Mip-NeRF 360 eq. 13 per ray: ``sum_i max(0, w_i - bound_i)^2 / (w_i + eps)`` over the radiance
    field's intervals ``edges`` / ``weights`` (held fixed: no gradient) with ``bound`` the proposal
    weight overlapping each (:func:`proposal_bound`); differentiable in ``prop_weights``. 0 when the
    proposal histogram bounds the weights everywhere.

    >>> e, w = torch.tensor([[0.0, 0.3, 0.6]]), torch.tensor([[0.1, 0.5]])
    >>> interlevel_loss(e, w, torch.tensor([[0.0, 0.5, 1.0]]), torch.tensor([[0.2, 0.7]])).tolist()
    [0.0]
    >>> round(interlevel_loss(e, w, torch.tensor([[0.0, 0.5, 1.0]]), torch.tensor([[0.05, 0.3]])).item(), 5)   # 0.05^2 / 0.1 + 0.15^2 / 0.5
    0.07
    """
    w = weights.detach()
    bound = proposal_bound(edges.detach(), prop_edges.detach(), prop_weights)
    return ((w - bound).clamp(min=0) ** 2 / (w + eps)).sum(-1)
