"""The encoding interface: coordinates in, feature vectors out.

An :class:`Encoding` is an ``nn.Module`` with integer ``in_dim`` and ``out_dim`` and a
``forward`` mapping ``[..., in_dim]`` to ``[..., out_dim]``. Every encoding is built from
an :class:`EncodingConfig` by ``config.build(in_dim)``; the config carries everything
needed to rebuild it (random matrices are saved as buffers in the state dict).

Coordinate convention: inputs live in ``[-1, 1]^in_dim`` (pixel centres of an image,
points of a shape normalised into the unit cube, points of a scene box). Periodic
encodings accept any real input; grid encodings clamp points outside the domain to its
boundary (documented per encoding).
"""

from __future__ import annotations

import dataclasses

import torch
from jaxtyping import Float
from torch import Tensor, nn

from fieldcraft.config import Config


@dataclasses.dataclass(frozen=True)
class EncodingConfig(Config):
    """Base class of encoding configs."""

    def build(self, in_dim: int) -> Encoding:
        raise NotImplementedError

    def out_dim(self, in_dim: int) -> int:
        """Feature dimension of the encoding for ``in_dim`` inputs."""
        raise NotImplementedError


class Encoding(nn.Module):
    """Maps coordinates ``[..., in_dim]`` to features ``[..., out_dim]``."""

    in_dim: int
    out_dim: int
    config: EncodingConfig

    def __init__(self, config: EncodingConfig, in_dim: int) -> None:
        super().__init__()
        self.config = config
        self.in_dim = int(in_dim)
        self.out_dim = int(config.out_dim(in_dim))

    def forward(self, x: Float[Tensor, "*batch in_dim"]) -> Float[Tensor, "*batch out_dim"]:
        batch = x.shape[:-1]
        y = self.encode(x.reshape(-1, self.in_dim))
        return y.reshape(*batch, self.out_dim)

    def encode(self, x: Float[Tensor, "n in_dim"]) -> Float[Tensor, "n out_dim"]:
        """Encode a flat batch; subclasses implement this."""
        raise NotImplementedError

    def reattach(self, x: Float[Tensor, "n in_dim"], encoded: Float[Tensor, "n out_dim"]) -> Float[Tensor, "n out_dim"]:
        """The features of ``x``, whose values ``encoded`` were computed earlier without a graph
        (a no-grad pass over the same points), now differentiable in the encoding's parameters.
        The default computes them again; encodings whose backward needs only ``x`` (grids)
        attach ``encoded`` to the graph without recomputing it."""
        return self(x) if torch.is_grad_enabled() else encoded

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}"


def to_unit(x: Tensor) -> Tensor:
    """Map ``[-1, 1]`` coordinates to ``[0, 1]`` and clamp to it."""
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)

