"""The ``.fcz`` container: header, preset body, CRC-32 (see docs/codec.md for the byte layout).

::

    offset  size  field
    0       4     magic  89 46 43 5A  ("\\x89FCZ")
    4       1     format version (2; version 1 files, which never set the bicubic flag, are read too)
    5       1     preset id: 0 = latent (Cool-chic-like), 1 = coin
    6       4     height (uint32, little endian)
    10      4     width (uint32)
    14      1     channels (1, 3 or 4)
    15      1     bit depth of the decoded samples (8)
    16      ...   preset body
    end-4   4     CRC-32 (zlib) of every byte before it

>>> data = pack(Header(PRESET_IDS["latent"], 2, 3, 3), b"body")
>>> unpack(data, "x.fcz")
(Header(preset=0, height=2, width=3, channels=3, bit_depth=8), b'body')
"""

from __future__ import annotations

import dataclasses
import struct
import zlib

from fieldcraft.errors import FieldcraftError

MAGIC = b"\x89FCZ"
VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 2 added the latent preset's bicubic-upsampling flag
PRESET_IDS = {"latent": 0, "coin": 1}
PRESET_NAMES = {v: k for k, v in PRESET_IDS.items()}
MAX_SIDE = 1 << 15
_HEAD = struct.Struct("<4sBBIIBB")


@dataclasses.dataclass(frozen=True)
class Header:
    """What every file states before its preset body."""

    preset: int
    height: int
    width: int
    channels: int
    bit_depth: int = 8


def pack(header: Header, body: bytes) -> bytes:
    """The file's bytes: header, ``body``, CRC-32."""
    data = _HEAD.pack(MAGIC, VERSION, header.preset, header.height, header.width, header.channels,
                      header.bit_depth) + body
    return data + struct.pack("<I", zlib.crc32(data))


def unpack(data: bytes, label: str) -> tuple[Header, bytes]:
    """Check magic, version, checksum and the header's values; return the header and the preset body.
    Raises :class:`FieldcraftError` (``"<label>: <problem>"``) for anything else."""
    if len(data) < 4 or data[:4] != MAGIC:
        raise FieldcraftError(f"{label}: not a fieldcraft compressed image (bad magic bytes)")
    if len(data) < _HEAD.size + 4:
        raise FieldcraftError(f"{label}: truncated file ({len(data)} bytes)")
    _, version, preset, height, width, channels, depth = _HEAD.unpack_from(data)
    if version not in READABLE_VERSIONS:
        raise FieldcraftError(f"{label}: format version {version} is not supported (this fieldcraft reads "
                              f"versions {', '.join(map(str, READABLE_VERSIONS))})")
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(data[:-4]) != crc:
        raise FieldcraftError(f"{label}: checksum mismatch: the file is truncated or corrupt")
    if preset not in PRESET_NAMES:
        raise FieldcraftError(f"{label}: unknown preset id {preset}")
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE and channels in (1, 3, 4) and depth == 8):
        raise FieldcraftError(f"{label}: unsupported image header ({width}x{height}, {channels} channels, "
                              f"{depth}-bit)")
    return Header(preset, height, width, channels, depth), data[_HEAD.size:-4]


class Reader:
    """Sequential reads from a preset body; running past its end is a :class:`FieldcraftError`."""

    def __init__(self, body: bytes, label: str) -> None:
        self.body, self.label, self.pos = body, label, 0

    def read(self, fmt: str) -> tuple:
        s = struct.Struct("<" + fmt)
        if self.pos + s.size > len(self.body):
            raise FieldcraftError(f"{self.label}: truncated file (header body ends early)")
        out = s.unpack_from(self.body, self.pos)
        self.pos += s.size
        return out

    def rest(self) -> bytes:
        return self.body[self.pos:]
