"""A neural field = encoding + network, built from one :class:`FieldConfig`.

``Field(x) = network(encoding(x))`` maps ``[..., in_dim]`` coordinates in ``[-1, 1]`` to
``[..., out_dim]`` values. Fields know nothing about the forward model that consumes them
(rendering, line integrals, identity); tasks wire them up.
"""

from __future__ import annotations

import dataclasses

from jaxtyping import Float
from torch import Tensor, nn

from fieldcraft.config import Config
from fieldcraft.encodings import EncodingConfig, IdentityEncodingConfig
from fieldcraft.networks import MLPConfig


@dataclasses.dataclass(frozen=True)
class FieldConfig(Config):
    """Fields:

    - ``in_dim``, ``out_dim``: coordinate and value dimensions.
    - ``encoding``: any :class:`~fieldcraft.encodings.EncodingConfig`.
    - ``network``: an :class:`MLPConfig`.
    - ``output_scale``, ``output_offset``: values = network output * scale + offset. SIREN fits
      signals normalised to ``[-1, 1]``; scale 0.5 and offset 0.5 give ``[0, 1]`` values while
      the network sees the paper's range (its zero-mean output needs no large bias).
    """

    type_name = "Field"
    in_dim: int = 2
    out_dim: int = 3
    encoding: EncodingConfig = dataclasses.field(default_factory=IdentityEncodingConfig)
    network: MLPConfig = dataclasses.field(default_factory=MLPConfig)
    output_scale: float = 1.0
    output_offset: float = 0.0

    def build(self) -> Field:
        return Field(self)


class Field(nn.Module):
    def __init__(self, config: FieldConfig) -> None:
        super().__init__()
        self.config = config
        self.in_dim, self.out_dim = config.in_dim, config.out_dim
        self.encoding = config.encoding.build(config.in_dim)
        self.network = config.network.build(self.encoding.out_dim, config.out_dim)

    def forward(self, x: Float[Tensor, "*batch in_dim"]) -> Float[Tensor, "*batch out_dim"]:
        y = self.network(self.encoding(x))
        if self.config.output_scale != 1.0 or self.config.output_offset != 0.0:
            y = y * self.config.output_scale + self.config.output_offset
        return y
