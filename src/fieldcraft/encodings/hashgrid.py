"""Multiresolution hash encoding (Müller et al. 2022, "Instant Neural Graphics Primitives").

``L`` levels with resolutions ``N_l = floor(N_min b^l)``, ``F`` features per vertex, at most
``2^T`` table rows per level; coarse levels whose ``(N_l + 1)^d`` vertices fit are indexed
densely, finer ones through the spatial hash (see :mod:`fieldcraft.encodings.grid` for the
exact indexing and interpolation). Table entries start uniform in ``[-init_scale, init_scale]``
(Instant-NGP: 1e-4).

Inputs in ``[-1, 1]^d`` are mapped to ``[0, 1]^d``; points outside are clamped to the
boundary of the cube.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from fieldcraft.encodings.base import Encoding, EncodingConfig
from fieldcraft.encodings.grid import GridLayout, level_resolutions
from fieldcraft.errors import check


@dataclasses.dataclass(frozen=True)
class HashGridConfig(EncodingConfig):
    """Fields:

    - ``n_levels``: L, number of resolution levels (Instant-NGP: 16).
    - ``n_features``: F, features per vertex and level (1, 2, 4 or 8; Instant-NGP: 2).
    - ``log2_table_size``: T, at most ``2^T`` rows per level (Instant-NGP: 14-24, 19 typical).
    - ``base_resolution``: N_min, cells per axis at the coarsest level (16).
    - ``max_resolution``: N_max, cells per axis at the finest level; sets the growth factor
      ``b = exp((ln N_max - ln N_min) / (L - 1))`` unless ``per_level_scale`` is given.
    - ``per_level_scale``: b, the growth factor between levels (overrides ``max_resolution``).
    - ``init_scale``: half-width of the uniform initialisation of the table.
    - ``backend``: ``"auto"`` (fast CPU kernel when it applies, else PyTorch), ``"torch"``
      (always the pure-PyTorch reference) or ``"fast"`` (require the fast kernel).
    """

    type_name = "HashGrid"
    n_levels: int = 16
    n_features: int = 2
    log2_table_size: int = 19
    base_resolution: int = 16
    max_resolution: int = 2048
    per_level_scale: float | None = None
    init_scale: float = 1e-4
    backend: str = "auto"

    def out_dim(self, in_dim: int) -> int:
        return self.n_levels * self.n_features

    def layout(self, in_dim: int) -> GridLayout:
        res = level_resolutions(self.n_levels, self.base_resolution, self.max_resolution, self.per_level_scale)
        return GridLayout.build(in_dim, self.n_features, res, self.log2_table_size)

    def build(self, in_dim: int) -> GridEncoding:
        check(in_dim in (1, 2, 3, 4), f"HashGrid supports 1-4 input dimensions, got {in_dim}")
        check(self.n_features in (1, 2, 4, 8), f"HashGrid n_features must be 1, 2, 4 or 8, got {self.n_features}")
        check(self.backend in ("auto", "torch", "fast"), f"HashGrid backend must be auto|torch|fast, got {self.backend!r}")
        return GridEncoding(self, in_dim, self.layout(in_dim), self.init_scale, self.backend)


@dataclasses.dataclass(frozen=True)
class DenseGridConfig(EncodingConfig):
    """A single dense grid of ``resolution`` cells per axis (``(resolution + 1)^d`` vertices),
    ``n_features`` features per vertex, multilinear interpolation (Plenoxels/DVGO style).

    Fields: ``resolution``, ``n_features``, ``init_scale`` (uniform init half-width),
    ``backend`` as for :class:`HashGridConfig`.
    """

    type_name = "DenseGrid"
    resolution: int = 128
    n_features: int = 4
    init_scale: float = 1e-4
    backend: str = "auto"

    def out_dim(self, in_dim: int) -> int:
        return self.n_features

    def layout(self, in_dim: int) -> GridLayout:
        rows = (self.resolution + 1) ** in_dim
        return GridLayout(in_dim, self.n_features, (self.resolution,), (rows,), (False,))

    def build(self, in_dim: int) -> GridEncoding:
        check(in_dim in (1, 2, 3, 4), f"DenseGrid supports 1-4 input dimensions, got {in_dim}")
        check(self.n_features in (1, 2, 4, 8), f"DenseGrid n_features must be 1, 2, 4 or 8, got {self.n_features}")
        return GridEncoding(self, in_dim, self.layout(in_dim), self.init_scale, self.backend)


class GridEncoding(Encoding):
    """Grid encoding over ``[-1, 1]^d`` backed by one flat table ``[rows, F]``."""

    def __init__(self, config: EncodingConfig, in_dim: int, layout: GridLayout, init_scale: float, backend: str) -> None:
        super().__init__(config, in_dim)
        self.layout = layout
        self.backend = backend
        table = torch.empty(layout.n_rows, layout.n_features).uniform_(-init_scale, init_scale)
        self.table = nn.Parameter(table)

    def encode(self, x: Tensor) -> Tensor:
        from fieldcraft.encodings.dispatch import grid_encode

        u = (x + 1.0) * 0.5
        return grid_encode(u, self.table, self.layout, self.backend)

    def extra_repr(self) -> str:
        n_hashed = sum(self.layout.hashed)
        return (f"in_dim={self.in_dim}, out_dim={self.out_dim}, levels={self.layout.n_levels} "
                f"({n_hashed} hashed), resolutions={self.layout.resolutions[0]}..{self.layout.resolutions[-1]}, "
                f"rows={self.layout.n_rows}")
