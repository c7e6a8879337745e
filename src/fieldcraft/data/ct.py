"""CT inputs: the Shepp-Logan phantom and APS data-exchange HDF5 projections.

Sinogram convention (shared with :mod:`fieldcraft.render.line_integrals` and scikit-image's
``radon``/``iradon``): ``[angles, detectors]`` line integrals ``p = -ln(I / I0)``; the
reconstruction grid is ``N x N`` pixels, the detector has ``N`` bins of one pixel, and the
centre of rotation projects onto bin ``N // 2``. Attenuation is per pixel of that grid.

APS data-exchange (``/exchange/data`` ``[angles, rows, columns]`` counts,
``/exchange/data_white`` and ``/exchange/data_dark`` ``[k, rows, columns]``, optional
``/exchange/theta`` in degrees): :func:`read_data_exchange` validates the file,
:func:`log_sinogram` applies the flat/dark correction and ``-ln``,
:func:`centre_sinogram` crops the detector symmetrically about the centre of rotation and
resamples it to ``N`` bins.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from jaxtyping import Float

from fieldcraft.errors import FieldcraftError

PHANTOM_SOURCE = "sample:shepp-logan"
DATA_EXCHANGE_DATASETS = ("/exchange/data", "/exchange/data_white", "/exchange/data_dark")


def shepp_logan(size: int) -> Float[np.ndarray, "N N"]:
    """scikit-image's (modified) Shepp-Logan phantom resized to ``size x size`` with
    anti-aliasing; values in ``[0, 1]``, zero outside the inscribed circle. ``size`` = 400
    returns the original."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    if size < 8:
        raise FieldcraftError(f"{PHANTOM_SOURCE}: --size must be >= 8, got {size}")
    image = shepp_logan_phantom().astype(np.float64)
    if size != image.shape[0]:
        image = resize(image, (size, size), anti_aliasing=True, order=1)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Projections:
    """Raw projections of an APS data-exchange file (float32 arrays, counts).

    ``data`` ``[A, R, C]``, ``white`` and ``dark`` ``[k, R, C]`` (flat and dark fields),
    ``theta_deg`` ``[A]`` projection angles in degrees."""

    path: str
    data: np.ndarray
    white: np.ndarray
    dark: np.ndarray
    theta_deg: np.ndarray


def read_data_exchange(path: str) -> Projections:
    """Read and validate an APS data-exchange HDF5 file. Any problem (missing file, not HDF5,
    missing dataset, wrong shapes, non-finite values) raises one :class:`FieldcraftError` line
    naming the file and the dataset."""
    import h5py

    if not os.path.isfile(path):
        raise FieldcraftError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise FieldcraftError(f"{path}: not a readable HDF5 file ({str(exc).splitlines()[0]})") from None
    with f:
        arrays = {}
        for name in DATA_EXCHANGE_DATASETS:
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise FieldcraftError(f"{path}: missing dataset {name} (APS data-exchange needs "
                                      f"{', '.join(DATA_EXCHANGE_DATASETS)})")
            arr = np.asarray(f[name][()], dtype=np.float32)
            if arr.ndim == 2 and name != "/exchange/data":
                arr = arr[None]
            if arr.ndim != 3:
                raise FieldcraftError(f"{path}: dataset {name} has shape {arr.shape}, expected 3-D "
                                      "[angles or frames, rows, columns]")
            if not np.isfinite(arr).all():
                raise FieldcraftError(f"{path}: dataset {name} holds NaN or infinite values")
            arrays[name] = arr
        data, white, dark = (arrays[n] for n in DATA_EXCHANGE_DATASETS)
        for name in DATA_EXCHANGE_DATASETS[1:]:
            if arrays[name].shape[1:] != data.shape[1:]:
                raise FieldcraftError(f"{path}: dataset {name} has frames of shape {arrays[name].shape[1:]}, "
                                      f"but /exchange/data has {data.shape[1:]} (rows, columns)")
        if data.shape[0] < 2 or data.shape[2] < 8:
            raise FieldcraftError(f"{path}: dataset /exchange/data has shape {data.shape}, expected at least "
                                  "2 angles and 8 detector columns")
        if "/exchange/theta" in f:
            theta = np.asarray(f["/exchange/theta"][()], dtype=np.float64).reshape(-1)
            if theta.shape[0] != data.shape[0]:
                raise FieldcraftError(f"{path}: dataset /exchange/theta has {theta.shape[0]} angles, "
                                      f"but /exchange/data has {data.shape[0]}")
            if not np.isfinite(theta).all():
                raise FieldcraftError(f"{path}: dataset /exchange/theta holds NaN or infinite values")
        else:  # data-exchange default: equally spaced over [0, 180)
            theta = np.arange(data.shape[0]) * (180.0 / data.shape[0])
    return Projections(path, data, white, dark, theta)


def log_sinogram(proj: Projections, row: int) -> Float[np.ndarray, "A C"]:
    """Flat/dark-corrected line integrals ``-ln((data - dark) / (white - dark))`` of detector
    ``row`` (mean flat and dark fields; transmissions clamped to ``[1e-6, inf)``)."""
    if not 0 <= row < proj.data.shape[1]:
        raise FieldcraftError(f"{proj.path}: slice {row} out of range (the data has {proj.data.shape[1]} rows)")
    dark = proj.dark[:, row].mean(0)
    white = proj.white[:, row].mean(0)
    denom = np.maximum(white - dark, 1e-6)
    trans = (proj.data[:, row] - dark) / denom
    return -np.log(np.clip(trans, 1e-6, None)).astype(np.float32)


def centre_sinogram(sino: Float[np.ndarray, "A C"], centre: float, size: int) -> Float[np.ndarray, "A N"]:
    """Crop the detector to the widest window symmetric about the centre of rotation
    ``centre`` (in detector pixels, 0 = centre of the first pixel) and resample it linearly to
    ``size`` bins, with the centre of rotation on bin ``size // 2``. The line integrals keep
    their values (they do not depend on the bin width)."""
    n_cols = sino.shape[1]
    if not 0.0 < centre < n_cols - 1:
        raise FieldcraftError(f"centre of rotation {centre} px is outside the detector (0..{n_cols - 1})")
    half = min(centre + 0.5, n_cols - 0.5 - centre)  # half-width in pixels, to the outer pixel edges
    spacing = 2.0 * half / size
    pos = centre + (np.arange(size) - size // 2) * spacing  # detector position of each new bin
    cols = np.arange(n_cols)
    return np.stack([np.interp(pos, cols, row) for row in sino]).astype(np.float32)


def select_views(n_total: int, k: int) -> np.ndarray:
    """Indices of ``k`` views spread evenly over ``n_total`` (``round(i n_total / k)``).

    >>> select_views(181, 4).tolist()
    [0, 45, 90, 136]
    """
    if not 1 <= k <= n_total:
        raise FieldcraftError(f"--views must be between 1 and {n_total}, got {k}")
    return np.unique(np.round(np.arange(k) * (n_total / k)).astype(int) % n_total)
