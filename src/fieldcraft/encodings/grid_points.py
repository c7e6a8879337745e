"""A grid encoding differentiable in its points too, on the fast CPU kernels.

:func:`grid_encode_with_points` = the fast kernel's features (differentiable in the table,
:func:`~fieldcraft.encodings.grid_autograd.grid_encode_fast`) + a zero whose backward gives the
gradient with respect to the points (:mod:`fieldcraft.kernels.grid_points`): first order only
(no double backward). It applies to float32 3-D points on the CPU with the fast kernels enabled;
elsewhere (a GPU, ``FIELDCRAFT_KERNELS=reference``, other dimensions, numba missing) it is the
encoding itself (the PyTorch reference, differentiable in both). Camera refinement uses it
(:class:`~fieldcraft.encodings.annealing.WindowedEncoding`).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from fieldcraft.encodings.grid import GridEncoding
from fieldcraft.kernels.grid_layout import GridLayout


class _PointGradient(torch.autograd.Function):
    """Zeros ``[n, L * F]`` whose backward is ``dL/du`` (the table is treated as a constant)."""

    @staticmethod
    def forward(ctx, u: Tensor, table: Tensor, layout: GridLayout) -> Tensor:
        ctx.save_for_backward(u.detach(), table.detach())
        ctx.layout = layout
        return u.new_zeros(u.shape[0], layout.n_levels * layout.n_features)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        from fieldcraft.encodings.grid_autograd import num_threads
        from fieldcraft.kernels.grid_points import run_point_gradient

        u, table = ctx.saved_tensors
        g = grad_out.detach().to(torch.float32).contiguous().numpy()
        du = run_point_gradient(u.contiguous().numpy(), table.contiguous().numpy(), g, ctx.layout, num_threads())
        return torch.from_numpy(du), None, None


def fast_point_gradients(encoding: GridEncoding, x: Tensor) -> bool:
    """Whether :func:`grid_encode_with_points` runs the fast kernels for ``encoding`` on ``x``."""
    from fieldcraft.encodings.grid_autograd import _fallback_reason
    from fieldcraft.runtime import fast_kernels_enabled

    return (x.requires_grad and torch.is_grad_enabled() and encoding.backend != "torch" and fast_kernels_enabled()
            and x.device.type == "cpu" and x.dtype == encoding.table.dtype == torch.float32 and encoding.in_dim == 3
            and _fallback_reason(3, encoding.layout.n_features) is None)


def grid_encode_with_points(encoding: GridEncoding, x: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch out_dim"]:
    """``encoding(x)``, differentiable in the table and in ``x`` (module docstring).

    >>> from fieldcraft.encodings import HashGridConfig
    >>> enc = HashGridConfig(n_levels=2, log2_table_size=8, base_resolution=4, max_resolution=8, init_scale=1.0).build(3)
    >>> x = (torch.rand(4, 3) * 2 - 1).requires_grad_(True)
    >>> g_fast, = torch.autograd.grad(grid_encode_with_points(enc, x).pow(2).sum(), x)
    >>> with torch.no_grad():
    ...     same = torch.allclose(grid_encode_with_points(enc, x), enc(x))
    >>> from fieldcraft.encodings.grid import grid_encode_reference
    >>> g_ref, = torch.autograd.grad(grid_encode_reference((x + 1) * 0.5, enc.table, enc.layout).pow(2).sum(), x)
    >>> same, torch.allclose(g_fast, g_ref, atol=1e-4)
    (True, True)
    """
    if not fast_point_gradients(encoding, x):
        return encoding(x)
    from fieldcraft.encodings.grid_autograd import grid_encode_fast

    batch = x.shape[:-1]
    u = ((x + 1.0) * 0.5).reshape(-1, 3)
    y = grid_encode_fast(u.detach(), encoding.table, encoding.layout) + _PointGradient.apply(
        u, encoding.table, encoding.layout)
    return y.reshape(*batch, encoding.out_dim)
