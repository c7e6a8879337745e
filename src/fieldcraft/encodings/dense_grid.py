"""Dense feature grid (Plenoxels / DVGO style): one level, every vertex stored.

Same interpolation and domain conventions as the hash grid (see
:mod:`fieldcraft.encodings.grid`), with no hashing.
"""

from __future__ import annotations

import dataclasses

from fieldcraft.encodings.base import EncodingConfig
from fieldcraft.encodings.grid import GridEncoding
from fieldcraft.errors import check
from fieldcraft.kernels.grid_layout import GridLayout, dense_grid_layout


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
        return dense_grid_layout(in_dim, self.resolution, self.n_features)

    def build(self, in_dim: int) -> GridEncoding:
        check(in_dim in (1, 2, 3, 4), f"DenseGrid supports 1-4 input dimensions, got {in_dim}")
        check(self.n_features in (1, 2, 4, 8), f"DenseGrid n_features must be 1, 2, 4 or 8, got {self.n_features}")
        return GridEncoding(self, in_dim, self.layout(in_dim), self.init_scale, self.backend)
