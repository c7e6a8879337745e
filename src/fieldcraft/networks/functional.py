"""Networks as functions of their weights: the pieces shared by :class:`~fieldcraft.networks.MLP`
and :class:`~fieldcraft.fields.Field`.

A *parameter dict* maps names, as in ``dict(module.named_parameters())``, to tensors. Each
entry has the shape of the module's parameter (*unbatched*: one set of weights, used like the
module's own) or that shape with one leading batch dimension ``B`` (*batched*: one set of
weights per signal, e.g. ``linears.0.weight`` of shape ``[B, out, in]``). Names left out
take the module's own parameter. All batched entries share one ``B``.

>>> import torch
>>> lin = torch.nn.Linear(3, 2)
>>> params = stack_params([dict(lin.named_parameters())] * 4)
>>> params["weight"].shape, batch_size(params, dict(lin.named_parameters()))
(torch.Size([4, 2, 3]), 4)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from torch.nn import functional as F

from fieldcraft.errors import FieldcraftError, check

Params = Mapping[str, Tensor]


def batch_size(params: Params, like: Params) -> int | None:
    """The batch size ``B`` of the batched entries of ``params`` (None when none is batched).

    ``like`` holds the module's own parameters (``dict(module.named_parameters())``); every
    entry of ``params`` must name one of them and have its shape, or ``[B, *shape]``.
    """
    sizes = set()
    for name, value in params.items():
        if name not in like:
            raise FieldcraftError(f"unknown parameter {name!r} (known: {', '.join(like)})")
        shape, want = tuple(value.shape), tuple(like[name].shape)
        if shape[1:] == want and len(shape) == len(want) + 1:
            sizes.add(shape[0])
        else:
            check(shape == want, f"parameter {name!r} has shape {list(shape)}, expected {list(want)} or [B, *{list(want)}]")
    check(len(sizes) <= 1, f"batched parameters disagree on the batch size: {sorted(sizes)}")
    return sizes.pop() if sizes else None


def sub_params(params: Params, prefix: str) -> dict[str, Tensor]:
    """The entries of ``params`` under ``prefix.``, with that prefix removed
    (``network.linears.0.weight`` -> ``linears.0.weight`` for ``prefix='network'``)."""
    start = prefix + "."
    return {name[len(start):]: value for name, value in params.items() if name.startswith(start)}


def stack_params(params: Sequence[Params]) -> dict[str, Tensor]:
    """Stack per-signal parameter dicts (same names, unbatched) into one batched dict.

    Differentiable: ``stack_params([dict(m.named_parameters())] * B)`` gives ``B`` copies of a
    module's weights whose gradients flow back to the module (a meta-learned initialisation).
    """
    check(len(params) > 0, "stack_params needs at least one parameter dict")
    names = list(params[0])
    check(all(list(p) == names for p in params), "stack_params: the dicts must have the same names")
    return {name: torch.stack([p[name] for p in params]) for name in names}


def uniform(shape: tuple[int, ...], bound: float, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``U(-bound, bound)`` of ``shape`` on ``like``'s device and dtype (zeros for ``bound == 0``)."""
    out = torch.zeros(shape, device=like.device, dtype=like.dtype)
    return out.uniform_(-bound, bound, generator=generator) if bound > 0 else out


def linear(h: Float[Tensor, "*b n in_dim"], weight: Float[Tensor, "*b out_dim in_dim"],
           bias: Float[Tensor, "*b out_dim"] | None) -> Float[Tensor, "*b n out_dim"]:
    """``h W^T + b`` for unbatched (``[out, in]``, ``[out]``) or batched (``[B, out, in]``,
    ``[B, out]``) weights; with batched weights ``h`` is ``[B, n, in]`` (one batched matmul)."""
    if weight.dim() == 2 and (bias is None or bias.dim() == 1):
        return F.linear(h, weight, bias)
    if bias is not None and bias.dim() == 2:
        bias = bias.unsqueeze(-2)  # [B, 1, out]: one bias per signal
    if weight.dim() == 2:
        return F.linear(h, weight) + bias
    if bias is None:
        return torch.bmm(h, weight.transpose(1, 2))
    return torch.baddbmm(bias, h, weight.transpose(1, 2))
