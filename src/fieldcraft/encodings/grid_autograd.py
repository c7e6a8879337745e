"""PyTorch binding of the fast grid kernels (:mod:`fieldcraft.kernels.grid`).

:func:`grid_encode_fast` runs the numba kernels on float32 CPU tensors and is differentiable
with respect to the table (not the points), through an autograd function whose backward
writes the table gradient into a buffer reused across steps (see the kernels' docstring).
If numba is missing or a kernel fails to compile, it warns once and runs
:func:`~fieldcraft.encodings.grid.grid_encode_reference` instead.

Thread count: ``torch.get_num_threads()``, capped by numba's ``NUMBA_NUM_THREADS``, so
``torch.set_num_threads`` controls the kernels too.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from fieldcraft.encodings.grid import grid_encode_reference
from fieldcraft.kernels import grid as K
from fieldcraft.kernels.grid_layout import GridLayout


def num_threads() -> int:
    """Threads the kernels use: ``torch.get_num_threads()``, capped by numba's pool size."""
    return K.kernel_threads(torch.get_num_threads())


_state_lock = threading.Lock()
_disabled: dict[tuple[int, int], str] = {}
_warned = False
_backward_ready: set[tuple[int, int]] = set()


def _fallback_reason(dim: int, features: int, backward: bool = True) -> str | None:
    """None when the kernels for ``dim``-D points with ``features`` features compile (or load
    from numba's on-disk cache), else why not. Inference needs only the forward kernel, which
    halves the start-up cost of a one-shot command such as a mesh export."""
    reason = K.forward_fallback_reason(dim, features)
    if reason is not None or not backward:
        return reason
    key = (dim, features)
    if key in _backward_ready:
        return None
    with _state_lock:
        if key in _disabled:
            return _disabled[key]
        try:  # compile (or load) the backward kernels on a tiny problem
            u, table_np, lay = K.warm_up_problem(dim, features)
            with torch.inference_mode(False), torch.enable_grad():  # callers may be in no_grad/inference
                table = torch.from_numpy(table_np).requires_grad_(True)
                _GridEncodeFunction.apply(torch.from_numpy(u), table, lay).sum().backward()
        except Exception as exc:  # noqa: BLE001 - any compiler failure means "use the reference"
            _disabled[key] = K.describe_failure(exc)
            return _disabled[key]
        _backward_ready.add(key)
    return None


def _warn_once(reason: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"fieldcraft: fast grid kernel unavailable, using the PyTorch reference ({reason})",
                      RuntimeWarning, stacklevel=3)


def grid_encode_fast(u: Float[Tensor, "n dim"], table: Float[Tensor, "rows F"], layout: GridLayout) -> Float[Tensor, "n L*F"]:
    """Grid encoding of float32 CPU points ``u`` in ``[0, 1]^d`` (clamped), differentiable in ``table``.

    Same result as :func:`~fieldcraft.encodings.grid.grid_encode_reference` up to float
    rounding; falls back to it (with one warning) when numba cannot be used.

    >>> lay = GridLayout.build(2, 2, (4, 8), 6)
    >>> table = torch.randn(lay.n_rows, 2)
    >>> u = torch.rand(5, 2)
    >>> torch.allclose(grid_encode_fast(u, table, lay), grid_encode_reference(u, table, lay), atol=1e-6)
    True
    """
    needs_graph = torch.is_grad_enabled() and table.requires_grad
    reason = _fallback_reason(layout.dim, layout.n_features, backward=needs_graph)
    if reason is not None:
        _warn_once(reason)
        return grid_encode_reference(u, table, layout)
    if not needs_graph:  # no autograd node (no_grad, inference mode, frozen table)
        out = K.run_forward(u.detach().contiguous().numpy(), table.detach().contiguous().numpy(), layout, num_threads())
        return torch.from_numpy(out)
    return _GridEncodeFunction.apply(u, table, layout)


def grid_reattach_fast(u: Float[Tensor, "n dim"], encoded: Float[Tensor, "n L*F"], table: Float[Tensor, "rows F"],
                       layout: GridLayout) -> Float[Tensor, "n L*F"]:
    """``encoded`` (:func:`grid_encode_fast` of ``u``, computed without a graph) as a differentiable
    function of ``table``: the forward pass is not repeated, the backward is the fast kernel's.

    >>> lay = GridLayout.build(3, 2, (4, 8), 6)
    >>> table = torch.randn(lay.n_rows, 2, requires_grad=True)
    >>> u = torch.rand(5, 3)
    >>> with torch.no_grad():
    ...     enc = grid_encode_fast(u, table, lay)
    >>> grid_reattach_fast(u, enc, table, lay).square().sum().backward()
    >>> g1 = table.grad.clone(); table.grad = None
    >>> grid_encode_fast(u, table, lay).square().sum().backward()
    >>> torch.equal(g1, table.grad)
    True
    """
    reason = _fallback_reason(layout.dim, layout.n_features, backward=True)
    if reason is not None:
        _warn_once(reason)
        return grid_encode_reference(u, table, layout)
    return _GridReattachFunction.apply(u, encoded, table, layout)


class _GradBuffers:
    """One reusable table-gradient buffer per table shape.

    A buffer is handed out again only when no tensor other than our own references its
    storage (i.e. the previous ``table.grad`` was released, as ``optimizer.zero_grad()``
    does by default); otherwise a fresh array is used, so accumulation stays correct.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, int], tuple[Tensor, int]] = {}
        self._lock = threading.Lock()

    def get(self, shape: tuple[int, int]) -> Tensor:
        with self._lock:
            entry = self._buffers.get(shape)
            if entry is not None and _storage_use_count(entry[0]) == entry[1]:
                return entry[0].detach()  # new TensorImpl: autograd adopts it without a copy
            buf = torch.empty(shape, dtype=torch.float32)
            count = _storage_use_count(buf)
            if count > 0 and len(self._buffers) < 8:
                self._buffers[shape] = (buf, count)
            return buf.detach() if count > 0 else buf

    def clear(self) -> None:
        with self._lock:
            self._buffers.clear()


def _storage_use_count(t: Tensor) -> int:
    try:
        return int(torch._C._storage_Use_Count(t.untyped_storage()._cdata))
    except Exception:  # private API gone: never reuse buffers
        return -1


_grad_buffers = _GradBuffers()


def release_buffers() -> None:
    """Drop the cached table-gradient buffers (frees memory after training)."""
    _grad_buffers.clear()


class _GridEncodeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u: Tensor, table: Tensor, layout: GridLayout) -> Tensor:
        u = u.detach().contiguous()
        nthreads = num_threads()
        out = K.run_forward(u.numpy(), table.detach().contiguous().numpy(), layout, nthreads)
        ctx.save_for_backward(u)
        ctx.layout = layout
        ctx.table_shape = tuple(table.shape)
        return torch.from_numpy(out)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        (u,) = ctx.saved_tensors
        layout: GridLayout = ctx.layout
        grad = _grad_buffers.get(ctx.table_shape)
        n, L, F = u.shape[0], layout.n_levels, layout.n_features
        if n == 0:
            grad.zero_()
            return None, grad, None
        nthreads = num_threads()
        g = grad_out.detach().to(torch.float32).contiguous().numpy()
        g_l = np.empty((L, n, F), np.float32)
        ftup = (0,) * F
        K.points_to_levels(g, g_l, ftup, nthreads)
        res, sizes, hashed, pow2, offsets = K.layout_arrays(layout)
        dtup = (0,) * layout.dim
        un = u.numpy()
        if L >= nthreads or nthreads == 1:
            K.backward_kernel(un, g_l, grad.numpy(), dtup, ftup, res, sizes, hashed, pow2, offsets, min(nthreads, L))
        else:
            try:  # compiled on first use (dense grids); same code as above, but be safe
                K.run_backward_split(un, g_l, layout, nthreads, grad.numpy())
            except Exception as exc:
                if K.numba is None or not isinstance(exc, K.numba.core.errors.NumbaError):
                    raise
                K.backward_kernel(un, g_l, grad.numpy(), dtup, ftup, res, sizes, hashed, pow2, offsets, 1)
        return None, grad, None


class _GridReattachFunction(torch.autograd.Function):
    """Forward: the given features as they are; backward: :class:`_GridEncodeFunction`'s."""

    @staticmethod
    def forward(ctx, u: Tensor, encoded: Tensor, table: Tensor, layout: GridLayout) -> Tensor:
        ctx.save_for_backward(u.detach().contiguous())
        ctx.layout = layout
        ctx.table_shape = tuple(table.shape)
        return encoded.detach().clone() if encoded.requires_grad else encoded.detach()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        _, grad, _ = _GridEncodeFunction.backward(ctx, grad_out)
        return None, None, grad, None
