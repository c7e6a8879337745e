"""The training rate proxy of the ``latent`` preset: ``-log2 P(y)`` summed over a level, ``P`` a
Laplace of scale ``2^(k/4 - SCALE_OFFSET)`` integrated over ``[y - 1/2, y + 1/2]`` (per-element ``k``).

:func:`laplace_bits_reference` is the PyTorch expression (autograd, any device, the GPU's path);
:func:`laplace_bits_sum` returns the same sum and, on the CPU with float32 tensors, computes it
and both gradients in one fused numba pass (float64 inside) instead of some sixty PyTorch
element-wise kernels forward and backward. ``FIELDCRAFT_KERNELS=reference``
(:func:`fieldcraft.runtime.fast_kernels_enabled`) selects the reference everywhere.

With ``a = |y|``, ``r = 1/s``, ``e1 = exp(-(a + 1/2) r)`` and ``e2 = exp(-|a - 1/2| r)``:
``P = (e2 - e1)/2`` for ``a >= 1/2`` and ``1 - (e1 + e2)/2`` below, floored at ``2^-30``;
``dP/da = r (e1 - e2)/2`` on both branches (``r e1/2`` at the kink ``a = 1/2``), ``dP/dr = ((a + 1/2) e1 -+ |a - 1/2| e2)/2``
(minus for ``a >= 1/2``), ``dr/dk = -r ln(2)/4``; no gradient where the floor applies.

>>> import torch
>>> y, k = torch.tensor([0.0, 0.7, -2.0]), torch.tensor([20.0, 16.0, 30.0])
>>> abs(float(laplace_bits_sum(y, k)) - float(laplace_bits_reference(y, k).sum())) < 1e-4
True
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from fieldcraft.codec.entropy import SCALE_OFFSET
from fieldcraft.runtime import fast_kernels_enabled

try:  # numba is a declared dependency, but a broken install must not break the package
    from numba import njit, prange

    _HAVE_NUMBA = True
except Exception:  # pragma: no cover - exercised only without numba
    _HAVE_NUMBA = False

P_FLOOR = 2.0**-30
_PARTS = 64  # fixed partition of the sum: the result does not depend on the thread count


def laplace_bits_reference(y: Tensor, k: Tensor) -> Tensor:
    """``Float[Tensor, "..."]``: ``-log2 P(y)`` element-wise (PyTorch, differentiable)."""
    s = torch.exp2(k / 4.0 - SCALE_OFFSET)
    a = y.abs()
    upper = 0.5 * torch.exp(-(a + 0.5) / s)
    lower = 0.5 * torch.exp(-(a - 0.5).abs() / s)
    p = torch.where(a >= 0.5, lower - upper, 1.0 - lower - upper)
    return -torch.log2(p.clamp_min(P_FLOOR))


if _HAVE_NUMBA:
    @njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
    def _bits_kernel(y, k, gy, gk, want_grad):  # pragma: no cover - compiled
        n = y.size
        partial = np.zeros(_PARTS)
        ln2 = math.log(2.0)
        for part in prange(_PARTS):
            lo, hi = part * n // _PARTS, (part + 1) * n // _PARTS
            acc = 0.0
            for j in range(lo, hi):
                yj = np.float64(y[j])
                a = abs(yj)
                r = math.exp((SCALE_OFFSET - np.float64(k[j]) * 0.25) * ln2)
                d = abs(a - 0.5)
                e1 = math.exp(-(a + 0.5) * r)
                e2 = math.exp(-d * r)
                # d e2 / da (0 at the kink a = 1/2, as PyTorch's abs)
                de2 = -r * e2 if a > 0.5 else (r * e2 if a < 0.5 else 0.0)
                if a >= 0.5:
                    p = 0.5 * (e2 - e1)
                    dpda = 0.5 * (de2 + r * e1)
                    dpdr = 0.5 * ((a + 0.5) * e1 - d * e2)
                else:
                    p = 1.0 - 0.5 * (e1 + e2)
                    dpda = 0.5 * (r * e1 - de2)
                    dpdr = 0.5 * ((a + 0.5) * e1 + d * e2)
                if p < P_FLOOR:
                    acc += -math.log2(P_FLOOR)
                    if want_grad:
                        gy[j] = 0.0
                        gk[j] = 0.0
                    continue
                acc += -math.log2(p)
                if want_grad:
                    dbits = -1.0 / (p * ln2)
                    sgn = 1.0 if yj > 0 else (-1.0 if yj < 0 else 0.0)
                    gy[j] = dbits * dpda * sgn
                    gk[j] = dbits * dpdr * (-r * ln2 * 0.25)
            partial[part] = acc
        total = 0.0
        for part in range(_PARTS):
            total += partial[part]
        return total


class _LaplaceBits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: Tensor, k: Tensor) -> Tensor:
        yn = y.detach().contiguous().reshape(-1).numpy()
        kn = k.detach().contiguous().reshape(-1).numpy()
        want = bool(ctx.needs_input_grad[0] or ctx.needs_input_grad[1])
        gy = np.empty_like(yn) if want else np.empty(0, np.float32)
        gk = np.empty_like(kn) if want else np.empty(0, np.float32)
        total = _bits_kernel(yn, kn, gy, gk, want)
        if want:
            ctx.save_for_backward(torch.from_numpy(gy).view(y.shape), torch.from_numpy(gk).view(k.shape))
        return torch.tensor(total, dtype=y.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        gy, gk = ctx.saved_tensors
        return grad * gy, grad * gk


def laplace_bits_sum(y: Tensor, k: Tensor) -> Tensor:
    """``-log2 P(y)`` summed (a scalar; ``y`` and ``k`` of the same shape), differentiable in both."""
    fast = (_HAVE_NUMBA and fast_kernels_enabled() and y.device.type == "cpu" and y.dtype == torch.float32
            and k.dtype == torch.float32 and y.shape == k.shape)
    if not fast:
        return laplace_bits_reference(y, k).sum()
    return _LaplaceBits.apply(y, k)
