"""Real spherical harmonics of unit directions (the Instant-NGP / tiny-cuda-nn view encoding).

``degree`` counts bands: degree ``D`` gives the ``D^2`` real harmonics ``Y_l^m`` with
``l < D`` (degree 4: 16 values), orthonormal on the unit sphere
(``int Y_i Y_j dOmega = delta_ij``), in the usual order ``l = 0, 1, ...`` and ``m = -l..l``,
with the constants of tiny-cuda-nn (Sloan 2008, "Stupid spherical harmonics tricks").
Inputs are 3-D directions; they are normalised to unit length first.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from fieldcraft.encodings.base import Encoding, EncodingConfig
from fieldcraft.errors import check


@dataclasses.dataclass(frozen=True)
class SphericalHarmonicsConfig(EncodingConfig):
    """Fields: ``degree``, the number of SH bands (1-4; output ``degree^2`` values)."""

    type_name = "SphericalHarmonics"
    degree: int = 4

    def out_dim(self, in_dim: int) -> int:
        return self.degree**2

    def build(self, in_dim: int) -> SphericalHarmonics:
        check(in_dim == 3, f"SphericalHarmonics encodes 3-D directions, got in_dim={in_dim}")
        check(1 <= self.degree <= 4, f"SphericalHarmonics degree must be 1-4, got {self.degree}")
        return SphericalHarmonics(self, in_dim)


def spherical_harmonics(d: Tensor, degree: int) -> Tensor:
    """``[n, 3]`` unit directions -> ``[n, degree^2]`` real SH values.

    >>> [round(v, 4) + 0.0 for v in spherical_harmonics(torch.tensor([[0.0, 0.0, 1.0]]), 2)[0].tolist()]
    [0.2821, 0.0, 0.4886, 0.0]
    """
    x, y, z = d.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree > 1:
        out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree > 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [1.0925484305920792 * x * y, -1.0925484305920792 * y * z, 0.94617469575755997 * zz - 0.31539156525251999,
                -1.0925484305920792 * x * z, 0.54627421529603959 * (xx - yy)]
    if degree > 3:
        out += [0.59004358992664352 * y * (3.0 * xx - yy), 2.8906114426405538 * x * y * z,
                0.45704579946446572 * y * (1.0 - 5.0 * zz), 0.3731763325901154 * z * (5.0 * zz - 3.0),
                0.45704579946446572 * x * (1.0 - 5.0 * zz), 1.4453057213202769 * z * (xx - yy),
                0.59004358992664352 * x * (xx - 3.0 * yy)]
    return torch.stack(out, -1)


class SphericalHarmonics(Encoding):
    config: SphericalHarmonicsConfig

    def encode(self, x: Tensor) -> Tensor:
        d = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        return spherical_harmonics(d, self.config.degree)
