"""A hypernetwork into a functa's latent space: a small CNN mapping an image to its latent in one
forward pass (amortised encoding; the inner loop of :mod:`.functa` is the optimisation-based one).

::

    [B, H, W, C] -> conv3x3(C -> c) ReLU -> conv3x3 stride 2 (c -> 2c) ReLU -> conv3x3 stride 2 (2c -> 2c) ReLU
                 -> adaptive average pool to 4x4 -> linear(32c -> hidden) ReLU -> linear(hidden -> latent)

It is trained (by :func:`fieldcraft.tasks.functa.fit_functa_encoder`) to minimise the
reconstruction error through the frozen functa, not to match inner-loop latents.
"""

from __future__ import annotations

import dataclasses

from jaxtyping import Float
from torch import Tensor, nn

from fieldcraft.config import Config


@dataclasses.dataclass(frozen=True)
class CnnEncoderConfig(Config):
    """``channels``: image channels; ``latent``: output size; ``features``: ``c`` above; ``hidden``: the MLP head's width."""

    type_name = "CnnEncoder"
    channels: int = 1
    latent: int = 64
    features: int = 32
    hidden: int = 256

    def build(self) -> CnnEncoder:
        return CnnEncoder(self)


class CnnEncoder(nn.Module):
    def __init__(self, config: CnnEncoderConfig) -> None:
        super().__init__()
        self.config = config
        c = config.features
        self.convs = nn.Sequential(
            nn.Conv2d(config.channels, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * c * 16, config.hidden), nn.ReLU(),
                                  nn.Linear(config.hidden, config.latent))

    def forward(self, images: Float[Tensor, "B H W C"]) -> Float[Tensor, "B latent"]:
        return self.head(self.convs(images.permute(0, 3, 1, 2)))
