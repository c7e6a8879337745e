"""Coordinate encodings: ``[..., in_dim] -> [..., out_dim]`` (see :mod:`.base`).

| config | paper | out_dim |
|---|---|---|
| :class:`IdentityEncodingConfig` | SIREN input | ``d`` |
| :class:`FrequencyEncodingConfig` | NeRF positional encoding | ``d (2L + 1)`` |
| :class:`FourierFeaturesConfig` | Tancik et al. Gaussian Fourier features | ``2 m`` |
| :class:`HashGridConfig` | Instant-NGP multiresolution hash grid | ``L F`` |
| :class:`DenseGridConfig` | dense voxel grid (Plenoxels, DVGO) | ``F`` |
| :class:`SphericalHarmonicsConfig` | real spherical harmonics of directions (Instant-NGP) | ``degree^2`` |
| :class:`CompositeEncodingConfig` | per-dimension encodings (tiny-cuda-nn) | sum of parts |
"""

from fieldcraft.encodings.base import Encoding, EncodingConfig
from fieldcraft.encodings.composite import CompositeEncodingConfig, CompositePart
from fieldcraft.encodings.dense_grid import DenseGridConfig
from fieldcraft.encodings.fourier import FourierFeaturesConfig
from fieldcraft.encodings.frequency import FrequencyEncodingConfig
from fieldcraft.encodings.grid import GridEncoding
from fieldcraft.encodings.hashgrid import HashGridConfig
from fieldcraft.encodings.identity import IdentityEncodingConfig
from fieldcraft.encodings.spherical_harmonics import SphericalHarmonicsConfig

__all__ = [
    "CompositeEncodingConfig",
    "CompositePart",
    "DenseGridConfig",
    "Encoding",
    "EncodingConfig",
    "FourierFeaturesConfig",
    "FrequencyEncodingConfig",
    "GridEncoding",
    "HashGridConfig",
    "IdentityEncodingConfig",
    "SphericalHarmonicsConfig",
]
