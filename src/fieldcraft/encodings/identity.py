"""Identity encoding: the coordinates themselves (SIREN uses this)."""

from __future__ import annotations

import dataclasses

from torch import Tensor

from fieldcraft.encodings.base import Encoding, EncodingConfig


@dataclasses.dataclass(frozen=True)
class IdentityEncodingConfig(EncodingConfig):
    """No parameters: ``out_dim == in_dim``."""

    type_name = "Identity"

    def out_dim(self, in_dim: int) -> int:
        return in_dim

    def build(self, in_dim: int) -> IdentityEncoding:
        return IdentityEncoding(self, in_dim)


class IdentityEncoding(Encoding):
    def encode(self, x: Tensor) -> Tensor:
        return x
