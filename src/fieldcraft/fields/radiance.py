"""Radiance fields (NeRF): position -> density and colour, colour also depending on view direction.

::

    x in scene box --(to [-1, 1], or as is)--> position encoding --> trunk MLP --> [raw density, features]
    sigma = activation(raw density + density_bias)
    rgb   = sigmoid(colour MLP([features, direction encoding(d)]))      (colour MLP present)
          = sigmoid(features[:3])                                         (no colour MLP, tiny-NeRF)

Trunk and colour MLP are :class:`~fieldcraft.networks.MLP` s (:meth:`RadianceFieldConfig.trunk_network`,
:meth:`RadianceFieldConfig.color_network`): the trunk a ReLU MLP with optional skip
connections (the encoded position is concatenated to the input of the listed hidden layers,
NeRF's layer 5), the colour MLP a ReLU MLP with a sigmoid output. Presets in
:func:`fieldcraft.tasks.nerf.nerf_config`.
"""

from __future__ import annotations

import dataclasses

import torch
from jaxtyping import Float
from torch import Tensor, nn

from fieldcraft.config import Config
from fieldcraft.encodings import EncodingConfig, FourierFeaturesConfig, FrequencyEncodingConfig, IdentityEncodingConfig
from fieldcraft.errors import check
from fieldcraft.networks import MLPConfig

DENSITY_ACTIVATIONS = ("trunc_exp", "relu", "softplus")
POSITIONS = ("box", "world")
INITS = ("torch", "glorot")
WORLD_ENCODINGS = (FrequencyEncodingConfig, FourierFeaturesConfig, IdentityEncodingConfig)


@dataclasses.dataclass(frozen=True)
class RadianceFieldConfig(Config):
    """Fields:

    - ``position_encoding``: encoding of positions (normalised to ``[-1, 1]^3`` over the scene box).
    - ``trunk_width``, ``trunk_layers``: hidden width and number of hidden layers of the trunk.
    - ``skips``: trunk hidden layers (0-based, each ``0 < i < trunk_layers``) whose input gets the
      encoded position concatenated (``MLPConfig.skips``).
    - ``n_features``: features passed to the colour MLP (tiny-NeRF: 3, the colour itself).
    - ``direction_encoding``: encoding of unit view directions, or None (no view dependence).
    - ``color_width``, ``color_layers``: colour MLP hidden width and layers; ``color_layers < 0``
      means no colour MLP (``rgb = sigmoid(features[:3])``).
    - ``density_activation``: ``trunc_exp`` (Instant-NGP), ``relu`` (NeRF) or ``softplus``.
    - ``density_bias``: added to the raw density before the activation.
    - ``positions``: what the position encoding sees: ``box`` (normalised to ``[-1, 1]^3`` over the
      scene box) or ``world`` (world coordinates as they are; the tiny-NeRF notebook).
    - ``init``: linear-layer initialisation of both MLPs (``MLPConfig.init``): ``torch`` (PyTorch's
      default, as nerf-pytorch) or ``glorot`` (Glorot-uniform weights, zero biases: Keras' default,
      as the TensorFlow NeRF code).
    """

    type_name = "RadianceField"
    position_encoding: EncodingConfig = dataclasses.field(default_factory=FrequencyEncodingConfig)
    trunk_width: int = 64
    trunk_layers: int = 1
    skips: tuple[int, ...] = ()
    n_features: int = 15
    direction_encoding: EncodingConfig | None = None
    color_width: int = 64
    color_layers: int = 2
    density_activation: str = "trunc_exp"
    density_bias: float = 0.0
    positions: str = "box"
    init: str = "torch"

    def build(self, aabb: Tensor) -> RadianceField:
        check(self.density_activation in DENSITY_ACTIVATIONS,
              f"unknown density activation {self.density_activation!r} (use {'|'.join(DENSITY_ACTIVATIONS)})")
        check(self.positions in POSITIONS, f"unknown positions {self.positions!r} (use {'|'.join(POSITIONS)})")
        check(self.positions == "box" or isinstance(self.position_encoding, WORLD_ENCODINGS),
              "positions='world' needs a frequency, Fourier-feature or identity encoding (grids index [-1, 1]^3)")
        check(self.init in INITS, f"unknown init {self.init!r} (use {'|'.join(INITS)})")
        check(self.color_layers >= 0 or self.n_features >= 3, "without a colour MLP the field needs n_features >= 3")
        return RadianceField(self, aabb)

    def trunk_network(self) -> MLPConfig:
        """The trunk: ``trunk_layers`` ReLU layers of ``trunk_width`` with ``skips``, then a linear
        layer to ``[raw density, n_features features]``."""
        return MLPConfig(hidden_width=self.trunk_width, hidden_layers=self.trunk_layers, activation="relu",
                         skips=self.skips, init=self.init)

    def color_network(self) -> MLPConfig:
        """The colour MLP (when ``color_layers >= 0``): ``color_layers`` ReLU layers of
        ``color_width``, then a linear layer to RGB and a sigmoid."""
        return MLPConfig(hidden_width=self.color_width, hidden_layers=self.color_layers, activation="relu",
                         output_activation="sigmoid", init=self.init)


class _TruncExp(torch.autograd.Function):
    """``exp(x)`` with the gradient's exponent clamped at 15 (torch-ngp), avoiding overflow."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: Tensor) -> Tensor:
    return _TruncExp.apply(x)


def density_activation(raw: Float[Tensor, "*n"], name: str) -> Float[Tensor, "*n"]:
    """Density from its raw value: ``trunc_exp`` | ``relu`` | ``softplus``."""
    if name == "trunc_exp":
        return trunc_exp(raw)
    return torch.relu(raw) if name == "relu" else nn.functional.softplus(raw)


class RadianceField(nn.Module):
    """``density(x) -> sigma [n]`` and ``forward(x, d) -> (sigma [n], rgb [n, 3])`` on world points;
    both take ``encoded=`` :meth:`encode` ``(x)`` from an earlier no-grad pass to skip encoding again.

    Modules: ``position_encoding``, ``trunk`` (an :class:`~fieldcraft.networks.MLP`,
    :meth:`RadianceFieldConfig.trunk_network`), ``direction_encoding`` (or None) and ``color``
    (an MLP, :meth:`RadianceFieldConfig.color_network`, or None); buffer ``aabb`` ``[2, 3]``.
    """

    def __init__(self, config: RadianceFieldConfig, aabb: Tensor) -> None:
        super().__init__()
        c = self.config = config
        self.register_buffer("aabb", aabb.clone().float())
        self.position_encoding = c.position_encoding.build(3)
        self.trunk = c.trunk_network().build(self.position_encoding.out_dim, 1 + c.n_features)
        self.direction_encoding = c.direction_encoding.build(3) if c.direction_encoding is not None else None
        self.color = None
        if c.color_layers >= 0:
            d_in = c.n_features + (self.direction_encoding.out_dim if self.direction_encoding is not None else 0)
            self.color = c.color_network().build(d_in, 3)

    def normalize(self, x: Float[Tensor, "n 3"]) -> Float[Tensor, "n 3"]:
        """World points to ``[-1, 1]^3`` over the scene box."""
        return (x - self.aabb[0]) / (self.aabb[1] - self.aabb[0]) * 2.0 - 1.0

    def _inputs(self, x: Float[Tensor, "n 3"]) -> Float[Tensor, "n 3"]:
        return self.normalize(x) if self.config.positions == "box" else x

    def encode(self, x: Float[Tensor, "n 3"]) -> Float[Tensor, "n e"]:
        """The position encoding of world points ``x`` (what the trunk sees)."""
        return self.position_encoding(self._inputs(x))

    def _trunk(self, x: Float[Tensor, "n 3"], encoded: Float[Tensor, "n e"] | None = None
               ) -> tuple[Float[Tensor, " n"], Float[Tensor, "n n_features"]]:
        """Density and features; ``encoded``: :meth:`encode` of ``x`` computed earlier without a graph
        (a no-grad pass over the same points), reused instead of encoding again
        (:meth:`~fieldcraft.encodings.base.Encoding.reattach`)."""
        xi = self._inputs(x)
        h = self.position_encoding(xi) if encoded is None else self.position_encoding.reattach(xi, encoded)
        out = self.trunk(h)
        return density_activation(out[..., 0] + self.config.density_bias, self.config.density_activation), out[..., 1:]

    def density(self, x: Float[Tensor, "n 3"], encoded: Float[Tensor, "n e"] | None = None) -> Float[Tensor, " n"]:
        return self._trunk(x, encoded)[0]

    def forward(self, x: Float[Tensor, "n 3"], d: Float[Tensor, "n 3"] | None = None,
                encoded: Float[Tensor, "n e"] | None = None) -> tuple[Float[Tensor, " n"], Float[Tensor, "n 3"]]:
        sigma, feat = self._trunk(x, encoded)
        if self.color is None:
            return sigma, torch.sigmoid(feat[..., :3])
        h = feat if self.direction_encoding is None else torch.cat([feat, self.direction_encoding(d)], -1)
        return sigma, self.color(h)
