"""Composite encoding: encode different input dimensions with different encodings
(tiny-cuda-nn's "Composite"), e.g. a hash grid on (x, y, z) and a frequency encoding on t.
Outputs are concatenated in the order of ``parts``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from fieldcraft.config import Config
from fieldcraft.encodings.base import Encoding, EncodingConfig
from fieldcraft.errors import check


@dataclasses.dataclass(frozen=True)
class CompositePart(Config):
    """``dims``: the input dimensions (indices) this part reads; ``encoding``: its config."""

    type_name = "CompositePart"
    dims: tuple[int, ...] = (0,)
    encoding: EncodingConfig = None  # type: ignore[assignment]


@dataclasses.dataclass(frozen=True)
class CompositeEncodingConfig(EncodingConfig):
    """``parts``: the sub-encodings; every input dimension must be read by at least one part."""

    type_name = "Composite"
    parts: tuple[CompositePart, ...] = ()

    def out_dim(self, in_dim: int) -> int:
        return sum(p.encoding.out_dim(len(p.dims)) for p in self.parts)

    def build(self, in_dim: int) -> CompositeEncoding:
        used = {d for p in self.parts for d in p.dims}
        check(used == set(range(in_dim)), f"Composite parts read dims {sorted(used)}, expected all of 0..{in_dim - 1}")
        return CompositeEncoding(self, in_dim)


class CompositeEncoding(Encoding):
    config: CompositeEncodingConfig

    def __init__(self, config: CompositeEncodingConfig, in_dim: int) -> None:
        super().__init__(config, in_dim)
        self.parts = nn.ModuleList(p.encoding.build(len(p.dims)) for p in config.parts)
        self._dims = [list(p.dims) for p in config.parts]

    def encode(self, x: Tensor) -> Tensor:
        return torch.cat([enc(x[:, dims]) for enc, dims in zip(self.parts, self._dims)], dim=-1)
