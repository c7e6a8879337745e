"""Image-quality metrics, defined once for every task.

- PSNR = ``10 log10(R^2 / MSE)``: ``R`` the data range (1 for values in ``[0, 1]``), the MSE
  over all given elements (pixels x channels) in float64. An MSE of exactly 0 gives ``inf``; a
  non-finite MSE (a diverged prediction) gives ``nan``, never an exception.
- SSIM: Wang et al. 2004 as the papers report it: an 11x11 Gaussian window with sigma 1.5,
  population covariances, ``K1 = 0.01``, ``K2 = 0.03``, channels averaged
  (scikit-image ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=R)``).

>>> import numpy as np
>>> psnr(np.zeros(4), np.full(4, 0.1))
20.0
>>> psnr_from_mse(0.0), psnr_from_mse(float("nan"))
(inf, nan)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: the numpy metrics do not need it
    import torch

PSNR_DEFINITION = "10 log10(R^2 / MSE), MSE over all pixels and channels, R = data range (1 for [0, 1] values)"
SSIM_DEFINITION = ("Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, population covariance, K1 0.01, K2 0.03, "
                   "channels averaged (skimage structural_similarity, gaussian_weights=True)")


def psnr_from_mse(mse: float, data_range: float = 1.0) -> float:
    """``10 log10(data_range^2 / mse)``: ``inf`` for ``mse == 0``, ``nan`` for a non-finite or negative ``mse``."""
    mse = float(mse)
    if not math.isfinite(mse) or mse < 0:
        return math.nan
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def psnr_of_mse(mse: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Elementwise PSNR of a tensor of MSEs (e.g. one per signal of a batch), on its device: the same
    definition as :func:`psnr_from_mse` (``inf`` for 0, ``nan`` for non-finite or negative values).

    >>> import torch
    >>> psnr_of_mse(torch.tensor([0.01, 0.0, float("nan")]))
    tensor([20., inf, nan])
    """
    import torch

    m = mse.double()
    out = 10.0 * torch.log10(data_range**2 / m)
    return torch.where(torch.isfinite(m) & (m >= 0), out, torch.full_like(out, float("nan"))).to(mse.dtype)


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared difference over all elements, in float64."""
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR of two arrays of the same shape (see module docstring)."""
    return psnr_from_mse(mse(a, b), data_range)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """SSIM of ``[H, W]`` or ``[H, W, C]`` images (see module docstring); ``nan`` if either is not finite
    or smaller than the 11 x 11 window.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((32, 32, 3))
    >>> round(ssim(x, x), 6)
    1.0
    """
    from skimage.metrics import structural_similarity

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()) or min(a.shape[:2]) < 11:
        return math.nan
    channel_axis = -1 if a.ndim == 3 else None
    return float(structural_similarity(a, b, data_range=data_range, channel_axis=channel_axis,
                                       gaussian_weights=True, sigma=1.5, use_sample_covariance=False))
