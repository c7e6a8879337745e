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

from fieldcraft.encodings.base import EncodingConfig
from fieldcraft.encodings.grid import GridEncoding
from fieldcraft.errors import check
from fieldcraft.kernels.grid_layout import GridLayout, hash_grid_layout


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
        return hash_grid_layout(in_dim, self.n_levels, self.n_features, self.log2_table_size, self.base_resolution,
                                self.max_resolution, self.per_level_scale)

    def build(self, in_dim: int) -> GridEncoding:
        check(in_dim in (1, 2, 3, 4), f"HashGrid supports 1-4 input dimensions, got {in_dim}")
        check(self.n_features in (1, 2, 4, 8), f"HashGrid n_features must be 1, 2, 4 or 8, got {self.n_features}")
        check(self.backend in ("auto", "torch", "fast"), f"HashGrid backend must be auto|torch|fast, got {self.backend!r}")
        return GridEncoding(self, in_dim, self.layout(in_dim), self.init_scale, self.backend)
