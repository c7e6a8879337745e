"""Fully connected coordinate networks (MLPs) with ReLU, SIREN sine, Gaussian or tanh
hidden activations, optional input skip connections, and a functional form: the same
network evaluated with weights passed in (one set, or one per signal of a batch) and with
per-layer modulations (functa shifts, FiLM).

::

    h_0 = x
    h_{i+1} = act_i(scale_i * (W_i [h_i, x?] + b_i) + shift_i)     i < hidden_layers  ([h_i, x] when i in skips)
    y = out_act(W_L [h_L, x?] + b_L)                                L = hidden_layers

Initialisations (``MLPConfig.init``), ``n`` = fan-in, ``m`` = fan-out of a linear layer:

| init | weights | biases |
|---|---|---|
| ``torch`` | ``U(-1/sqrt(n), 1/sqrt(n))`` (``nn.Linear``'s default) | ``U(-1/sqrt(n), 1/sqrt(n))`` |
| ``siren`` | first layer ``U(-1/n, 1/n)``, later ``U(-sqrt(6/n)/omega_h, sqrt(6/n)/omega_h)`` (Sitzmann et al. 2020, sec. 3.2) | as ``torch`` |
| ``glorot`` | ``U(-sqrt(6/(n+m)), sqrt(6/(n+m)))`` (Glorot & Bengio 2010; Keras' default) | 0 |
| ``auto`` | ``siren`` when the activation is ``sine``, else ``torch`` | |
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import torch
from jaxtyping import Float
from torch import Tensor, nn

from fieldcraft.config import Config
from fieldcraft.errors import FieldcraftError, check
from fieldcraft.networks.activations import OUTPUT_ACTIVATIONS, Gaussian, Sine, output_activation
from fieldcraft.networks.functional import batch_size, linear, uniform

ACTIVATIONS = ("relu", "sine", "gaussian", "tanh")
INITS = ("auto", "torch", "siren", "glorot")
MODULATIONS = ("scale", "shift")


@dataclasses.dataclass(frozen=True)
class MLPConfig(Config):
    """Fields:

    - ``hidden_width``: neurons per hidden layer.
    - ``hidden_layers``: number of hidden layers (so ``hidden_layers + 1`` linear layers,
      ``linears.0`` .. ``linears.{hidden_layers}``).
    - ``activation``: hidden activation, ``relu`` | ``sine`` | ``gaussian`` | ``tanh``.
    - ``output_activation``: ``none`` | ``sigmoid`` | ``relu`` | ``softplus`` | ``exp`` | ``tanh``.
    - ``first_omega_0``, ``hidden_omega_0``: SIREN frequency factors of the first and the later
      sine layers, ``sin(omega_0 x)`` (paper: 30, 30).
    - ``gaussian_a``: width ``a`` of the Gaussian activation ``exp(-x^2 / 2a^2)``.
    - ``bias``: whether linear layers have biases.
    - ``skips``: hidden layers (0-based, each ``0 < i < hidden_layers``) whose input gets the
      MLP's input concatenated after the previous layer's output, ``[h, x]`` (NeRF: layer 5 of 8).
      Linear layer ``i`` then has ``hidden_width + in_dim`` inputs.
    - ``init``: weight initialisation, ``auto`` | ``torch`` | ``siren`` | ``glorot`` (table in
      the module docstring).
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
    skips: tuple[int, ...] = ()
    init: str = "auto"

    @property
    def resolved_init(self) -> str:
        """``init`` with ``auto`` resolved: ``siren`` for the sine activation, else ``torch``."""
        if self.init != "auto":
            return self.init
        return "siren" if self.activation == "sine" else "torch"

    def build(self, in_dim: int, out_dim: int) -> MLP:
        check(self.activation in ACTIVATIONS, f"unknown activation {self.activation!r} (use {'|'.join(ACTIVATIONS)})")
        check(self.output_activation in OUTPUT_ACTIVATIONS,
              f"unknown output activation {self.output_activation!r} (use {'|'.join(OUTPUT_ACTIVATIONS)})")
        check(self.hidden_layers >= 0 and self.hidden_width > 0, "MLP needs hidden_layers >= 0 and hidden_width > 0")
        check(self.init in INITS, f"unknown init {self.init!r} (use {'|'.join(INITS)})")
        check(all(0 < s < self.hidden_layers for s in self.skips),
              f"MLP skips {list(self.skips)} must be hidden layers 1..{self.hidden_layers - 1}")
        return MLP(self, in_dim, out_dim)


def init_bounds(init: str, layer: int, fan_in: int, fan_out: int, hidden_omega_0: float) -> tuple[float, float]:
    """Half-widths ``(weight, bias)`` of the uniform initialisation of linear layer ``layer``
    for a resolved ``init`` (``torch`` | ``siren`` | ``glorot``; see the module docstring).

    >>> init_bounds("glorot", 0, 4, 2, 30.0)
    (1.0, 0.0)
    """
    torch_bound = 1.0 / math.sqrt(fan_in)
    if init == "siren":
        return (1.0 / fan_in if layer == 0 else math.sqrt(6.0 / fan_in) / hidden_omega_0), torch_bound
    if init == "glorot":
        return math.sqrt(6.0 / (fan_in + fan_out)), 0.0
    return torch_bound, torch_bound


class MLP(nn.Module):
    """``[..., in_dim] -> [..., out_dim]``: ``hidden_layers`` activated layers, then a linear
    output layer and the output activation (see the module docstring)."""

    def __init__(self, config: MLPConfig, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.config, self.in_dim, self.out_dim = config, int(in_dim), int(out_dim)
        c = config
        fan_in = [in_dim] + [c.hidden_width] * c.hidden_layers
        fan_in = [n + (in_dim if i in c.skips else 0) for i, n in enumerate(fan_in)]
        fan_out = [c.hidden_width] * c.hidden_layers + [out_dim]
        self.linears = nn.ModuleList(nn.Linear(a, b, bias=c.bias) for a, b in zip(fan_in, fan_out))
        self.activations = nn.ModuleList(self._activation(i) for i in range(c.hidden_layers))
        self.out_activation = output_activation(c.output_activation)
        self._skips = frozenset(c.skips)
        self._init_weights()

    def _activation(self, index: int) -> nn.Module:
        c = self.config
        if c.activation == "sine":
            return Sine(c.first_omega_0 if index == 0 else c.hidden_omega_0)
        if c.activation == "gaussian":
            return Gaussian(c.gaussian_a)
        return nn.ReLU() if c.activation == "relu" else nn.Tanh()

    def _bounds(self, index: int) -> tuple[float, float]:
        lin = self.linears[index]
        return init_bounds(self.config.resolved_init, index, lin.in_features, lin.out_features,
                           self.config.hidden_omega_0)

    @torch.no_grad()
    def _init_weights(self) -> None:
        """``nn.Linear`` starts with the ``torch`` initialisation; other inits redraw the
        weights and zero the biases whose bound is 0 (``glorot``)."""
        if self.config.resolved_init == "torch":
            return
        for i, lin in enumerate(self.linears):
            w_bound, b_bound = self._bounds(i)
            lin.weight.uniform_(-w_bound, w_bound)
            if lin.bias is not None and b_bound == 0.0:
                lin.bias.zero_()

    def batched_params(self, batch: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``batch`` independent initialisations of every parameter, drawn as the config's
        ``init`` draws them: ``{name: [batch, *param.shape]}`` with the names of
        ``named_parameters()``, leaf tensors requiring gradients, on the parameters' device and
        dtype (``generator`` must live on that device)."""
        out = {}
        for i, lin in enumerate(self.linears):
            w_bound, b_bound = self._bounds(i)
            out[f"linears.{i}.weight"] = uniform((batch, *lin.weight.shape), w_bound, lin.weight, generator)
            if lin.bias is not None:
                out[f"linears.{i}.bias"] = uniform((batch, *lin.bias.shape), b_bound, lin.bias, generator)
        return {name: p.requires_grad_() for name, p in out.items()}

    def forward(self, x: Float[Tensor, "*batch in_dim"], params: Mapping[str, Tensor] | None = None,
                modulations: Mapping[str, Tensor] | None = None) -> Float[Tensor, "*batch out_dim"]:
        """Evaluate the network, optionally with other weights and with modulations.

        - ``params``: a parameter dict (:mod:`fieldcraft.networks.functional`) with names as in
          ``named_parameters()`` (``linears.{i}.weight`` ``[out, in]`` / ``[B, out, in]``,
          ``linears.{i}.bias`` ``[out]`` / ``[B, out]``); names left out use the module's own.
        - ``modulations``: ``{"shift": phi, "scale": gamma}`` (either or both), each
          ``Float[Tensor, "hidden_layers hidden_width"]`` (shared by all points) or
          ``Float[Tensor, "B hidden_layers hidden_width"]`` (one per signal). Hidden layer ``i``
          computes ``act(gamma_i * (W_i h + b_i) + phi_i)``: shifts alone are functa's shift
          modulations (with ``sine``, ``sin(omega_0 (W h + b + phi))``), scale and shift FiLM.

        With batched params or modulations, ``x`` is ``Float[Tensor, "B n in_dim"]`` (shared
        coordinates: ``x.expand(B, -1, -1)``) and the output ``[B, n, out_dim]``, computed with
        batched matrix products; otherwise ``x`` is ``[..., in_dim]`` as for the module.
        """
        batch = self._batch(params, modulations)
        if batch is not None:
            check(x.dim() == 3 and x.shape[0] == batch,
                  f"weights or modulations for {batch} signals need points of shape [{batch}, n, dim], "
                  f"got {list(x.shape)} (points shared by all signals: x.expand({batch}, -1, -1))")
        params = params or {}
        modulations = modulations or {}
        h = x
        for i, lin in enumerate(self.linears):
            if i in self._skips:
                h = torch.cat([h, x], -1)
            h = linear(h, params.get(f"linears.{i}.weight", lin.weight), params.get(f"linears.{i}.bias", lin.bias))
            if i < len(self.activations):
                h = self.activations[i](modulate(h, i, modulations.get("scale"), modulations.get("shift")))
        return self.out_activation(h)

    def _batch(self, params: Mapping[str, Tensor] | None, modulations: Mapping[str, Tensor] | None) -> int | None:
        """The number of signals ``B`` that ``params`` and ``modulations`` batch over (None: unbatched)."""
        sizes = set()
        if params:
            sizes.add(batch_size(params, dict(self.named_parameters())))
        for name, m in (modulations or {}).items():
            check(name in MODULATIONS, f"unknown modulation {name!r} (use {' and/or '.join(MODULATIONS)})")
            want = (self.config.hidden_layers, self.config.hidden_width)
            check(m.dim() in (2, 3) and tuple(m.shape[-2:]) == want,
                  f"modulation {name!r} has shape {list(m.shape)}, expected [{want[0]}, {want[1]}] or [B, {want[0]}, "
                  f"{want[1]}] (hidden layers, hidden width)")
            sizes.add(m.shape[0] if m.dim() == 3 else None)
        sizes.discard(None)
        if len(sizes) > 1:
            raise FieldcraftError(f"params and modulations disagree on the number of signals: {sorted(sizes)}")
        return sizes.pop() if sizes else None


def modulate(h: Float[Tensor, "*b n width"], layer: int, scale: Float[Tensor, "*b layers width"] | None,
             shift: Float[Tensor, "*b layers width"] | None) -> Float[Tensor, "*b n width"]:
    """``scale[layer] * h + shift[layer]`` (each term optional), per signal when the
    modulations carry a leading batch dimension."""
    if scale is not None:
        h = h * _layer_term(scale, layer)
    if shift is not None:
        h = h + _layer_term(shift, layer)
    return h


def _layer_term(m: Float[Tensor, "*b layers width"], layer: int) -> Float[Tensor, "*b 1 width"]:
    term = m[..., layer, :]
    return term if m.dim() == 2 else term.unsqueeze(-2)  # [B, 1, W]: one vector per signal, for all its points
