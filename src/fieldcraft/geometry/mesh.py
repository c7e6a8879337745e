"""Shapes in: triangle meshes (OBJ, PLY, STL, GLB, OFF via trimesh) and oriented point clouds
(PLY with ``nx ny nz``), validated, and normalised into ``[-1, 1]^3`` with the transform kept.

Normalisation (:class:`Normalisation`): ``x_n = (x - centre) * scale`` with ``centre`` the
centre of the axis-aligned bounding box and ``scale = 2 (1 - margin) / max extent``, so the
longest side spans ``[-(1 - margin), 1 - margin]``. ``margin = 0`` is the convention of the
metrics (the ground truth's box mapped onto ``[-1, 1]^3``); fitting uses a small margin so the
surface stays away from the boundary of the cube where grid encodings clamp.

Loading merges duplicate vertices, UV seams included (``merge_vertices(merge_tex=True)``:
Spot the cow is only watertight after that), and drops unreferenced vertices.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float, Int

from fieldcraft.errors import FieldcraftError

MESH_SUFFIXES = (".obj", ".ply", ".stl", ".glb", ".gltf", ".off")


@dataclasses.dataclass(frozen=True)
class Shape:
    """A triangle mesh (``faces`` set) or an oriented point cloud (``faces`` None, ``normals`` set).

    ``vertices [V, 3]`` float64; ``faces [F, 3]`` int64; ``normals [V, 3]`` unit normals of a
    point cloud (None for meshes); ``source``: where it came from (for messages).
    """

    vertices: Float[np.ndarray, "V 3"]
    faces: Int[np.ndarray, "F 3"] | None = None
    normals: Float[np.ndarray, "V 3"] | None = None
    source: str = "<memory>"

    @property
    def is_mesh(self) -> bool:
        return self.faces is not None

    def trimesh(self):
        """The mesh as a ``trimesh.Trimesh`` (meshes only)."""
        import trimesh

        if self.faces is None:
            raise FieldcraftError(f"{self.source}: is a point cloud, a mesh is needed here")
        return trimesh.Trimesh(self.vertices, self.faces, process=False)


@dataclasses.dataclass(frozen=True)
class Normalisation:
    """``x_n = (x - centre) * scale`` maps input coordinates into the unit cube; :meth:`inverse`
    maps back. ``centre`` is a 3-tuple, ``scale`` a positive float."""

    centre: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0

    def apply(self, x: Float[np.ndarray, "*batch 3"]) -> Float[np.ndarray, "*batch 3"]:
        """Input coordinates -> normalised.

        >>> Normalisation((1.0, 0.0, 0.0), 2.0).apply(np.array([2.0, 1.0, 0.0])).tolist()
        [2.0, 2.0, 0.0]
        """
        return (np.asarray(x, dtype=np.float64) - np.asarray(self.centre)) * self.scale

    def inverse(self, x: Float[np.ndarray, "*batch 3"]) -> Float[np.ndarray, "*batch 3"]:
        """Normalised coordinates -> input coordinates (distances scale by ``1 / scale``)."""
        return np.asarray(x, dtype=np.float64) / self.scale + np.asarray(self.centre)

    def to_dict(self) -> dict[str, Any]:
        return {"centre": [float(c) for c in self.centre], "scale": float(self.scale)}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Normalisation:
        return Normalisation(tuple(float(c) for c in d["centre"]), float(d["scale"]))  # type: ignore[arg-type]


def bounding_box_normalisation(vertices: Float[np.ndarray, "V 3"], margin: float = 0.0) -> Normalisation:
    """The normalisation mapping the bounding box of ``vertices`` into ``[-(1-margin), 1-margin]^3``
    (centred, uniform scale by the longest side).

    >>> n = bounding_box_normalisation(np.array([[0.0, 0, 0], [4, 2, 2]]))
    >>> n.apply(np.array([[0.0, 0, 0], [4, 2, 2]])).tolist()
    [[-1.0, -0.5, -0.5], [1.0, 0.5, 0.5]]
    """
    lo, hi = vertices.min(0), vertices.max(0)
    extent = float((hi - lo).max())
    if not extent > 0:
        raise FieldcraftError("shape has zero extent (all vertices coincide)")
    centre = tuple(float(c) for c in 0.5 * (lo + hi))
    return Normalisation(centre, 2.0 * (1.0 - margin) / extent)  # type: ignore[arg-type]


def normalise(shape: Shape, margin: float = 0.05) -> tuple[Shape, Normalisation]:
    """Shape moved into the unit cube by its bounding box, and the transform used."""
    norm = bounding_box_normalisation(shape.vertices, margin)
    return transform(shape, norm), norm


def transform(shape: Shape, norm: Normalisation) -> Shape:
    """Apply ``norm`` to a shape's vertices (normals are unchanged by translation + uniform scale)."""
    return dataclasses.replace(shape, vertices=norm.apply(shape.vertices))


def load_shape(path: str | Path) -> Shape:
    """Read and validate a mesh or an oriented point cloud. Raises :class:`FieldcraftError` with one
    line naming the file for: missing/unreadable files, empty geometry, NaN/inf coordinates,
    out-of-range face indices, non-manifold edges (shared by more than two faces), and point
    clouds without normals."""
    import trimesh

    path = Path(path)
    if not path.exists():
        raise FieldcraftError(f"{path}: no such file")
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise FieldcraftError(f"{path}: unsupported shape format {path.suffix!r} (use {', '.join(MESH_SUFFIXES)})")
    try:
        loaded = trimesh.load(str(path), process=False)
    except Exception as exc:  # trimesh raises many types for bad files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FieldcraftError(f"{path}: unreadable {path.suffix[1:].upper()} file ({msg})") from None
    if isinstance(loaded, trimesh.Scene):
        geoms = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)] if loaded.geometry else []
        if not geoms:
            raise FieldcraftError(f"{path}: contains no triangle mesh (empty, or not a valid "
                                  f"{path.suffix[1:].upper()} file)")
        loaded = trimesh.util.concatenate(geoms)
    if isinstance(loaded, trimesh.PointCloud):
        return _point_cloud(loaded, path)
    if not isinstance(loaded, trimesh.Trimesh):
        raise FieldcraftError(f"{path}: not a triangle mesh or point cloud ({type(loaded).__name__})")
    if len(loaded.faces) == 0:
        if len(loaded.vertices) > 0 and path.suffix.lower() == ".ply":
            return _point_cloud(trimesh.PointCloud(loaded.vertices, metadata=loaded.metadata), path)
        raise FieldcraftError(f"{path}: empty mesh (no faces)")
    return validate_mesh(np.asarray(loaded.vertices), np.asarray(loaded.faces), str(path), merge=True)


def validate_mesh(vertices: np.ndarray, faces: np.ndarray, source: str = "<memory>", merge: bool = True) -> Shape:
    """Checks of :func:`load_shape` on in-memory arrays; ``merge`` welds duplicate vertices."""
    import trimesh

    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise FieldcraftError(f"{source}: empty mesh or vertices not of shape [V, 3] (got {v.shape})")
    if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        raise FieldcraftError(f"{source}: empty mesh or faces not triangles [F, 3] (got {f.shape})")
    if not np.isfinite(v).all():
        bad = int((~np.isfinite(v)).any(1).sum())
        raise FieldcraftError(f"{source}: {bad} vertices have NaN or infinite coordinates")
    if f.min() < 0 or f.max() >= len(v):
        raise FieldcraftError(f"{source}: face indices out of range [0, {len(v)})")
    mesh = trimesh.Trimesh(v, f.astype(np.int64), process=False)
    if merge:
        mesh.merge_vertices(merge_tex=True, merge_norm=True)
    keep = mesh.nondegenerate_faces() if hasattr(mesh, "nondegenerate_faces") else np.ones(len(mesh.faces), bool)
    if not keep.all():
        mesh.update_faces(keep)
    mesh.remove_unreferenced_vertices()
    if len(mesh.faces) == 0:
        raise FieldcraftError(f"{source}: empty mesh (all faces degenerate)")
    edges = np.sort(mesh.edges, axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    if (counts > 2).any():
        raise FieldcraftError(f"{source}: non-manifold mesh ({int((counts > 2).sum())} edges shared by more than two faces)")
    return Shape(np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64), None, source)


def _point_cloud(pc, path: Path) -> Shape:
    v = np.asarray(pc.vertices, dtype=np.float64)
    if len(v) == 0:
        raise FieldcraftError(f"{path}: empty point cloud")
    if not np.isfinite(v).all():
        raise FieldcraftError(f"{path}: point cloud has NaN or infinite coordinates")
    normals = None
    raw = pc.metadata.get("_ply_raw", {}) if hasattr(pc, "metadata") else {}
    data = raw.get("vertex", {}).get("data") if isinstance(raw, dict) else None
    if data is not None and data.dtype.names and {"nx", "ny", "nz"} <= set(data.dtype.names):
        normals = np.stack([data["nx"], data["ny"], data["nz"]], -1).astype(np.float64).reshape(-1, 3)
    if normals is None:
        raise FieldcraftError(f"{path}: point cloud without normals (need PLY vertex properties nx, ny, nz)")
    length = np.linalg.norm(normals, axis=1)
    if not np.isfinite(normals).all() or (length < 1e-12).any():
        raise FieldcraftError(f"{path}: point cloud normals contain NaN or zero vectors")
    return Shape(v, None, normals / length[:, None], str(path))


def save_mesh(path: str | Path, vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray | None = None) -> Path:
    """Write a triangle mesh atomically: binary little-endian PLY (float32 ``x y z``, with ``nx ny nz``
    if ``normals`` are given; faces as ``uchar`` counts and ``int32`` indices) or OBJ (``v``, ``vn``,
    1-based ``f v//vn``), chosen by the suffix."""
    from fieldcraft.io.checkpoint import atomic_write_bytes

    path = Path(path)
    kind = path.suffix.lower().lstrip(".")
    if kind not in ("ply", "obj"):
        raise FieldcraftError(f"{path}: mesh output must be .ply or .obj")
    v = np.asarray(vertices, np.float32).reshape(-1, 3)
    f = np.asarray(faces, np.int64).reshape(-1, 3)
    n = None if normals is None else np.asarray(normals, np.float32).reshape(-1, 3)
    if kind == "ply":
        cols = np.hstack([v, n]) if n is not None else v
        face_rec = np.empty(len(f), dtype=[("n", "u1"), ("i", "<i4", (3,))])
        face_rec["n"], face_rec["i"] = 3, f
        header = ("ply\nformat binary_little_endian 1.0\ncomment written by fieldcraft\n"
                  f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n"
                  + ("property float nx\nproperty float ny\nproperty float nz\n" if n is not None else "")
                  + f"element face {len(f)}\nproperty list uchar int vertex_indices\nend_header\n")
        data = header.encode() + cols.astype("<f4").tobytes() + face_rec.tobytes()
    else:
        lines = ["# written by fieldcraft"] + [f"v {a:.7g} {b:.7g} {c:.7g}" for a, b, c in v.tolist()]
        if n is not None:
            lines += [f"vn {a:.6g} {b:.6g} {c:.6g}" for a, b, c in n.tolist()]
            lines += [f"f {a}//{a} {b}//{b} {c}//{c}" for a, b, c in (f + 1).tolist()]
        else:
            lines += [f"f {a} {b} {c}" for a, b, c in (f + 1).tolist()]
        data = ("\n".join(lines) + "\n").encode()
    atomic_write_bytes(path, data)
    return path


def save_point_cloud(path: str | Path, points: np.ndarray, normals: np.ndarray) -> Path:
    """Write an oriented point cloud as binary PLY with ``nx ny nz`` (readable by :func:`load_shape`)."""
    from fieldcraft.io.checkpoint import atomic_write_bytes

    pts = np.asarray(points, np.float32)
    nrm = np.asarray(normals, np.float32)
    rec = np.empty(len(pts), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")])
    for i, k in enumerate("xyz"):
        rec[k] = pts[:, i]
        rec["n" + k] = nrm[:, i]
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(pts)}\nproperty float x\nproperty float y\nproperty float z\n"
              "property float nx\nproperty float ny\nproperty float nz\nend_header\n")
    atomic_write_bytes(Path(path), header.encode() + rec.tobytes())
    return Path(path)
