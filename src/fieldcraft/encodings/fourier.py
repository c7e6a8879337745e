"""Gaussian random Fourier features (Tancik et al. 2020, "Fourier Features Let Networks
Learn High Frequency Functions in Low Dimensional Domains").

``gamma(v) = [cos(2 pi B v), sin(2 pi B v)]`` with ``B`` an ``m x in_dim`` matrix drawn
from ``N(0, sigma^2)``. The coordinates ``v`` are taken in ``[0, 1]`` as in the paper
(inputs in ``[-1, 1]`` are mapped by ``v = (x + 1) / 2``), so ``sigma`` has the paper's
meaning (10 for natural images). ``B`` is a buffer: it is saved with the weights.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from fieldcraft.encodings.base import Encoding, EncodingConfig


@dataclasses.dataclass(frozen=True)
class FourierFeaturesConfig(EncodingConfig):
    """Fields:

    - ``n_features``: m, the number of random frequencies (output is ``2 m``).
    - ``sigma``: standard deviation of the Gaussian frequencies, in cycles per unit of ``v``.
    - ``seed``: seed of the generator that draws ``B`` (the matrix is also saved).
    """

    type_name = "FourierFeatures"
    n_features: int = 256
    sigma: float = 10.0
    seed: int = 0

    def out_dim(self, in_dim: int) -> int:
        return 2 * self.n_features

    def build(self, in_dim: int) -> FourierFeatures:
        return FourierFeatures(self, in_dim)


class FourierFeatures(Encoding):
    config: FourierFeaturesConfig

    def __init__(self, config: FourierFeaturesConfig, in_dim: int) -> None:
        super().__init__(config, in_dim)
        gen = torch.Generator().manual_seed(config.seed)
        b = torch.randn(config.n_features, in_dim, generator=gen) * config.sigma
        self.register_buffer("B", b)

    def encode(self, x: Tensor) -> Tensor:
        v = (x + 1.0) * 0.5
        proj = (2.0 * math.pi) * (v @ self.B.to(x.dtype).T)
        return torch.cat([torch.cos(proj), torch.sin(proj)], dim=-1)
