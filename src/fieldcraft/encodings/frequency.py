"""NeRF positional encoding (Mildenhall et al. 2020, eq. 4).

``gamma(p) = (p?, sin(2^0 pi p), cos(2^0 pi p), ..., sin(2^(L-1) pi p), cos(2^(L-1) pi p))``
applied to every coordinate. Output layout: ``[identity (in_dim)] + [sin (in_dim * L)] +
[cos (in_dim * L)]``, the sin/cos blocks ordered frequency-major (all coordinates at
frequency 0, then at frequency 1, ...).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from fieldcraft.encodings.base import Encoding, EncodingConfig


@dataclasses.dataclass(frozen=True)
class FrequencyEncodingConfig(EncodingConfig):
    """Fields:

    - ``n_frequencies``: L, the number of octaves (NeRF: 10 for positions, 4 for directions).
    - ``include_input``: prepend the raw coordinates (NeRF does).
    - ``pi_scale``: multiply by pi (``sin(2^k pi p)``, the paper's form); False gives ``sin(2^k p)``
      as in the NeRF reference code.
    """

    type_name = "Frequency"
    n_frequencies: int = 10
    include_input: bool = True
    pi_scale: bool = True

    def out_dim(self, in_dim: int) -> int:
        return in_dim * (2 * self.n_frequencies + int(self.include_input))

    def build(self, in_dim: int) -> FrequencyEncoding:
        return FrequencyEncoding(self, in_dim)


class FrequencyEncoding(Encoding):
    config: FrequencyEncodingConfig

    def __init__(self, config: FrequencyEncodingConfig, in_dim: int) -> None:
        super().__init__(config, in_dim)
        scale = math.pi if config.pi_scale else 1.0
        freqs = scale * 2.0 ** torch.arange(config.n_frequencies, dtype=torch.float32)
        self.register_buffer("frequencies", freqs, persistent=False)

    def encode(self, x: Tensor) -> Tensor:
        xb = (x[:, None, :] * self.frequencies.to(x.dtype)[None, :, None]).flatten(1)
        parts = [x] if self.config.include_input else []
        parts += [torch.sin(xb), torch.cos(xb)]
        return torch.cat(parts, dim=-1)
