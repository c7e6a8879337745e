"""A neural field = encoding + network, built from one :class:`FieldConfig`.

``Field(x) = network(encoding(x)) * output_scale + output_offset`` maps ``[..., in_dim]``
coordinates in ``[-1, 1]`` to ``[..., out_dim]`` values. Fields know nothing about the
forward model that consumes them (rendering, line integrals, identity); tasks wire them up.

A field is also a function of its weights: ``field(x, params, modulations)`` evaluates it
with a parameter dict named as ``field.named_parameters()`` (``network.linears.0.weight``,
``encoding.table``), unbatched or with a leading batch dimension ``B`` (one field per signal,
``x`` then ``[B, n, in_dim]``), and with the network's per-layer modulations (see
:meth:`fieldcraft.networks.MLP.forward`). Encodings without parameters (identity, frequency,
Fourier features) encode ``[B, n, in_dim]`` as they are; batched grid tables run the
PyTorch reference grid encoding under ``torch.vmap`` (no fast kernel); batched parameters of
other encodings with parameters (a composite holding grids) raise a
:class:`~fieldcraft.errors.FieldcraftError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from jaxtyping import Float
from torch import Tensor, nn
from torch.func import functional_call

from fieldcraft.config import Config
from fieldcraft.encodings import EncodingConfig, GridEncoding, IdentityEncodingConfig
from fieldcraft.encodings.grid import grid_encode_reference
from fieldcraft.errors import check
from fieldcraft.networks import MLPConfig
from fieldcraft.networks.functional import batch_size, sub_params, uniform

PARTS = ("encoding", "network")


@dataclasses.dataclass(frozen=True)
class FieldConfig(Config):
    """Fields:

    - ``in_dim``, ``out_dim``: coordinate and value dimensions.
    - ``encoding``: any :class:`~fieldcraft.encodings.EncodingConfig`.
    - ``network``: an :class:`MLPConfig`.
    - ``output_scale``, ``output_offset``: values = network output * scale + offset. SIREN fits
      signals normalised to ``[-1, 1]``; scale 0.5 and offset 0.5 give ``[0, 1]`` values while
      the network sees the paper's range (its zero-mean output needs no large bias).
    """

    type_name = "Field"
    in_dim: int = 2
    out_dim: int = 3
    encoding: EncodingConfig = dataclasses.field(default_factory=IdentityEncodingConfig)
    network: MLPConfig = dataclasses.field(default_factory=MLPConfig)
    output_scale: float = 1.0
    output_offset: float = 0.0

    def build(self) -> Field:
        return Field(self)


class Field(nn.Module):
    def __init__(self, config: FieldConfig) -> None:
        super().__init__()
        self.config = config
        self.in_dim, self.out_dim = config.in_dim, config.out_dim
        self.encoding = config.encoding.build(config.in_dim)
        self.network = config.network.build(self.encoding.out_dim, config.out_dim)

    def forward(self, x: Float[Tensor, "*batch in_dim"], params: Mapping[str, Tensor] | None = None,
                modulations: Mapping[str, Tensor] | None = None) -> Float[Tensor, "*batch out_dim"]:
        """Field values at ``x``; with ``params`` (names as ``named_parameters()``, each
        unbatched or ``[B, *shape]``; names left out use the field's own) and/or per-signal
        ``modulations`` (:meth:`MLP.forward <fieldcraft.networks.MLP.forward>`), ``x`` is
        ``[B, n, in_dim]`` and the values ``[B, n, out_dim]``."""
        params = params or {}
        unknown = [name for name in params if name.split(".", 1)[0] not in PARTS]
        check(not unknown, f"unknown field parameters {unknown} (names start with {' or '.join(PARTS)})")
        features = self._encode(x, sub_params(params, "encoding"))
        y = self.network(features, sub_params(params, "network"), modulations)
        if self.config.output_scale != 1.0 or self.config.output_offset != 0.0:
            y = y * self.config.output_scale + self.config.output_offset
        return y

    def _encode(self, x: Float[Tensor, "*batch in_dim"], params: dict[str, Tensor]) -> Float[Tensor, "*batch features"]:
        if not params:
            return self.encoding(x)
        batch = batch_size(params, dict(self.encoding.named_parameters()))
        if batch is None:
            return functional_call(self.encoding, params, (x,))
        check(isinstance(self.encoding, GridEncoding),
              f"batched parameters of a {self.encoding.config.type_name} encoding are unsupported "
              "(batched grid tables and batched network weights are)")
        check(x.dim() == 3 and x.shape[0] == batch,
              f"grid tables for {batch} signals need points of shape [{batch}, n, {self.in_dim}], got {list(x.shape)}")
        return batched_grid_encode(self.encoding, params["table"], x)

    def batched_params(self, batch: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``batch`` independent initialisations of every parameter of the field, named as
        ``named_parameters()``, each ``[batch, *shape]``: the network's weights drawn as its
        ``init`` draws them (:meth:`MLP.batched_params`), grid tables uniform in
        ``[-init_scale, init_scale]`` as the grid draws them. Leaf tensors requiring gradients,
        on the field's device (``generator`` must live there). For copies of the field's own
        weights use :func:`~fieldcraft.networks.stack_params`."""
        out = {f"network.{k}": v for k, v in self.network.batched_params(batch, generator).items()}
        for name, p in self.encoding.named_parameters():
            check(isinstance(self.encoding, GridEncoding),
                  f"batched parameters of a {self.encoding.config.type_name} encoding are unsupported")
            out[f"encoding.{name}"] = uniform((batch, *p.shape), self.encoding.config.init_scale, p,
                                              generator).requires_grad_()
        return out


def batched_grid_encode(encoding: GridEncoding, tables: Float[Tensor, "B rows F"],
                        x: Float[Tensor, "B n in_dim"]) -> Float[Tensor, "B n features"]:
    """A grid encoding with one table per signal: the PyTorch reference encoding of each
    signal's points with its table, vectorised over the signals by ``torch.vmap``."""
    u = (x + 1.0) * 0.5  # [-1, 1] -> [0, 1], as GridEncoding.encode
    return torch.vmap(lambda table, points: grid_encode_reference(points, table, encoding.layout))(tables, u)
