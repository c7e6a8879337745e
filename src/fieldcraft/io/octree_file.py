"""Baked radiance fields: the sparse voxel file written by ``fieldcraft export nerf --format octree``.

One safetensors file (no pickle), readable without PyTorch. Its JSON header is stored in the
safetensors metadata under the key ``"fieldcraft_octree"``:

- ``format``: this module's :data:`FORMAT_VERSION` (a file of a newer format is refused);
- ``kind``: ``"sparse-voxel-grid"``;
- ``resolution`` ``R``: voxels along each axis of the box (a multiple of ``brick``);
- ``brick`` ``B``: voxels along each axis of a brick (the unit of sparsity);
- ``aabb``: ``[[min x, y, z], [max x, y, z]]``, the box the grid spans (world units);
- ``sh_degree`` ``D``: highest spherical-harmonic band; ``K = (D + 1)^2`` coefficients per channel;
- ``background``: RGB the renders are composited on (the field's evaluation background);
- ``near``, ``far``: ray distance bounds of the dataset;
- ``source``: what was baked (run directory, step, settings), for people to read.

Tensors (``N`` bricks, ``B^3`` voxels each, voxel ``(i, j, k)`` of a brick at flat position
``(i B + j) B + k``, ``i`` along x):

- ``bricks``: ``int16 [N, 3]``, each brick's cell in the coarse ``(R / B)^3`` grid (unique);
- ``density``: ``float16 [N, B^3]``, volume density (per world unit, >= 0, finite);
- ``sh``: ``float16 [N, B^3, 3, K]``, SH coefficients of each colour channel.

Voxel ``(x, y, z)`` of the grid spans ``aabb[0] + [x, x + 1] * (aabb[1] - aabb[0]) / R`` along x (and
so on) and holds one density and one view-dependent colour, ``clamp(sum_k sh[c, k] Y_k(d), 0, 1)``
for unit view direction ``d`` and the real SH basis ``Y`` of
:func:`fieldcraft.encodings.spherical_harmonics.spherical_harmonics` (bands ``l <= D``).
Voxels outside the listed bricks are empty.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float, Int

from fieldcraft.errors import FieldcraftError, check

META_KEY = "fieldcraft_octree"
FORMAT_VERSION = 1
KIND = "sparse-voxel-grid"
MAX_SH_DEGREE = 3
FLOAT16_MAX = 65504.0


@dataclasses.dataclass
class Octree:
    """A baked field in memory (see the module docstring for every field's meaning).

    - ``bricks``: ``int [N, 3]`` coarse cells; ``density``: ``float32 [N, B^3]``;
      ``sh``: ``float32 [N, B^3, 3, K]``; ``aabb``: ``float64 [2, 3]``; ``background``: ``float32 [3]``.
    """

    bricks: Int[np.ndarray, "N 3"]
    density: Float[np.ndarray, "N V"]
    sh: Float[np.ndarray, "N V 3 K"]
    resolution: int
    brick: int
    aabb: Float[np.ndarray, "2 3"]
    sh_degree: int
    background: Float[np.ndarray, " 3"]
    near: float = 0.0
    far: float = 1e10
    source: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def coarse(self) -> int:
        """Bricks along each axis (``R / B``)."""
        return self.resolution // self.brick

    @property
    def voxel_size(self) -> Float[np.ndarray, " 3"]:
        return (self.aabb[1] - self.aabb[0]) / self.resolution

    def brick_index(self) -> Int[np.ndarray, " C3"]:
        """Flat ``int32 [C^3]`` map from coarse cell ``(i C + j) C + k`` to its brick (-1: empty)."""
        c = self.coarse
        index = np.full(c**3, -1, np.int32)
        b = self.bricks.astype(np.int64)
        index[(b[:, 0] * c + b[:, 1]) * c + b[:, 2]] = np.arange(len(b), dtype=np.int32)
        return index

    def header(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "kind": KIND, "resolution": self.resolution, "brick": self.brick,
                "aabb": np.asarray(self.aabb, np.float64).tolist(), "sh_degree": self.sh_degree,
                "background": [float(v) for v in self.background], "near": float(self.near), "far": float(self.far),
                "bricks": len(self.bricks), "source": self.source}


def sh_coefficients(degree: int) -> int:
    """Coefficients per channel of SH bands ``l <= degree``.

    >>> [sh_coefficients(d) for d in range(4)]
    [1, 4, 9, 16]
    """
    return (degree + 1) ** 2


def validate(tree: Octree, where: str) -> None:
    """Raise one line naming ``where`` unless ``tree`` is consistent (shapes, ranges, finiteness)."""
    r, b = tree.resolution, tree.brick
    check(isinstance(r, int) and isinstance(b, int) and b >= 1 and r >= b and r % b == 0 and r // b <= 32767,
          f"{where}: resolution {r!r} must be a positive multiple of the brick size {b!r} (at most 32767 bricks a side)")
    check(isinstance(tree.sh_degree, int) and 0 <= tree.sh_degree <= MAX_SH_DEGREE,
          f"{where}: sh_degree must be 0..{MAX_SH_DEGREE}, got {tree.sh_degree!r}")
    aabb = np.asarray(tree.aabb, np.float64)
    check(aabb.shape == (2, 3) and bool(np.isfinite(aabb).all()) and bool((aabb[1] > aabb[0]).all()),
          f"{where}: 'aabb' must be [[min x, y, z], [max x, y, z]] with max > min")
    bg = np.asarray(tree.background)
    check(bg.shape == (3,) and bool(np.isfinite(bg).all()), f"{where}: 'background' must be 3 finite numbers")
    check(math.isfinite(tree.near) and math.isfinite(tree.far) and 0 <= tree.near < tree.far,
          f"{where}: need 0 <= near < far, got near {tree.near}, far {tree.far}")
    n, v, k = len(tree.bricks), b**3, sh_coefficients(tree.sh_degree)
    check(tree.bricks.shape == (n, 3), f"{where}: 'bricks' must be [N, 3], got {tree.bricks.shape}")
    check(tree.density.shape == (n, v), f"{where}: 'density' must be [{n}, {v}], got {tree.density.shape}")
    check(tree.sh.shape == (n, v, 3, k), f"{where}: 'sh' must be [{n}, {v}, 3, {k}], got {tree.sh.shape}")
    if n:
        c = r // b
        check(int(tree.bricks.min()) >= 0 and int(tree.bricks.max()) < c,
              f"{where}: brick coordinates must lie in 0..{c - 1}")
        flat = (tree.bricks.astype(np.int64)[:, 0] * c + tree.bricks[:, 1]) * c + tree.bricks[:, 2]
        check(len(np.unique(flat)) == n, f"{where}: a brick is listed twice")
    check(bool(np.isfinite(tree.density).all()) and float(tree.density.min(initial=0.0)) >= 0,
          f"{where}: densities must be finite and >= 0")
    check(bool(np.isfinite(tree.sh).all()), f"{where}: SH coefficients must be finite")


def save_octree(path: str | Path, tree: Octree) -> Path:
    """Write ``tree`` atomically as float16 values (densities clipped to the float16 range)."""
    from safetensors.numpy import save_file

    from fieldcraft.io.checkpoint import atomic_write
    from fieldcraft.io.records import dumps

    path = Path(path)
    validate(tree, str(path))
    tensors = {"bricks": np.ascontiguousarray(tree.bricks, np.int16),
               "density": np.ascontiguousarray(np.minimum(tree.density, FLOAT16_MAX), np.float16),
               "sh": np.ascontiguousarray(np.clip(tree.sh, -FLOAT16_MAX, FLOAT16_MAX), np.float16)}
    header = dumps(tree.header(), indent=None)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={META_KEY: header}))
    return path


def load_octree(path: str | Path) -> Octree:
    """Read a file written by :func:`save_octree` (values as float32); one line for a missing,
    corrupt or inconsistent file, or one of a newer format."""
    from fieldcraft.io.checkpoint import read_headed_safetensors

    path = Path(path)
    if not path.is_file():
        raise FieldcraftError(f"{path}: no such octree file (write one with 'fieldcraft export nerf DIR --format octree')")
    arrays, meta = read_headed_safetensors(path, META_KEY, "octree file")
    version = meta.get("format")
    check(isinstance(version, int) and not isinstance(version, bool) and version >= 1,
          f"{path}: malformed octree header ('format' must be a positive integer, got {version!r:.40})")
    check(version <= FORMAT_VERSION, f"{path}: octree format {version} is newer than this fieldcraft reads "
                                      f"(up to {FORMAT_VERSION}); upgrade fieldcraft")
    check(meta.get("kind") == KIND, f"{path}: octree kind {meta.get('kind')!r:.40} is not {KIND!r}")
    missing = sorted({"bricks", "density", "sh"} - set(arrays))
    check(not missing, f"{path}: malformed octree file (missing tensors {', '.join(missing)})")
    check(arrays["bricks"].dtype.kind in "iu", f"{path}: 'bricks' must hold integers, got {arrays['bricks'].dtype}")
    try:
        tree = Octree(bricks=arrays["bricks"].astype(np.int32), density=arrays["density"].astype(np.float32),
                      sh=arrays["sh"].astype(np.float32), resolution=meta["resolution"], brick=meta["brick"],
                      aabb=np.asarray(meta["aabb"], np.float64), sh_degree=meta["sh_degree"],
                      background=np.asarray(meta["background"], np.float32), near=float(meta["near"]),
                      far=float(meta["far"]), source=dict(meta.get("source") or {}))
    except (KeyError, TypeError, ValueError) as exc:
        from fieldcraft.errors import describe

        raise FieldcraftError(f"{path}: malformed octree header ({describe(exc)})") from None
    validate(tree, str(path))
    return tree
