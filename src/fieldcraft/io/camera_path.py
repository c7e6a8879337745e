"""Camera path files in nerfstudio's ``camera_path.json`` layout: written by ``fieldcraft view``
(its "export camera path" button), read by ``fieldcraft render nerf DIR --path FILE``.

Layout (a JSON object; other keys are kept by writers and ignored by :func:`read_camera_path`)::

    {"camera_type": "perspective", "render_width": W, "render_height": H, "fps": F, "seconds": S,
     "camera_path": [{"camera_to_world": [16 numbers, a 4x4 matrix row by row], "fov": degrees,
                      "aspect": W / H}, ...],
     "keyframes": [{"camera_to_world": [...], "fov": degrees, "aspect": W / H}, ...]}

- ``camera_to_world``: fieldcraft's camera convention (:mod:`fieldcraft.data.cameras`: OpenGL axes,
  x right, y up, the camera looks down -z) in the scene's world coordinates as fieldcraft reads the
  dataset (for Blender data, the ``transforms_*.json`` frame).
- ``fov``: the *vertical* field of view in degrees; pixels are square, so the focal length in
  pixels is ``fx = fy = H / (2 tan(fov / 2))`` and the principal point the image centre
  (:func:`focal_length`).
- ``camera_path`` holds every frame to render; ``keyframes`` the cameras the user placed
  (:func:`camera_path_record` interpolates frames between them).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float

from fieldcraft.errors import FieldcraftError

MAX_SIZE = 8192


@dataclasses.dataclass(frozen=True)
class CameraPath:
    """The frames of a camera path file.

    - ``c2w``: ``float64 [n, 4, 4]`` camera-to-world matrices (module docstring).
    - ``fov``: ``float64 [n]`` vertical fields of view in degrees.
    - ``width``, ``height``: image size in pixels; ``fps``: frames per second of the video.
    """

    c2w: Float[np.ndarray, "n 4 4"]
    fov: Float[np.ndarray, " n"]
    width: int
    height: int
    fps: float

    def __len__(self) -> int:
        return len(self.c2w)

    def intrinsics(self, k: int) -> tuple[float, float, float, float]:
        """``(fx, fy, cx, cy)`` in pixels of frame ``k``."""
        f = focal_length(float(self.fov[k]), self.height)
        return f, f, 0.5 * self.width, 0.5 * self.height


def focal_length(fov_deg: float, height: int) -> float:
    """Focal length in pixels of a vertical field of view ``fov_deg`` over ``height`` pixels.

    >>> round(focal_length(90.0, 100), 6)
    50.0
    """
    return 0.5 * height / math.tan(0.5 * math.radians(fov_deg))


def fov_of_focal(fy: float, height: int) -> float:
    """The vertical field of view in degrees of focal length ``fy`` (pixels) over ``height`` pixels.

    >>> round(fov_of_focal(50.0, 100), 6)
    90.0
    """
    return math.degrees(2.0 * math.atan(0.5 * height / fy))


def read_camera_path(path: str | Path) -> CameraPath:
    """The frames of the camera path file ``path``; a missing, unreadable or malformed file raises
    :class:`~fieldcraft.errors.FieldcraftError` naming the file and the problem."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise FieldcraftError(f"{path}: no such camera path file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FieldcraftError(f"{path}: not a camera path file (unreadable JSON: {exc})") from None
    return parse_camera_path(record, str(path))


def parse_camera_path(record: Any, where: str = "<camera path>") -> CameraPath:
    """:func:`read_camera_path` of a decoded JSON object (``where`` names it in errors).

    >>> eye = [1.0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0, 1.0, 3.0, 0, 0, 0, 1.0]
    >>> p = parse_camera_path({"render_width": 4, "render_height": 2, "fps": 24,
    ...                        "camera_path": [{"camera_to_world": eye, "fov": 90}]})
    >>> len(p), float(p.c2w[0, 2, 3]), [round(v, 6) for v in p.intrinsics(0)]
    (1, 3.0, [1.0, 1.0, 2.0, 1.0])
    """
    def fail(problem: str) -> FieldcraftError:
        return FieldcraftError(f"{where}: {problem}")

    if not isinstance(record, dict):
        raise fail("not a camera path file (expected a JSON object)")
    size = {}
    for key in ("render_width", "render_height"):
        v = record.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or not 1 <= v <= MAX_SIZE:
            raise fail(f"{key!r} must be a whole number of pixels in 1..{MAX_SIZE}, got {v!r:.40}")
        size[key] = int(v)
    fps = record.get("fps", 30)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise fail(f"'fps' must be a positive number, got {fps!r:.40}")
    frames = record.get("camera_path")
    if not isinstance(frames, list) or not frames:
        raise fail("'camera_path' must be a non-empty list of cameras")
    c2w, fov = [], []
    for k, cam in enumerate(frames):
        m = cam.get("camera_to_world") if isinstance(cam, dict) else None
        if not isinstance(m, list) or len(m) != 16 or not all(_number(x) for x in m):
            raise fail(f"camera_path[{k}]: 'camera_to_world' must be 16 finite numbers (a 4x4 matrix row by row)")
        f = cam.get("fov")
        if not _number(f) or not 0 < f < 180:
            raise fail(f"camera_path[{k}]: 'fov' must be a vertical field of view in degrees in (0, 180), got {f!r:.40}")
        matrix = np.asarray(m, np.float64).reshape(4, 4)
        if abs(np.linalg.det(matrix[:3, :3])) < 1e-9:
            raise fail(f"camera_path[{k}]: 'camera_to_world' has a singular rotation")
        c2w.append(matrix)
        fov.append(float(f))
    return CameraPath(np.stack(c2w), np.asarray(fov), size["render_width"], size["render_height"], float(fps))


def _number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


def interpolate_keyframes(c2w: Float[np.ndarray, "k 4 4"], fov: Float[np.ndarray, " k"], frames: int
                          ) -> tuple[Float[np.ndarray, "frames 4 4"], Float[np.ndarray, " frames"]]:
    """``frames`` cameras through ``k`` keyframes evenly spaced in time (the first and last frames
    are the first and last keyframes): camera centres and fields of view linearly, rotations by
    spherical linear interpolation (scipy's ``Slerp``). One keyframe: it, repeated.

    >>> a, b = np.eye(4), np.eye(4)
    >>> b[:3, 3] = [2.0, 0.0, 0.0]
    >>> m, f = interpolate_keyframes(np.stack([a, b]), np.array([40.0, 60.0]), 3)
    >>> m[1, :3, 3].tolist(), f.tolist()
    ([1.0, 0.0, 0.0], [40.0, 50.0, 60.0])
    """
    from scipy.spatial.transform import Rotation, Slerp

    c2w, fov = np.asarray(c2w, np.float64), np.asarray(fov, np.float64)
    if len(c2w) == 1 or frames == 1:
        return np.repeat(c2w[:1], frames, 0), np.repeat(fov[:1], frames)
    key_t = np.linspace(0.0, 1.0, len(c2w))
    t = np.linspace(0.0, 1.0, frames)
    out = np.repeat(np.eye(4)[None], frames, 0)
    out[:, :3, :3] = Slerp(key_t, Rotation.from_matrix(c2w[:, :3, :3]))(t).as_matrix()
    for i in range(3):
        out[:, i, 3] = np.interp(t, key_t, c2w[:, i, 3])
    return out, np.interp(t, key_t, fov)


def camera_path_record(c2w: Float[np.ndarray, "k 4 4"], fov: Float[np.ndarray, " k"], width: int, height: int,
                       fps: float = 30.0, seconds: float = 4.0) -> dict[str, Any]:
    """The camera path file (module docstring) through keyframes ``c2w`` / ``fov``: one keyframe
    is a one-frame path; ``k >= 2`` keyframes give ``max(2, round(seconds * fps))`` frames
    (:func:`interpolate_keyframes`).

    >>> r = camera_path_record(np.eye(4)[None], np.array([50.0]), 8, 4, fps=24)
    >>> len(r["camera_path"]), r["camera_path"][0]["aspect"], parse_camera_path(r).width
    (1, 2.0, 8)
    """
    c2w, fov = np.asarray(c2w, np.float64).reshape(-1, 4, 4), np.asarray(fov, np.float64).reshape(-1)
    frames = 1 if len(c2w) == 1 else max(2, int(round(seconds * fps)))
    mats, fovs = interpolate_keyframes(c2w, fov, frames)
    cam = lambda m, f: {"camera_to_world": [float(x) for x in m.reshape(-1)], "fov": float(f),  # noqa: E731
                        "aspect": width / height}
    record = {"camera_type": "perspective", "render_width": int(width), "render_height": int(height),
              "fps": float(fps), "seconds": frames / float(fps),
              "camera_path": [cam(m, f) for m, f in zip(mats, fovs)],
              "keyframes": [cam(m, f) for m, f in zip(c2w, fov)]}
    parse_camera_path(record)  # what is written is what render --path reads
    return record
