"""Coordinate networks: :class:`MLPConfig` builds an :class:`MLP` with ReLU, sine (SIREN),
Gaussian or tanh activations, optional input skips; :mod:`.functional` evaluates networks
with weights passed in (one set, or one per signal) — see :meth:`MLP.forward`."""

from fieldcraft.networks.activations import Gaussian, Sine
from fieldcraft.networks.functional import stack_params
from fieldcraft.networks.mlp import MLP, MLPConfig

__all__ = ["MLP", "Gaussian", "MLPConfig", "Sine", "stack_params"]
