"""Per-image appearance: a radiance field whose colour also depends on a learned code per
training image (NeRF in the Wild's appearance embedding, nerfacto's ``appearance_embed_dim``).

Phone captures change exposure and white balance from photo to photo; a code per image lets the
colour MLP explain those changes instead of painting them into the scene. The colour MLP of
:class:`~fieldcraft.fields.radiance.RadianceField` gets ``dim`` more inputs:
``rgb = colour MLP([features, direction encoding(d), code(image)])``. Views that were not trained
on (held-out frames, rendered paths) use the mean code of the training images (nerfstudio's
``use_average_appearance_embedding``). Codes start at zero, so before training every image
looks the same.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from fieldcraft.fields.radiance import RadianceField, RadianceFieldConfig


class AppearanceField(RadianceField):
    """A :class:`RadianceField` (with a colour MLP) plus ``codes``: an ``[n_images, dim]`` embedding.

    >>> from fieldcraft.encodings import FrequencyEncodingConfig
    >>> f = AppearanceField(RadianceFieldConfig(position_encoding=FrequencyEncodingConfig(n_frequencies=2)),
    ...                     torch.tensor([[-1.0] * 3, [1.0] * 3]), n_images=5, dim=4)
    >>> sigma, rgb = f(torch.zeros(2, 3), None, torch.tensor([0, 4]))
    >>> tuple(sigma.shape), tuple(rgb.shape), tuple(f.codes.weight.shape)
    ((2,), (2, 3), (5, 4))
    """

    def __init__(self, config: RadianceFieldConfig, aabb: Tensor, n_images: int, dim: int) -> None:
        super().__init__(config, aabb)
        if self.color is None:
            raise ValueError("an appearance code needs a colour MLP (color_layers >= 0)")
        self.codes = nn.Embedding(max(int(n_images), 1), dim)
        nn.init.zeros_(self.codes.weight)
        d_in = config.n_features + (self.direction_encoding.out_dim if self.direction_encoding is not None else 0)
        self.color = config.color_network().build(d_in + dim, 3)

    def code(self, camera: Int[Tensor, " n"] | None, n: int) -> Float[Tensor, "n dim"]:
        """The codes of ``camera`` (training image indices), or the mean code for each of ``n`` points."""
        if camera is None:
            return self.codes.weight.mean(0, keepdim=True).expand(n, -1)
        return self.codes(camera)

    def forward(self, x: Float[Tensor, "n 3"], d: Float[Tensor, "n 3"] | None = None,
                camera: Int[Tensor, " n"] | None = None, encoded: Float[Tensor, "n e"] | None = None
                ) -> tuple[Float[Tensor, " n"], Float[Tensor, "n 3"]]:
        sigma, feat = self._trunk(x, encoded)
        parts = [feat] if self.direction_encoding is None else [feat, self.direction_encoding(d)]
        return sigma, self.color(torch.cat([*parts, self.code(camera, len(x)).to(feat.dtype)], -1))
