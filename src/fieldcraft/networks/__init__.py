"""Coordinate networks: :class:`MLPConfig` builds an :class:`MLP` with ReLU, sine (SIREN),
Gaussian or tanh activations."""

from fieldcraft.networks.activations import Gaussian, Sine
from fieldcraft.networks.mlp import MLP, MLPConfig

__all__ = ["MLP", "Gaussian", "MLPConfig", "Sine"]
