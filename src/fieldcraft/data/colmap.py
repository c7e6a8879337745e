"""COLMAP sparse models (``cameras``, ``images``, ``points3D``; ``.bin`` or ``.txt``) read directly.

The formats are COLMAP's documented ones (``colmap/src/colmap/scene/reconstruction_io.cc``,
"Output format" in COLMAP's manual):

- ``cameras.bin``: ``uint64`` count, then per camera ``int32`` id, ``int32`` model id, ``uint64``
  width, height, ``float64`` parameters (as many as the model has); ``cameras.txt``: lines
  ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS...``.
- ``images.bin``: ``uint64`` count, then per image ``int32`` id, ``float64`` ``qw qx qy qz tx ty tz``
  (world-to-camera), ``int32`` camera id, the name (NUL-terminated), ``uint64`` number of 2-D points
  and that many ``(float64 x, float64 y, int64 point3D id)``; ``images.txt``: two lines per image,
  ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` and the 2-D points.
- ``points3D.bin``: ``uint64`` count, then per point ``uint64`` id, ``float64`` ``x y z``, ``uint8``
  ``r g b``, ``float64`` error, ``uint64`` track length and that many ``(int32 image id, int32
  point2D index)``; ``points3D.txt``: ``POINT3D_ID X Y Z R G B ERROR TRACK...``.

Camera models read: ``SIMPLE_PINHOLE`` (f, cx, cy), ``PINHOLE`` (fx, fy, cx, cy), ``SIMPLE_RADIAL``
(f, cx, cy, k), ``RADIAL`` (f, cx, cy, k1, k2), ``OPENCV`` (fx, fy, cx, cy, k1, k2, p1, p2) and
``OPENCV_FISHEYE`` (fx, fy, cx, cy, k1, k2, k3, k4); others are refused with one line.

:func:`load_colmap` turns a model into :class:`~fieldcraft.data.scene.PosedImages`: images sorted
by name (every 8th, 0, 8, ..., held out as ``val``/``test``), found in ``images/`` beside the
model (the dataset directory, or two levels above ``sparse/0``); world-to-camera poses in
COLMAP's OpenCV axes become OpenGL camera-to-world matrices; the world is then centred on the
point closest to all optical axes (the cameras' mean centre when they do not look inwards) and
scaled so the farthest camera is at distance 1 along an axis (as nerfstudio's COLMAP reader,
``max |centre| = 1``). Scene box: the 1st-99th percentile box of the 3-D points seen by at least
two images, joined with the cameras' box (at most ``[-4, 4]^3``); near 0.01, far 1000. The
scene counts as unbounded (:attr:`PosedImages.scene`).
"""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import numpy as np
import torch

from fieldcraft.data.cameras import Cameras, check_poses, look_centre
from fieldcraft.data.scene import PosedImages, present_frames, read_image, same_size, stack_images
from fieldcraft.errors import FieldcraftError

HOLDOUT_EVERY = 8
# model id -> (name, number of parameters)
MODELS = {0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5), 4: ("OPENCV", 8),
          5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5), 8: ("SIMPLE_RADIAL_FISHEYE", 4),
          9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12)}
MODEL_IDS = {name: (i, n) for i, (name, n) in MODELS.items()}
SUPPORTED = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "OPENCV_FISHEYE")


@dataclasses.dataclass
class ColmapCamera:
    """One COLMAP camera: ``model`` name, image ``width, height``, ``params`` as COLMAP lists them."""

    model: str
    width: int
    height: int
    params: list[float]


@dataclasses.dataclass
class ColmapImage:
    """One registered image: world-to-camera rotation ``qvec`` (w, x, y, z) and ``tvec``, its camera
    id and file ``name`` (relative to the image folder). 2-D points are not kept."""

    qvec: list[float]
    tvec: list[float]
    camera_id: int
    name: str


@dataclasses.dataclass
class ColmapModel:
    """A sparse model: ``cameras`` and ``images`` by id, ``points`` ``[p, 3]`` float64 and the number
    of images observing each (``track`` ``[p]``)."""

    cameras: dict[int, ColmapCamera]
    images: dict[int, ColmapImage]
    points: np.ndarray
    track: np.ndarray


def find_model(path: Path) -> tuple[Path, str] | None:
    """The folder holding a sparse model (``path``, ``path/sparse/0`` or ``path/sparse``) and its
    extension (``.bin`` preferred), or None."""
    for d in (path, path / "sparse" / "0", path / "sparse"):
        for ext in (".bin", ".txt"):
            if (d / f"cameras{ext}").is_file() and (d / f"images{ext}").is_file():
                return d, ext
    return None


class _Reader:
    """Little-endian reads from a bytes buffer with one-line errors for truncated files."""

    def __init__(self, path: Path) -> None:
        self.path, self.data, self.pos = path, path.read_bytes(), 0

    def read(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise FieldcraftError(f"{self.path}: truncated (needs {self.pos + size} bytes, has {len(self.data)})")
        out = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return out

    def skip(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise FieldcraftError(f"{self.path}: truncated (needs {self.pos + n} bytes, has {len(self.data)})")
        self.pos += n

    def name(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise FieldcraftError(f"{self.path}: truncated (an image name has no terminating NUL)")
        out = self.data[self.pos:end].decode("utf-8", errors="replace")
        self.pos = end + 1
        return out


def _camera(path: Path, model: str, width: float, height: float, params: list[float]) -> ColmapCamera:
    if model not in MODEL_IDS:
        raise FieldcraftError(f"{path}: unknown camera model {model!r}")
    if len(params) != MODEL_IDS[model][1]:
        raise FieldcraftError(f"{path}: camera model {model} has {MODEL_IDS[model][1]} parameters, got {len(params)}")
    if not (width >= 1 and height >= 1) or not np.isfinite(params).all():
        raise FieldcraftError(f"{path}: a {model} camera has size {width}x{height} or non-finite parameters")
    return ColmapCamera(model, int(width), int(height), [float(p) for p in params])


def read_cameras(path: Path) -> dict[int, ColmapCamera]:
    """``cameras.bin`` or ``cameras.txt`` (module docstring)."""
    if path.suffix == ".txt":
        out = {}
        for line in _lines(path):
            f = line.split()
            try:
                out[int(f[0])] = _camera(path, f[1], float(f[2]), float(f[3]), [float(v) for v in f[4:]])
            except (ValueError, IndexError):
                raise FieldcraftError(f"{path}: malformed camera line {line!r:.80}") from None
        return out
    r = _Reader(path)
    out = {}
    for _ in range(r.read("Q")[0]):
        cam_id, model_id, width, height = r.read("iiQQ")
        if model_id not in MODELS:
            raise FieldcraftError(f"{path}: unknown camera model id {model_id}")
        name, n = MODELS[model_id]
        out[cam_id] = _camera(path, name, width, height, list(r.read(f"{n}d")))
    return out


def read_images(path: Path) -> dict[int, ColmapImage]:
    """``images.bin`` or ``images.txt`` (module docstring)."""
    out = {}
    if path.suffix == ".txt":
        lines = _lines(path, keep_empty=True)
        for k in range(0, len(lines), 2):
            f = lines[k].split(maxsplit=9)
            try:
                out[int(f[0])] = ColmapImage([float(v) for v in f[1:5]], [float(v) for v in f[5:8]], int(f[8]), f[9])
            except (ValueError, IndexError):
                raise FieldcraftError(f"{path}: malformed image line {lines[k]!r:.80}") from None
        return out
    r = _Reader(path)
    for _ in range(r.read("Q")[0]):
        image_id, *pose, cam_id = r.read("i7di")
        name = r.name()
        r.skip(24 * r.read("Q")[0])
        out[image_id] = ColmapImage(list(pose[:4]), list(pose[4:]), cam_id, name)
    return out


def read_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``points3D.bin`` or ``.txt``: positions ``[p, 3]`` and track lengths ``[p]`` (empty if missing)."""
    if not path.is_file():
        return np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
    pts, track = [], []
    if path.suffix == ".txt":
        for line in _lines(path):
            f = line.split()
            try:
                pts.append([float(v) for v in f[1:4]])
            except (ValueError, IndexError):
                raise FieldcraftError(f"{path}: malformed point line {line!r:.80}") from None
            track.append((len(f) - 8) // 2)
    else:
        r = _Reader(path)
        for _ in range(r.read("Q")[0]):
            _, x, y, z, _, _, _, _ = r.read("Q3d3Bd")
            n = r.read("Q")[0]
            r.skip(8 * n)
            pts.append([x, y, z])
            track.append(n)
    return np.array(pts, dtype=np.float64).reshape(-1, 3), np.array(track, dtype=np.int64)


def _lines(path: Path, keep_empty: bool = False) -> list[str]:
    """Lines of a COLMAP text file without comments (``#``); ``keep_empty`` keeps empty lines
    after the first data line (``images.txt``: an image without 2-D points has an empty second line)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise FieldcraftError(f"{path}: cannot read ({exc})") from None
    lines = [ln.rstrip("\n") for ln in text.splitlines() if not ln.startswith("#")]
    return lines if keep_empty else [ln for ln in lines if ln.strip()]


def read_model(folder: Path, ext: str = ".bin") -> ColmapModel:
    """The sparse model in ``folder`` (``cameras``, ``images``, optional ``points3D`` with ``ext``)."""
    cameras = read_cameras(folder / f"cameras{ext}")
    images = read_images(folder / f"images{ext}")
    points, track = read_points(folder / f"points3D{ext}")
    for i, im in images.items():
        if im.camera_id not in cameras:
            raise FieldcraftError(f"{folder / f'images{ext}'}: image {i} ({im.name}) names camera {im.camera_id}, "
                                  f"which cameras{ext} does not have")
    if not images:
        raise FieldcraftError(f"{folder / f'images{ext}'}: no registered images")
    return ColmapModel(cameras, images, points, track)


def write_model(folder: Path, model: ColmapModel, ext: str = ".bin") -> None:
    """Write ``model`` in COLMAP's format (``.bin`` or ``.txt``; images without 2-D points, points
    with empty tracks of the stated lengths as ``(0, 0)`` pairs, colour 128, error 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    if ext == ".txt":
        (folder / "cameras.txt").write_text("# Camera list\n" + "".join(
            f"{i} {c.model} {c.width} {c.height} {' '.join(repr(p) for p in c.params)}\n" for i, c in model.cameras.items()))
        (folder / "images.txt").write_text("# Image list\n" + "".join(
            f"{i} {' '.join(repr(v) for v in im.qvec + im.tvec)} {im.camera_id} {im.name}\n\n"
            for i, im in model.images.items()))
        (folder / "points3D.txt").write_text("".join(
            f"{k + 1} {p[0]!r} {p[1]!r} {p[2]!r} 128 128 128 0.0{' 0 0' * int(t)}\n"
            for k, (p, t) in enumerate(zip(model.points.tolist(), model.track.tolist()))))
        return
    cams = [struct.pack("<Q", len(model.cameras))] + [
        struct.pack(f"<iiQQ{len(c.params)}d", i, MODEL_IDS[c.model][0], c.width, c.height, *c.params)
        for i, c in model.cameras.items()]
    (folder / "cameras.bin").write_bytes(b"".join(cams))
    ims = [struct.pack("<Q", len(model.images))] + [
        struct.pack("<i7di", i, *im.qvec, *im.tvec, im.camera_id) + im.name.encode() + b"\0" + struct.pack("<Q", 0)
        for i, im in model.images.items()]
    (folder / "images.bin").write_bytes(b"".join(ims))
    pts = [struct.pack("<Q", len(model.points))] + [
        struct.pack("<Q3d3BdQ", k + 1, *p, 128, 128, 128, 0.0, int(t)) + b"\0" * (8 * int(t))
        for k, (p, t) in enumerate(zip(model.points.tolist(), model.track.tolist()))]
    (folder / "points3D.bin").write_bytes(b"".join(pts))


def qvec_to_rotation(q: np.ndarray) -> np.ndarray:
    """Rotation matrices ``[n, 3, 3]`` of unit quaternions ``[n, 4]`` ``(w, x, y, z)`` (normalised first).

    >>> qvec_to_rotation(np.array([[0.0, 0.0, 0.0, 1.0]])).round(6).tolist()    # 180 degrees about z
    [[[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]]
    """
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)], -2)


def rotation_to_qvec(r: np.ndarray) -> np.ndarray:
    """Unit quaternions ``[n, 4]`` ``(w, x, y, z)`` of rotation matrices ``[n, 3, 3]`` (inverse of
    :func:`qvec_to_rotation` up to sign)."""
    from scipy.spatial.transform import Rotation

    xyzw = Rotation.from_matrix(r).as_quat()
    return np.concatenate([xyzw[:, 3:], xyzw[:, :3]], 1)


def intrinsics(cam: ColmapCamera) -> tuple[list[float], list[float], bool]:
    """``(fx, fy, cx, cy)``, ``(k1, k2, k3, k4, p1, p2)`` and fisheye flag of a supported camera."""
    p = cam.params
    if cam.model == "SIMPLE_PINHOLE":
        return [p[0], p[0], p[1], p[2]], [0.0] * 6, False
    if cam.model == "PINHOLE":
        return p[:4], [0.0] * 6, False
    if cam.model == "SIMPLE_RADIAL":
        return [p[0], p[0], p[1], p[2]], [p[3], 0, 0, 0, 0, 0], False
    if cam.model == "RADIAL":
        return [p[0], p[0], p[1], p[2]], [p[3], p[4], 0, 0, 0, 0], False
    if cam.model == "OPENCV":
        return p[:4], [p[4], p[5], 0, 0, p[6], p[7]], False
    if cam.model == "OPENCV_FISHEYE":
        return p[:4], [p[4], p[5], p[6], p[7], 0, 0], True
    raise FieldcraftError(f"camera model {cam.model} is not supported (use one of {', '.join(SUPPORTED)}; "
                          "COLMAP's image_undistorter writes PINHOLE)")


def colmap_c2w(model: ColmapModel, ids: list[int]) -> np.ndarray:
    """OpenGL camera-to-world ``[n, 3, 4]`` of images ``ids`` (COLMAP: ``x_cam = R x_world + t``,
    camera axes right, down, forward)."""
    rot = qvec_to_rotation(np.array([model.images[i].qvec for i in ids]))
    t = np.array([model.images[i].tvec for i in ids])
    c2w = np.concatenate([rot.transpose(0, 2, 1), -np.einsum("nji,nj->ni", rot, t)[:, :, None]], 2)
    c2w[:, :, 1:3] *= -1  # OpenCV (y down, z forward) -> OpenGL (y up, looking down -z)
    return c2w


def normalisation(c2w: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre (the point the cameras look at, :func:`fieldcraft.data.cameras.look_centre`) and
    scale (``1 / max |centre of camera - centre|``)."""
    centre = look_centre(torch.from_numpy(c2w)).numpy()
    spread = np.abs(c2w[:, :, 3] - centre).max()
    return centre, 1.0 / spread if spread > 0 else 1.0


def load_colmap(root: str | Path, split: str = "train", max_images: int | None = None, *, downscale: int = 1,
                skip_missing: bool = False) -> PosedImages:
    """Read one split of the COLMAP model found in ``root`` (module docstring)."""
    root = Path(root)
    found = find_model(root)
    if found is None:
        raise FieldcraftError(f"{root}: no COLMAP sparse model (cameras and images .bin/.txt) here or in sparse/0")
    folder, ext = found
    model = read_model(folder, ext)
    image_dir = next((d / "images" for d in (root, folder.parent, folder.parent.parent) if (d / "images").is_dir()), None)
    if image_dir is None:
        raise FieldcraftError(f"{root}: no images/ folder beside the COLMAP model {folder}")
    ids = sorted(model.images, key=lambda i: model.images[i].name)
    c2w_all = colmap_c2w(model, ids)
    check_poses(torch.from_numpy(c2w_all), str(folder / f"images{ext}"), [model.images[i].name for i in ids])
    centre, scale = normalisation(c2w_all)
    keep = [k for k in range(len(ids)) if (k % HOLDOUT_EVERY == 0) == (split != "train")]
    if not keep:
        raise FieldcraftError(f"{folder / f'images{ext}'}: split {split!r} is empty")
    shrunk = downscale > 1 and (image_dir.parent / f"images_{downscale}").is_dir()
    base = image_dir.parent / f"images_{downscale}" if shrunk else image_dir
    paths = [base / model.images[ids[k]].name for k in keep]
    present = present_frames(paths, [f"image {model.images[ids[k]].name}" for k in keep], folder / f"images{ext}",
                             skip_missing)
    keep = [keep[i] for i in present]
    if max_images is not None:
        keep = keep[:max_images]
    arrays, intr, dist, fisheye = [], [], [], []
    for k in keep:
        im = model.images[ids[k]]
        cam = model.cameras[im.camera_id]
        try:
            f, d, fe = intrinsics(cam)
        except FieldcraftError as exc:
            raise FieldcraftError(f"{folder / f'cameras{ext}'}: camera {im.camera_id}: {exc}") from None
        arr = read_image(base / im.name, 1 if shrunk else downscale, uint8=True)
        want = (cam.height // downscale, cam.width // downscale)
        if not all(abs(a - b) <= (1 if shrunk else 0) for a, b in zip(arr.shape[:2], want)):
            raise FieldcraftError(f"{base / im.name}: image is {arr.shape[1]}x{arr.shape[0]}, camera {im.camera_id} "
                                  f"says {cam.width}x{cam.height}" + (f" (/{downscale}: {want[1]}x{want[0]})"
                                                                      if downscale > 1 else ""))
        arrays.append(arr)
        intr.append([v / downscale for v in f])
        dist.append(d)
        fisheye.append(fe)
    arrays, it = same_size(arrays, np.array(intr))
    names = [model.images[ids[k]].name for k in keep]
    images = stack_images(arrays, [base / n for n in names])
    c2w = c2w_all[keep].copy()
    c2w[:, :, 3] = (c2w[:, :, 3] - centre) * scale
    cams = Cameras(torch.from_numpy(c2w).float(), *torch.tensor(it, dtype=torch.float32).T, images.shape[2],
                   images.shape[1], torch.tensor(dist, dtype=torch.float32), torch.tensor(fisheye))
    cams_all = (c2w_all[:, :, 3] - centre) * scale
    pts = (model.points[model.track >= 2] - centre) * scale
    lo, hi = cams_all.min(0), cams_all.max(0)
    if len(pts) >= 10:
        lo, hi = np.minimum(lo, np.percentile(pts, 1, axis=0)), np.maximum(hi, np.percentile(pts, 99, axis=0))
    pad = 0.05 * (hi - lo).max()
    aabb = torch.tensor(np.stack([np.maximum(lo - pad, -4.0), np.minimum(hi + pad, 4.0)]), dtype=torch.float32)
    return PosedImages(images, cams, names, 0.01, 1e3, aabb, False, str(folder / f"images{ext}"), "colmap",
                       scene="unbounded")
