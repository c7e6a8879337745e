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

Centre of rotation (detector pixels, 0 = centre of the first pixel): :func:`centre_from_file`
reads it when the file records one (a scalar dataset or attribute named ``rotation_center``,
``rotation_centre``, ``center_of_rotation``, ``centre_of_rotation``, ``rot_center`` or
``rotation_axis``, anywhere in the file; the data-exchange schema has no fixed place for it);
:func:`estimate_centre` finds it from the projections: in parallel beam the projection at
``theta + 180`` is the mirror image of the one at ``theta`` about the centre, so the centre is
where a projection best matches the mirrored opposite one.
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
            if f[name].dtype.kind not in "iuf":
                raise FieldcraftError(f"{path}: dataset {name} holds {f[name].dtype} values, expected numeric counts")
            try:
                arr = np.asarray(f[name][()], dtype=np.float32)
            except OSError as exc:  # a dataset cut short (truncated file)
                raise FieldcraftError(f"{path}: dataset {name} is unreadable ({str(exc).splitlines()[0]})") from None
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
        open_beam = white.mean(0) - dark.mean(0)
        if not (open_beam > 0).any():
            raise FieldcraftError(f"{path}: the flat fields (/exchange/data_white) are nowhere brighter than the dark "
                                  "fields (/exchange/data_dark): no flat-field correction is possible")
        if data.shape[0] < 2 or data.shape[2] < 8:
            raise FieldcraftError(f"{path}: dataset /exchange/data has shape {data.shape}, expected at least "
                                  "2 angles and 8 detector columns")
        if "/exchange/theta" in f:
            if not isinstance(f["/exchange/theta"], h5py.Dataset) or f["/exchange/theta"].dtype.kind not in "iuf":
                raise FieldcraftError(f"{path}: /exchange/theta must be a numeric dataset of angles in degrees")
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
    if not (white - dark > 0).any():
        raise FieldcraftError(f"{proj.path}: in row {row} the flat fields (/exchange/data_white) are nowhere brighter "
                              "than the dark fields (/exchange/data_dark)")
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


CENTRE_NAMES = ("rotation_center", "rotation_centre", "center_of_rotation", "centre_of_rotation", "rot_center",
                "rotation_axis")


def centre_from_file(path: str) -> tuple[float, str] | None:
    """The centre of rotation recorded in an HDF5 file and where (``"/path"`` of a dataset or
    ``"/path@attribute"``), or None when the file records none (see module docstring)."""
    import h5py

    found: list[tuple[float, str]] = []

    def scalar(value) -> float | None:
        arr = np.asarray(value)
        if arr.dtype.kind not in "iuf" or arr.size != 1 or not np.isfinite(arr).all():
            return None
        return float(arr.reshape(-1)[0])

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset) and name.rsplit("/", 1)[-1].lower() in CENTRE_NAMES:
            v = scalar(obj[()])
            if v is not None:
                found.append((v, "/" + name))
        for key, value in obj.attrs.items():
            if key.lower() in CENTRE_NAMES and (v := scalar(value)) is not None:
                found.append((v, f"/{name}@{key}"))

    with h5py.File(path, "r") as f:
        visit("", f)
        f.visititems(visit)
    return found[0] if found else None


def opposite_pairs(theta_deg: Float[np.ndarray, " A"], max_pairs: int = 16) -> tuple[list[tuple[int, int]], float]:
    """Pairs ``(i, j)`` of views whose angles differ by the closest to 180 degrees any pair
    gets (all pairs exactly 180 apart for a 360-degree scan; for a 180-degree scan over
    ``[0, 180)`` the first and last views), at most ``max_pairs`` spread evenly, and that
    mismatch in degrees.

    >>> opposite_pairs(np.arange(8) * 45.0)
    ([(0, 4), (1, 5), (2, 6), (3, 7)], 0.0)
    >>> opposite_pairs(np.arange(180) * 1.0)
    ([(0, 179)], 1.0)
    """
    t = np.asarray(theta_deg, np.float64)
    gap = np.abs((t[None, :] - t[:, None]) % 360.0 - 180.0)  # distance of each difference from 180 (symmetric)
    best = float(gap.min())
    i, j = np.nonzero(np.triu(gap <= best + 1e-6, 1))
    pairs = [(int(a), int(b)) for a, b in zip(i, j)]
    if len(pairs) > max_pairs:
        pairs = [pairs[k] for k in np.unique(np.linspace(0, len(pairs) - 1, max_pairs).round().astype(int))]
    return pairs, best


def mirror_cost(p: Float[np.ndarray, " C"], q: Float[np.ndarray, " C"], centres: Float[np.ndarray, " K"]) -> Float[np.ndarray, " K"]:
    """Mean squared difference between ``p(x)`` and the mirror image ``q(2c - x)`` (linear
    interpolation) over the detector pixels where both exist, for each candidate centre ``c``."""
    x = np.arange(p.shape[0], dtype=np.float64)
    xs = 2.0 * np.asarray(centres, np.float64)[:, None] - x[None, :]
    valid = (xs >= 0) & (xs <= x[-1])
    diff = np.where(valid, p[None, :] - np.interp(xs, x, q), 0.0)
    return (diff**2).sum(1) / np.maximum(valid.sum(1), 1)


def estimate_centre(sino: Float[np.ndarray, "A C"], theta_deg: Float[np.ndarray, " A"]) -> tuple[float, str]:
    """Centre of rotation (detector pixels) of a parallel-beam sinogram of line integrals, and
    how it was found: the centre ``c`` minimising the summed :func:`mirror_cost` of the
    :func:`opposite_pairs` (projections smoothed by a Gaussian of 1 px), searched over the
    middle half of the detector (every candidate overlaps at least half of it) in steps of
    0.5 px, then refined to 0.01 px. For a 180-degree scan the pair is a few degrees short of
    180 (one angular step); the object's rotation over that step biases the result by at most
    ``step (rad) x (distance of the object's centre of mass from the axis) / 2`` px.
    """
    from scipy.ndimage import gaussian_filter1d

    sino = np.asarray(sino, np.float64)
    n_views, n_cols = sino.shape
    if n_views < 2:
        raise FieldcraftError("estimating the centre of rotation needs at least 2 projections")
    pairs, gap = opposite_pairs(theta_deg)
    if gap > 20.0:
        raise FieldcraftError(f"cannot estimate the centre of rotation: no two projections are within 20 degrees of "
                              f"opposite (closest: {180.0 - gap:.1f} apart); give --centre")
    smooth = gaussian_filter1d(sino, 1.0, axis=1)

    def cost(centres: np.ndarray) -> np.ndarray:
        return sum(mirror_cost(smooth[i], smooth[j], centres) for i, j in pairs)

    coarse = np.arange(n_cols / 4.0, 3.0 * n_cols / 4.0 + 0.25, 0.5)
    c0 = coarse[int(np.argmin(cost(coarse)))]
    fine = np.arange(c0 - 0.5, c0 + 0.5 + 1e-9, 0.01)
    centre = float(fine[int(np.argmin(cost(fine)))])
    t = np.asarray(theta_deg, np.float64)
    if len(pairs) == 1:
        how = f"estimated: projection at {t[pairs[0][0]]:g} deg registered with the mirror image of {t[pairs[0][1]]:g} deg"
    else:
        how = f"estimated: {len(pairs)} pairs of projections {180.0 - gap:g} deg apart registered with mirror images"
    return centre, how


def rotation_centre(proj: Projections, sino: Float[np.ndarray, "A C"]) -> tuple[float, str]:
    """The centre of rotation of ``proj`` (detector pixels) and where it came from: the one the
    file records (:func:`centre_from_file`), else :func:`estimate_centre` of ``sino`` (the
    line integrals of one detector row of ``proj``), rounded to 0.01 px."""
    recorded = centre_from_file(proj.path)
    if recorded is not None:
        return recorded[0], f"recorded in the file at {recorded[1]}"
    centre, how = estimate_centre(sino, proj.theta_deg)
    return round(centre, 2), how
