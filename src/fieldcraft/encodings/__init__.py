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
| :class:`TriPlaneConfig` | EG3D tri-plane (3-D inputs) | ``levels C`` (sum) or ``3 levels C`` |
| :class:`TensoRFVMConfig` | TensoRF vector-matrix decomposition (3-D inputs) | ``3 C`` (concat) or ``C`` |
| :class:`TensoRFCPConfig` | TensoRF CP decomposition (3-D inputs) | ``C`` |
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
from fieldcraft.encodings.tensorf import TensoRFCPConfig, TensoRFEncoding, TensoRFVMConfig
from fieldcraft.encodings.triplane import CoarseToFine, TriPlaneConfig, TriPlaneEncoding, coarse_to_fine

__all__ = [
    "CoarseToFine",
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
    "TensoRFCPConfig",
    "TensoRFEncoding",
    "TensoRFVMConfig",
    "TriPlaneConfig",
    "TriPlaneEncoding",
    "coarse_to_fine",
]
