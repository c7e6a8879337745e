"""Choose the implementation of a grid encoding: fast CPU kernel or PyTorch reference.

The fast kernel (:mod:`fieldcraft.encodings.grid_autograd`, over the numba kernels of :mod:`fieldcraft.kernels.grid`) is used when all of these hold:
the backend is ``"auto"`` or ``"fast"``, the tensors are float32 on the CPU, the points do
not require gradients (the kernel differentiates with respect to the table only; input
gradients and higher orders, e.g. an eikonal loss, take the reference path), and the
kernel is importable. Otherwise :func:`~fieldcraft.encodings.grid.grid_encode_reference`
runs, on any device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fieldcraft.encodings.grid import GridLayout, grid_encode_reference
from fieldcraft.errors import FieldcraftError


def grid_encode(u: Tensor, table: Tensor, layout: GridLayout, backend: str = "auto") -> Tensor:
    if backend != "torch":
        if _fast_applies(u, table):
            return _fast_kernel()(u, table, layout)
        if backend == "fast":
            raise FieldcraftError("grid backend 'fast' requested but the fast CPU kernel does not apply "
                                  "(needs float32 CPU tensors, no input gradients, numba installed)")
    return grid_encode_reference(u, table, layout)


def grid_reattach(u: Tensor, encoded: Tensor, table: Tensor, layout: GridLayout, backend: str = "auto") -> Tensor | None:
    """``encoded`` (the grid features of ``u``, computed without a graph) attached to ``table``'s graph
    with the fast kernel's backward, or None when :func:`grid_encode` would not take the fast kernel."""
    if backend == "torch" or not table.requires_grad or encoded.dtype != torch.float32 or not _fast_applies(u, table):
        return None
    from fieldcraft.encodings.grid_autograd import grid_reattach_fast

    return grid_reattach_fast(u, encoded, table, layout)


def _fast_applies(u: Tensor, table: Tensor) -> bool:
    """Whether the fast kernel encodes ``u`` with ``table`` (module docstring)."""
    return (_fast_kernel() is not None and u.device.type == "cpu" and table.dtype == u.dtype == torch.float32
            and not u.requires_grad)


def _fast_kernel():
    from fieldcraft.runtime import fast_kernels_enabled

    if not fast_kernels_enabled():
        return None
    try:
        from fieldcraft.encodings.grid_autograd import grid_encode_fast
    except ImportError:
        return None
    return grid_encode_fast
