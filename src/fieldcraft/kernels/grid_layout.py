"""Static layout of a multiresolution grid (levels, table rows, hashing), without PyTorch.

The math is described in :mod:`fieldcraft.encodings.grid`; this module only holds what both the
PyTorch encoding and the torch-free kernels (:mod:`fieldcraft.kernels.grid`) need.
"""

from __future__ import annotations

import dataclasses
import math

PRIMES = (1, 2654435761, 805459861, 3674653429)


@dataclasses.dataclass(frozen=True)
class GridLayout:
    """Static description of a multiresolution grid (no parameters).

    ``resolutions[l]`` is ``N_l`` (cells per axis), ``sizes[l]`` the number of table rows of
    level ``l``, ``hashed[l]`` whether the level uses the spatial hash, ``offsets[l]`` the
    first row of level ``l`` in the flat table.
    """

    dim: int
    n_features: int
    resolutions: tuple[int, ...]
    sizes: tuple[int, ...]
    hashed: tuple[bool, ...]

    @property
    def n_levels(self) -> int:
        return len(self.resolutions)

    @property
    def offsets(self) -> tuple[int, ...]:
        out, acc = [], 0
        for s in self.sizes:
            out.append(acc)
            acc += s
        return tuple(out)

    @property
    def n_rows(self) -> int:
        return sum(self.sizes)

    @staticmethod
    def build(dim: int, n_features: int, resolutions: tuple[int, ...], log2_table_size: int) -> GridLayout:
        cap = 2**log2_table_size
        sizes, hashed = [], []
        for n in resolutions:
            dense_rows = (n + 1) ** dim
            if dense_rows <= cap:
                sizes.append(dense_rows)
                hashed.append(False)
            else:
                sizes.append(cap)
                hashed.append(True)
        return GridLayout(dim, n_features, tuple(resolutions), tuple(sizes), tuple(hashed))


def level_resolutions(n_levels: int, base_resolution: int, max_resolution: int | None = None,
                      per_level_scale: float | None = None) -> tuple[int, ...]:
    """Instant-NGP level resolutions ``N_l = floor(N_min * b^l)``.

    ``b`` is ``per_level_scale`` if given, else ``exp((ln N_max - ln N_min) / (L - 1))``.

    >>> level_resolutions(4, 16, 128)
    (16, 32, 64, 128)
    """
    if per_level_scale is None:
        if max_resolution is None or n_levels == 1:
            per_level_scale = 1.0
        else:
            per_level_scale = math.exp((math.log(max_resolution) - math.log(base_resolution)) / (n_levels - 1))
    # the small epsilon keeps exact powers (16 * 2**3 = 128) from flooring to 127
    return tuple(int(math.floor(base_resolution * per_level_scale**l + 1e-6)) for l in range(n_levels))


def hash_grid_layout(in_dim: int, n_levels: int, n_features: int, log2_table_size: int, base_resolution: int,
                     max_resolution: int | None, per_level_scale: float | None = None) -> GridLayout:
    """Layout of an Instant-NGP hash grid (the fields of ``HashGridConfig``)."""
    res = level_resolutions(n_levels, base_resolution, max_resolution, per_level_scale)
    return GridLayout.build(in_dim, n_features, res, log2_table_size)


def dense_grid_layout(in_dim: int, resolution: int, n_features: int) -> GridLayout:
    """Layout of a single dense level of ``resolution`` cells per axis (``DenseGridConfig``)."""
    return GridLayout(in_dim, n_features, (resolution,), ((resolution + 1) ** in_dim,), (False,))
