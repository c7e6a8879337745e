"""Evaluate a saved field with numpy and the numba grid kernels, without importing PyTorch.

A one-shot command (``fieldcraft export mesh``) spends about 1.4 s importing torch before it
evaluates anything; for the fields it meets, this module does the same arithmetic with numpy.

Covered: a ``Field`` config (:class:`fieldcraft.fields.FieldConfig` as JSON) whose encoding is
``HashGrid``, ``DenseGrid`` or ``Identity`` and whose network is an ``MLP`` with any of its
hidden (relu, sine, gaussian, tanh) and output activations and input skips, float32 weights
(its ``init`` only matters when training). For anything
else :func:`numpy_field` returns ``None`` and the caller builds the PyTorch module instead.
Values equal ``Field.forward`` up to float32 rounding (``tests/test_numpy_field.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from jaxtyping import Float

from fieldcraft.kernels.grid_layout import GridLayout, dense_grid_layout, hash_grid_layout

Array = np.ndarray


def _softplus(x: Array) -> Array:
    # torch.nn.Softplus(beta=1, threshold=20): x itself above the threshold
    return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0))))


def _sigmoid(x: Array) -> Array:
    return (0.5 * (np.tanh(0.5 * x) + 1.0)).astype(x.dtype)


_OUTPUT: dict[str, Callable[[Array], Array]] = {
    "none": lambda x: x,
    "sigmoid": _sigmoid,
    "relu": lambda x: np.maximum(x, 0.0),
    "softplus": _softplus,
    "exp": np.exp,
    "tanh": np.tanh,
}


def _hidden_activation(net: Mapping[str, Any], index: int) -> Callable[[Array], Array] | None:
    kind = net.get("activation")
    if kind == "relu":
        return lambda x: np.maximum(x, 0.0, out=x)
    if kind == "tanh":
        return lambda x: np.tanh(x, out=x)
    if kind == "sine":
        w = np.float32(net["first_omega_0"] if index == 0 else net["hidden_omega_0"])
        return lambda x: np.sin(np.multiply(x, w, out=x), out=x)
    if kind == "gaussian":
        c = np.float32(-0.5 / float(net["gaussian_a"]) ** 2)
        return lambda x: np.exp(np.multiply(np.square(x, out=x), c, out=x), out=x)
    return None


class NumpyField:
    """``Field(x) = output_scale * MLP(encoding(x)) + output_offset`` in numpy.

    Built by :func:`numpy_field`; call it on float32 points ``[n, in_dim]`` in ``[-1, 1]``.
    ``skips``: the linear layers whose input is ``[h, encoding(x)]`` (``MLPConfig.skips``).
    """

    def __init__(self, in_dim: int, encode: Callable[[Array], Array], layers: list[tuple[Array, Array | None]],
                 activations: list[Callable[[Array], Array]], output: Callable[[Array], Array], scale: float,
                 offset: float, chunk: int = 65_536, skips: frozenset[int] = frozenset()) -> None:
        self.in_dim, self.encode, self.layers = in_dim, encode, layers
        self.activations, self.output, self.skips = activations, output, skips
        self.scale, self.offset, self.chunk = np.float32(scale), np.float32(offset), chunk
        self.out_dim = layers[-1][0].shape[0]

    def _block(self, x: Array) -> Array:
        e = h = self.encode(x)
        for i, (w, b) in enumerate(self.layers):
            if i in self.skips:
                h = np.concatenate([h, e], axis=1)
            h = h @ w.T
            if b is not None:
                h += b
            h = self.activations[i](h) if i < len(self.activations) else h
        y = self.output(h)
        if self.scale != 1.0 or self.offset != 0.0:
            y = y * self.scale + self.offset
        return y

    def __call__(self, x: Float[Array, "n in_dim"]) -> Float[Array, "n out_dim"]:
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, self.in_dim)
        out = np.empty((len(x), self.out_dim), np.float32)
        for s in range(0, len(x), self.chunk):  # blocks bound memory and reuse allocations
            out[s:s + self.chunk] = self._block(x[s:s + self.chunk])
        return out


def _grid_encoder(table: Array, layout: GridLayout) -> Callable[[Array], Array] | None:
    from fieldcraft.kernels.grid import forward_fallback_reason, kernel_threads, run_forward

    if table.dtype != np.float32 or table.shape != (layout.n_rows, layout.n_features):
        return None
    if forward_fallback_reason(layout.dim, layout.n_features) is not None:
        return None
    table = np.ascontiguousarray(table)
    threads = kernel_threads()
    half, one = np.float32(0.5), np.float32(1.0)
    return lambda x: run_forward(np.ascontiguousarray((x + one) * half), table, layout, threads)


def numpy_field(config: Mapping[str, Any], tensors: Mapping[str, Array], prefix: str = "field") -> NumpyField | None:
    """A :class:`NumpyField` for the JSON ``config`` of a field and its checkpoint ``tensors``
    (keys ``<prefix>.encoding.table``, ``<prefix>.network.linears.<i>.weight`` / ``.bias``),
    or ``None`` when the field is not covered (see the module docstring)."""
    try:
        return _build(config, tensors, prefix)
    except (KeyError, TypeError, ValueError):  # a config this module does not know
        return None


def _build(config: Mapping[str, Any], tensors: Mapping[str, Array], prefix: str) -> NumpyField | None:
    if config.get("type") != "Field":
        return None
    in_dim = int(config["in_dim"])
    enc, net = config["encoding"], config["network"]
    kind = enc.get("type")
    if kind == "Identity":
        encode: Callable[[Array], Array] | None = lambda x: x  # noqa: E731
    elif kind in ("HashGrid", "DenseGrid"):
        if kind == "HashGrid":
            layout = hash_grid_layout(in_dim, int(enc["n_levels"]), int(enc["n_features"]), int(enc["log2_table_size"]),
                                      int(enc["base_resolution"]), enc["max_resolution"], enc["per_level_scale"])
        else:
            layout = dense_grid_layout(in_dim, int(enc["resolution"]), int(enc["n_features"]))
        encode = _grid_encoder(tensors[f"{prefix}.encoding.table"], layout)
    else:
        return None
    if encode is None or net.get("type") != "MLP" or net.get("output_activation") not in _OUTPUT:
        return None
    n_layers = int(net["hidden_layers"]) + 1
    layers = []
    for i in range(n_layers):
        w = tensors[f"{prefix}.network.linears.{i}.weight"]
        b = tensors.get(f"{prefix}.network.linears.{i}.bias")
        if w.dtype != np.float32 or (b is not None and b.dtype != np.float32):
            return None
        layers.append((np.ascontiguousarray(w), b))
    activations = [_hidden_activation(net, i) for i in range(n_layers - 1)]
    if any(a is None for a in activations):
        return None
    return NumpyField(in_dim, encode, layers, activations, _OUTPUT[net["output_activation"]],
                      float(config.get("output_scale", 1.0)), float(config.get("output_offset", 0.0)),
                      skips=frozenset(int(s) for s in net.get("skips", ())))
