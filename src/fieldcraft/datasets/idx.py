"""MNIST-style IDX files: header parsing, memory-mapped reading, writing.

An IDX file is a 4-byte magic number ``0x00 0x00 TYPE NDIMS``, ``NDIMS`` big-endian ``uint32``
sizes, then the values in C order, big-endian. ``TYPE``: ``0x08`` uint8, ``0x09`` int8, ``0x0B``
int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64. MNIST ships
``*-images-idx3-ubyte`` (``[N, 28, 28]`` uint8) and ``*-labels-idx1-ubyte`` (``[N]`` uint8),
usually gzipped; the labels file of ``P-images-idx3-ubyte[.gz]`` is ``P-labels-idx1-ubyte[.gz]``
(also with ``.`` instead of ``-`` before ``idx``, as some mirrors name them).

Gzipped files are decompressed once, streamed in 1 MiB pieces to a temporary file that is
memory-mapped (and deleted with the dataset), so memory stays bounded by what is read.

>>> import tempfile, numpy as np, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
>>> p = write_idx(d / "x-images-idx3-ubyte.gz", a)
>>> b, _ = read_idx(p)
>>> bool((b == a).all()), labels_path(p).name
(True, 'x-labels-idx1-ubyte.gz')
>>> del b, _; shutil.rmtree(d)
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from fieldcraft.errors import FieldcraftError

IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_TYPE_CODES = {np.dtype(v).newbyteorder("=") if v.itemsize > 1 else v: k for k, v in IDX_TYPES.items()}
_IMAGES = re.compile(r"images([.-])idx(\d)")


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def looks_like_idx(path: Path) -> bool:
    """True when ``path`` (gzipped or not) starts with an IDX magic number."""
    try:
        opener = gzip.open if is_gzip(path) else open
        with opener(path, "rb") as f:
            head = f.read(4)
    except (OSError, EOFError):
        return False
    return len(head) == 4 and head[0] == 0 and head[1] == 0 and head[2] in IDX_TYPES and 1 <= head[3] <= 4


def read_header(path: Path, raw: Path | None = None) -> tuple[np.dtype, tuple[int, ...], int]:
    """``(dtype, shape, data offset)`` of the IDX file ``path`` (or of its decompressed copy ``raw``),
    checked against the file's size."""
    src = raw or path
    size = src.stat().st_size
    with open(src, "rb") as f:
        head = f.read(4)
        if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in IDX_TYPES or not 1 <= head[3] <= 4:
            raise FieldcraftError(f"{path}: not an IDX file (bad magic number {head.hex() or 'empty'})")
        ndim = head[3]
        dims_raw = f.read(4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise FieldcraftError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(dims_raw, ">u4"))
    dtype = IDX_TYPES[head[2]]
    offset = 4 + 4 * ndim
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != expected:
        raise FieldcraftError(f"{path}: IDX header says {'x'.join(map(str, shape))} {dtype.name} "
                              f"({expected} bytes) but the {'decompressed ' if raw else ''}file has {size} bytes")
    return dtype, shape, offset


def decompress_to_temp(path: Path) -> tuple[Path, tempfile.TemporaryDirectory]:
    """Stream-decompress the gzip file ``path`` to a temporary file; returns it and its directory
    (deleted when the directory object is cleaned up or garbage-collected)."""
    tmp = tempfile.TemporaryDirectory(prefix="fieldcraft-idx-")
    out = Path(tmp.name) / path.name.removesuffix(".gz")
    try:
        with gzip.open(path, "rb") as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (OSError, EOFError) as exc:
        tmp.cleanup()
        raise FieldcraftError(f"{path}: corrupt or truncated gzip file ({exc})") from None
    return out, tmp


def read_idx(path: str | Path) -> tuple[np.ndarray, tempfile.TemporaryDirectory | None]:
    """The values of an IDX file as a read-only memory map (native byte order for 1-byte types),
    and the temporary directory holding its decompressed copy (None when not gzipped; keep it
    alive as long as the array is used)."""
    path = Path(path)
    if not path.is_file():
        raise FieldcraftError(f"{path}: no such file")
    tmp = None
    raw = None
    if is_gzip(path):
        raw, tmp = decompress_to_temp(path)
    dtype, shape, offset = read_header(path, raw)
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype), tmp
    return np.memmap(raw or path, dtype=dtype, mode="r", offset=offset, shape=shape), tmp


def labels_path(images: str | Path) -> Path:
    """The labels file beside an IDX images file by the MNIST naming convention
    (``t10k-images-idx3-ubyte.gz`` -> ``t10k-labels-idx1-ubyte.gz``); same name when it does not follow it."""
    images = Path(images)
    return images.with_name(_IMAGES.sub(lambda m: f"labels{m.group(1)}idx1", images.name, count=1))


def find_labels(images: Path) -> Path | None:
    """The existing labels file for ``images`` (gzipped or not), or None."""
    guess = labels_path(images)
    if guess == images:
        return None
    for cand in (guess, guess.with_name(guess.name.removesuffix(".gz")), guess.with_name(guess.name + ".gz")):
        if cand.is_file():
            return cand
    return None


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``compress`` or, if None, when ``path`` ends in ``.gz``)."""
    path = Path(path)
    array = np.ascontiguousarray(array)
    native = array.dtype.newbyteorder("=") if array.dtype.itemsize > 1 else array.dtype
    if native not in _TYPE_CODES:
        raise FieldcraftError(f"{path}: IDX cannot store {array.dtype} (uint8, int8, int16, int32, float32, float64)")
    code = _TYPE_CODES[native]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = header + array.astype(IDX_TYPES[code], copy=False).tobytes()
    compress = path.name.endswith(".gz") if compress is None else compress
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(gzip.compress(data, mtime=0) if compress else data)
    os.replace(tmp, path)
    return path
