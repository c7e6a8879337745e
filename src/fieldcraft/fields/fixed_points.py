"""A field evaluated again and again at the same points (pixel centres of a fixed grid, say).

The encoding of fixed points never changes, so it is computed once:

- a grid encoding is a fixed sparse linear map of its table
  (:func:`~fieldcraft.encodings.grid.grid_operator`): each evaluation is one sparse
  matrix product (and its transpose in the backward pass), on any device;
- an encoding without parameters (identity, frequency, Fourier features) is a constant
  feature matrix;
- any other encoding is evaluated as it is.

The rest is :meth:`Field.forward <fieldcraft.fields.field.Field.forward>`: the network on the
features, then ``* output_scale + output_offset``. So ``FixedPointsField(field, x)(field)``
equals ``field(x)`` (tested), with gradients for every parameter of the field.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from fieldcraft.encodings import GridEncoding
from fieldcraft.encodings.grid import grid_operator
from fieldcraft.fields.field import Field
from fieldcraft.render.line_integrals import sparse_matmul, transpose_csr


class FixedPointsField:
    """``field(points)`` for fixed ``points`` ``[n, in_dim]`` with the encoding precomputed
    (see module docstring). ``mode`` is ``"grid"``, ``"constant"`` or ``"call"``.

    Calling it with a field evaluates that field (e.g. a deep copy of ``field``: anything with
    the same encoding config); without one, the field it was built from.

    >>> from fieldcraft.fields import FieldConfig
    >>> from fieldcraft.encodings import DenseGridConfig
    >>> field = FieldConfig(in_dim=2, out_dim=1, encoding=DenseGridConfig(resolution=8),
    ...                     output_scale=2.0, output_offset=0.5).build()
    >>> x = torch.rand(10, 2) * 2 - 1
    >>> fixed = FixedPointsField(field, x)
    >>> fixed.mode, torch.allclose(fixed(), field(x), atol=1e-6)
    ('grid', True)
    """

    def __init__(self, field: Field, points: Float[Tensor, "n in_dim"]) -> None:
        self.field, self.points = field, points
        encoding = field.encoding
        self.mode = "call"
        if isinstance(encoding, GridEncoding):
            self.mode = "grid"
            self.matrix = grid_operator((points + 1.0) * 0.5, encoding.layout)  # as GridEncoding.encode
            self.matrix_t = transpose_csr(self.matrix)
        elif not any(True for _ in encoding.parameters()):
            self.mode = "constant"
            with torch.no_grad():
                self.features = encoding(points)

    def features_of(self, field: Field) -> Float[Tensor, "n features"]:
        """The encoding of the points by ``field``'s encoding (differentiable in its table)."""
        if self.mode == "grid":
            table = field.encoding.table
            return sparse_matmul(self.matrix, table, self.matrix_t).reshape(self.points.shape[0], -1)
        if self.mode == "constant":
            return self.features
        return field.encoding(self.points)

    def __call__(self, field: Field | None = None) -> Float[Tensor, "n out_dim"]:
        field = self.field if field is None else field
        y = field.network(self.features_of(field))
        scale, offset = field.config.output_scale, field.config.output_offset
        if scale != 1.0 or offset != 0.0:
            y = y * scale + offset
        return y
