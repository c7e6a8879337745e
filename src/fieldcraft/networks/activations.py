"""Activations used by coordinate networks.

- ``relu``: max(0, x).
- ``sine``: ``sin(omega_0 x)`` (SIREN, Sitzmann et al. 2020). ``omega_0`` is applied inside
  the activation so the weights keep the paper's initialisation.
- ``gaussian``: ``exp(-x^2 / (2 a^2))`` (Ramasinghe & Lucey 2022, "Beyond Periodicity").
- ``tanh``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Sine(nn.Module):
    def __init__(self, omega_0: float = 30.0) -> None:
        super().__init__()
        self.omega_0 = float(omega_0)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.omega_0 * x)

    def extra_repr(self) -> str:
        return f"omega_0={self.omega_0}"


class Gaussian(nn.Module):
    def __init__(self, a: float = 0.1) -> None:
        super().__init__()
        self.a = float(a)

    def forward(self, x: Tensor) -> Tensor:
        return torch.exp(-0.5 * (x / self.a) ** 2)

    def extra_repr(self) -> str:
        return f"a={self.a}"


OUTPUT_ACTIVATIONS = ("none", "sigmoid", "relu", "softplus", "exp", "tanh")


def output_activation(name: str) -> nn.Module:
    """The activation applied to the network's output (``none`` for raw values)."""
    return {
        "none": nn.Identity(),
        "sigmoid": nn.Sigmoid(),
        "relu": nn.ReLU(),
        "softplus": nn.Softplus(),
        "tanh": nn.Tanh(),
        "exp": _Exp(),
    }[name]


class _Exp(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.exp(x)
