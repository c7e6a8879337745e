"""Fully connected coordinate networks (MLPs) with ReLU, SIREN sine, Gaussian or tanh
hidden activations.

SIREN initialisation (Sitzmann et al. 2020, sec. 3.2): with the sine activation
``sin(omega_0 (W x + b))``, the first layer's weights are ``U(-1/n, 1/n)`` and every later
layer's ``U(-sqrt(6/n)/omega_h, sqrt(6/n)/omega_h)`` (``n`` = fan-in, ``omega_h`` = the hidden
``omega_0``); biases keep PyTorch's default. Other activations use PyTorch's default
``nn.Linear`` initialisation.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from jaxtyping import Float
from torch import Tensor, nn

from fieldcraft.config import Config
from fieldcraft.errors import check
from fieldcraft.networks.activations import OUTPUT_ACTIVATIONS, Gaussian, Sine, output_activation

ACTIVATIONS = ("relu", "sine", "gaussian", "tanh")


@dataclasses.dataclass(frozen=True)
class MLPConfig(Config):
    """Fields:

    - ``hidden_width``: neurons per hidden layer.
    - ``hidden_layers``: number of hidden layers (so ``hidden_layers + 1`` linear layers).
    - ``activation``: ``relu`` | ``sine`` | ``gaussian`` | ``tanh``.
    - ``output_activation``: ``none`` | ``sigmoid`` | ``relu`` | ``softplus`` | ``exp`` | ``tanh``.
    - ``first_omega_0``, ``hidden_omega_0``: SIREN frequency factors (paper: 30, 30).
    - ``gaussian_a``: width ``a`` of the Gaussian activation ``exp(-x^2 / 2a^2)``.
    - ``bias``: whether linear layers have biases.
    """

    type_name = "MLP"
    hidden_width: int = 64
    hidden_layers: int = 2
    activation: str = "relu"
    output_activation: str = "none"
    first_omega_0: float = 30.0
    hidden_omega_0: float = 30.0
    gaussian_a: float = 0.1
    bias: bool = True

    def build(self, in_dim: int, out_dim: int) -> MLP:
        check(self.activation in ACTIVATIONS, f"unknown activation {self.activation!r} (use {'|'.join(ACTIVATIONS)})")
        check(self.output_activation in OUTPUT_ACTIVATIONS,
              f"unknown output activation {self.output_activation!r} (use {'|'.join(OUTPUT_ACTIVATIONS)})")
        check(self.hidden_layers >= 0 and self.hidden_width > 0, "MLP needs hidden_layers >= 0 and hidden_width > 0")
        return MLP(self, in_dim, out_dim)


class MLP(nn.Module):
    """``[..., in_dim] -> [..., out_dim]``: ``hidden_layers`` activated layers, then a linear
    output layer and the output activation."""

    def __init__(self, config: MLPConfig, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.config, self.in_dim, self.out_dim = config, int(in_dim), int(out_dim)
        widths = [in_dim] + [config.hidden_width] * config.hidden_layers + [out_dim]
        self.linears = nn.ModuleList(nn.Linear(a, b, bias=config.bias) for a, b in zip(widths[:-1], widths[1:]))
        self.activations = nn.ModuleList(self._activation(i) for i in range(config.hidden_layers))
        self.out_activation = output_activation(config.output_activation)
        if config.activation == "sine":
            self._siren_init()

    def _activation(self, index: int) -> nn.Module:
        c = self.config
        if c.activation == "sine":
            return Sine(c.first_omega_0 if index == 0 else c.hidden_omega_0)
        if c.activation == "gaussian":
            return Gaussian(c.gaussian_a)
        return nn.ReLU() if c.activation == "relu" else nn.Tanh()

    @torch.no_grad()
    def _siren_init(self) -> None:
        for i, lin in enumerate(self.linears):
            n = lin.in_features
            bound = 1.0 / n if i == 0 else math.sqrt(6.0 / n) / self.config.hidden_omega_0
            lin.weight.uniform_(-bound, bound)

    def forward(self, x: Float[Tensor, "*batch in_dim"]) -> Float[Tensor, "*batch out_dim"]:
        for lin, act in zip(self.linears[:-1], self.activations):
            x = act(lin(x))
        return self.out_activation(self.linears[-1](x))
