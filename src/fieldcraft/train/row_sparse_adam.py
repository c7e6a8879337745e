"""Adam that skips the grid-table rows a step did not touch ("lazy" Adam, as in Instant-NGP).

A hash-grid table holds millions of rows, and a dense Adam step reads and writes the
parameter, gradient and both moments of every one of them (~1 GB per step for
``16 x 2^19 x 2`` parameters). :class:`RowSparseAdam` updates, in parameter groups marked
``sparse_rows=True``, only the rows whose gradient is not all zero; other rows keep their
parameters *and* moments (tiny-cuda-nn does the same). Dense groups (MLP weights) get the
ordinary Adam update. With every row touched the result equals ``torch.optim.Adam`` (same
formula and rounding order, float32): bias corrections use the group's global step.

The update is one fused numba pass over the rows (parallel, in place); without numba, or for
non-float32 / non-CPU parameters, or with ``FIELDCRAFT_KERNELS=reference``, it runs with
PyTorch ops (same result).

Typical use::

    opt = make_optimizer(field, lr=1e-2, betas=(0.9, 0.99), eps=1e-15)  # grid tables sparse
    loss.backward(); opt.step(); opt.zero_grad()
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fieldcraft.errors import FieldcraftError

try:
    from numba import njit, prange

    _HAVE_NUMBA = True
except Exception:  # pragma: no cover - exercised only without numba
    _HAVE_NUMBA = False


def grid_param_groups(module: nn.Module) -> list[dict[str, Any]]:
    """Split ``module``'s trainable parameters into ``[{params: dense}, {params: grid tables,
    sparse_rows: True}]`` (empty groups left out). Grid tables are the ``table`` parameters of
    :class:`~fieldcraft.encodings.GridEncoding` modules."""
    from fieldcraft.encodings.grid import GridEncoding

    tables = {id(m.table): m.table for m in module.modules() if isinstance(m, GridEncoding)}
    dense = [p for p in module.parameters() if p.requires_grad and id(p) not in tables]
    sparse = [p for p in tables.values() if p.requires_grad]
    groups: list[dict[str, Any]] = []
    if dense:
        groups.append({"params": dense, "sparse_rows": False})
    if sparse:
        groups.append({"params": sparse, "sparse_rows": True})
    return groups


def make_optimizer(params: nn.Module | Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                   weight_decay: float = 0.0) -> RowSparseAdam:
    """Adam for a field: pass the module (grid tables become ``sparse_rows`` groups, see
    :func:`grid_param_groups`), a list of parameters (all dense) or explicit param groups
    (dicts, optionally with ``sparse_rows``, ``lr``, ...)."""
    if isinstance(params, nn.Module):
        params = grid_param_groups(params)
    return RowSparseAdam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


class RowSparseAdam(torch.optim.Optimizer):
    """Adam (L2 ``weight_decay`` as ``torch.optim.Adam``) with optional row-lazy groups.

    Group options: ``lr``, ``betas``, ``eps``, ``weight_decay``, ``sparse_rows`` (bool: update
    only rows, i.e. slices along dim 0, whose gradient is not all zero). A sparse COO gradient
    (``nn.functional.embedding(..., sparse=True)``) updates exactly the rows it holds, as
    ``torch.optim.SparseAdam`` does. State per parameter as ``torch.optim.Adam`` (``step``,
    ``exp_avg``, ``exp_avg_sq``), so state dicts carry over.
    """

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, sparse_rows: bool = False) -> None:
        if not (lr >= 0 and eps >= 0 and weight_decay >= 0 and 0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise FieldcraftError(f"invalid Adam settings lr={lr} betas={betas} eps={eps} weight_decay={weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, sparse_rows=sparse_rows)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = float(state["step"].item())
                if p.grad.is_sparse:  # rows of a sparse gradient (embeddings with sparse=True): gather, update, scatter
                    grad = p.grad.coalesce()
                    rows = grad.indices()[0]
                    sub = [t.index_select(0, rows) for t in (p.data, state["exp_avg"], state["exp_avg_sq"])]
                    adam_update(sub[0], grad.values().contiguous(), sub[1], sub[2], step, lr=group["lr"], beta1=beta1,
                                beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"], sparse_rows=False)
                    for t, part in zip((p.data, state["exp_avg"], state["exp_avg_sq"]), sub):
                        t.index_copy_(0, rows, part)
                    continue
                adam_update(p, p.grad, state["exp_avg"], state["exp_avg_sq"], step, lr=group["lr"],
                            beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                            sparse_rows=bool(group["sparse_rows"]))
        return loss


def adam_update(p: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: float, *, lr: float,
                beta1: float, beta2: float, eps: float, weight_decay: float, sparse_rows: bool) -> None:
    """One in-place Adam update of ``p`` (``step`` counts from 1), as ``torch.optim.Adam``:
    ``m <- lerp(m, g, 1 - b1)``, ``v <- b2 v + (1 - b2) g^2``,
    ``p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``;
    with ``sparse_rows`` only rows (dim 0) whose gradient is not all zero are touched."""
    step_size = lr / (1.0 - beta1**step)
    bc2_sqrt = math.sqrt(1.0 - beta2**step)
    from fieldcraft.runtime import fast_kernels_enabled

    fast = (_HAVE_NUMBA and fast_kernels_enabled() and p.device.type == "cpu" and p.dtype == grad.dtype == torch.float32
            and all(t.is_contiguous() for t in (p, grad, exp_avg, exp_avg_sq)) and p.numel() > 0)
    if fast:
        rows = p.shape[0] if p.dim() > 0 else 1
        views = [t.detach().reshape(rows, -1).numpy() for t in (p, grad, exp_avg, exp_avg_sq)]
        from fieldcraft.encodings.grid_autograd import num_threads

        _adam_rows(*views, np.float32(1.0 - beta1), np.float32(beta2), np.float32(1.0 - beta2),
                   np.float32(step_size), np.float32(bc2_sqrt), np.float32(eps), np.float32(weight_decay),
                   sparse_rows, num_threads() * 8)
        return
    if sparse_rows and p.dim() > 0:
        mask = grad.reshape(grad.shape[0], -1).ne(0).any(1)
        idx = mask.nonzero().squeeze(1)
        sub = [t.index_select(0, idx) for t in (p, grad, exp_avg, exp_avg_sq)]
        _adam_torch(*sub, step_size, bc2_sqrt, beta1, beta2, eps, weight_decay)
        for t, s in zip((p, exp_avg, exp_avg_sq), (sub[0], sub[2], sub[3])):
            t.index_copy_(0, idx, s)
        return
    _adam_torch(p, grad, exp_avg, exp_avg_sq, step_size, bc2_sqrt, beta1, beta2, eps, weight_decay)


def _adam_torch(p, grad, m, v, step_size, bc2_sqrt, beta1, beta2, eps, weight_decay) -> None:
    """torch.optim.Adam's single-tensor update, in place on (possibly gathered) tensors."""
    if weight_decay != 0:
        grad = grad.add(p, alpha=weight_decay)
    m.lerp_(grad, 1 - beta1)
    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (v.sqrt() / bc2_sqrt).add_(eps)
    p.addcdiv_(m, denom, value=-step_size)


if _HAVE_NUMBA:

    @njit(inline="always", error_model="numpy")
    def _adam_element(pk, gk, mk, vk, w1, b2, w2, step_size, bc2_sqrt, eps, wd):
        """One element's Adam update: new ``(p, m, v)`` (torch.optim.Adam's arithmetic)."""
        one = np.float32(1.0)
        if wd != 0:
            gk = gk + wd * pk
        mk = mk + w1 * (gk - mk) if w1 < 0.5 else gk - (gk - mk) * (one - w1)  # torch.lerp
        vk = vk * b2 + w2 * (gk * gk)
        return pk - step_size * (mk / (np.sqrt(vk) / bc2_sqrt + eps)), mk, vk

    @njit(inline="always", error_model="numpy")
    def _adam_span(p, g, m, v, lo, hi, w1, b2, w2, step_size, bc2_sqrt, eps, wd):
        """Adam on flat elements ``lo:hi`` (a branch-free loop from 0 that LLVM vectorises)."""
        p, g, m, v = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
        for k in range(hi - lo):
            p[k], m[k], v[k] = _adam_element(p[k], g[k], m[k], v[k], w1, b2, w2, step_size, bc2_sqrt, eps, wd)

    @njit(inline="always", error_model="numpy")
    def _adam_span_masked(p, g, m, v, lo, hi, emask, w1, b2, w2, step_size, bc2_sqrt, eps, wd):
        """:func:`_adam_span` on flat elements ``lo:hi`` where ``emask[k - lo]``; the others keep their
        values (selects, not branches, so the loop still vectorises when touched rows are scattered)."""
        p, g, m, v = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
        for k in range(hi - lo):
            pk, mk, vk = _adam_element(p[k], g[k], m[k], v[k], w1, b2, w2, step_size, bc2_sqrt, eps, wd)
            t = emask[k]
            m[k] = mk if t else m[k]
            v[k] = vk if t else v[k]
            p[k] = pk if t else p[k]

    @njit(parallel=True, cache=True, error_model="numpy")
    def _adam_rows(p, g, m, v, w1, b2, w2, step_size, bc2_sqrt, eps, wd, sparse, nblocks):
        """Adam on ``[rows, cols]`` views; with ``sparse`` only on runs of rows with a nonzero gradient."""
        rows, cols = p.shape
        pf, gf, mf, vf = p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1)
        for b in prange(nblocks):
            emask = np.empty(256 * cols, np.bool_)
            r0 = rows * b // nblocks
            r1 = rows * (b + 1) // nblocks
            if not sparse:
                _adam_span(pf, gf, mf, vf, r0 * cols, r1 * cols, w1, b2, w2, step_size, bc2_sqrt, eps, wd)
                continue
            for c0 in range(r0, r1, 256):  # chunks of rows: all touched -> one vectorised span
                c1 = min(r1, c0 + 256)
                nonzero = 0
                for k in range(c0 * cols, c1 * cols):
                    nonzero += gf[k] != 0
                if nonzero == 0:
                    continue
                if nonzero == (c1 - c0) * cols:
                    _adam_span(pf, gf, mf, vf, c0 * cols, c1 * cols, w1, b2, w2, step_size, bc2_sqrt, eps, wd)
                    continue
                for r in range(c0, c1):  # element mask of the touched rows, then one branch-free pass
                    touched = False
                    for j in range(cols):
                        touched |= g[r, j] != 0
                    for j in range(cols):
                        emask[(r - c0) * cols + j] = touched
                _adam_span_masked(pf, gf, mf, vf, c0 * cols, c1 * cols, emask, w1, b2, w2, step_size, bc2_sqrt, eps,
                                  wd)
