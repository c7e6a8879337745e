"""``fieldcraft view PATH``: orbit a fitted scene in the browser (docs/viewer.md).

PATH's kind decides the renderer (:func:`build_scene`): a ``fit nerf`` run directory (the
field), a baked ``.octree`` file, a ``fit sdf`` run directory (sphere tracing) or a mesh file
(sphere tracing of its distance). The server is :mod:`fieldcraft.viewer.server`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from fieldcraft.commands.common import add_device_argument, device_from_args
from fieldcraft.errors import FieldcraftError

if TYPE_CHECKING:  # registering the command imports no numpy or torch
    import numpy as np

TRACED_DISTANCE = 4.0  # SDF runs and meshes: the first camera's distance from the centre of [-1, 1]^3
SURFACE_OFFSET = 0.004  # meshes: the traced surface sits this far (normalised units) outside the triangles


def register(verbs: dict) -> None:
    from fieldcraft.cli import TOP_LEVEL

    v = verbs[TOP_LEVEL].add_parser(
        "view", help="orbit a fitted scene in the browser",
        description="Serve a local web page on which the mouse orbits (drag), pans (shift-drag or right-drag) and "
                    "zooms (wheel) a fitted scene, showing the render time of every frame; keyframes export a "
                    "camera path for 'render nerf DIR --path FILE' (docs/viewer.md).")
    v.add_argument("path", type=Path,
                   help="a 'fit nerf' or 'fit sdf' run directory, a baked .octree file ('export nerf --format "
                        "octree') or a mesh (.obj, .ply, .stl, .off, ...)")
    v.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any free port)")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    v.add_argument("--width", type=int, default=None,
                   help="picture width in pixels (default: the dataset's for NeRF runs, else 256)")
    v.add_argument("--height", type=int, default=None, help="picture height in pixels (default: as --width)")
    add_device_argument(v)
    v.add_argument("--quiet", action="store_true", help="do not log requests")
    v.set_defaults(func=_view)


def _view(args: argparse.Namespace) -> int:
    import sys

    from fieldcraft.viewer.server import serve

    for name in ("width", "height"):
        value = getattr(args, name)
        if value is not None and not 1 <= value <= 2048:
            raise FieldcraftError(f"--{name} must be in 1..2048, got {value}")
    scene = build_scene(args.path, args.width, args.height, device_from_args(args))

    def ready(url: str) -> None:
        print(f"fieldcraft view: {scene.kind} {scene.name} at {url} (Ctrl-C stops)", flush=True)

    serve(scene, args.host, args.port, ready=ready,
          log=None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True)))
    return 0


def build_scene(path: str | Path, width: int | None = None, height: int | None = None, device: str | None = None):
    """The :class:`~fieldcraft.viewer.server.Scene` of ``path`` (module docstring); anything else
    raises :class:`~fieldcraft.errors.FieldcraftError`."""
    from fieldcraft.geometry.mesh import MESH_SUFFIXES

    path = Path(path)
    if not path.exists():
        raise FieldcraftError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix.lower() == ".octree":
            return octree_scene(path, width, height, device)
        if path.suffix.lower() in MESH_SUFFIXES:
            return mesh_scene(path, width, height)
        raise FieldcraftError(f"{path}: cannot view this file (a run directory, a .octree file or a mesh "
                              f"({', '.join(MESH_SUFFIXES)}) can be viewed)")
    from fieldcraft.io.checkpoint import load_checkpoint_arrays

    _, meta = load_checkpoint_arrays(path, "\0")  # the header only
    task = meta.get("task")
    if task == "nerf":
        return nerf_scene(path, width, height, device)
    if task == "sdf":
        return sdf_scene(path, width, height, device)
    if task == "lightfield":
        return lightfield_scene(path, width, height, device)
    raise FieldcraftError(f"{path}: viewing a {task!r} run is not supported (nerf, lightfield and sdf runs, "
                          ".octree files and meshes are)")


# ---------------------------------------------------------------------------------------- cameras


def look_at(eye, target, up) -> np.ndarray:
    """Camera-to-world ``[4, 4]`` (OpenGL axes) at ``eye`` looking at ``target`` with ``up`` roughly up.

    >>> look_at([0, 0, 3], [0, 0, 0], [0, 1, 0])[:3].round(6).tolist()
    [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 3.0]]
    """
    import numpy as np

    eye, target, up = (np.asarray(v, np.float64) for v in (eye, target, up))
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, np.cross(back, right), back, eye
    return m


def _size(width: int | None, height: int | None, default: tuple[int, int]) -> tuple[int, int]:
    if width is None and height is None:
        return default
    return (width or height), (height or width)


def _posed_camera(data) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """``(c2w [4, 4], vertical fov, target, up)`` to start from for posed images: the first camera of
    :func:`fieldcraft.tasks.nerf.orbit_cameras` looking at the origin about the cameras' mean up
    (forward-facing scenes: the average pose, orbiting a point one unit ahead)."""
    import numpy as np

    from fieldcraft.io.camera_path import fov_of_focal
    from fieldcraft.tasks.nerf import orbit_cameras

    cams = orbit_cameras(data, 1)
    c2w = np.eye(4)
    c2w[:3] = cams.c2w[0].double().numpy()
    fov = fov_of_focal(float(cams.fy[0]), cams.height)
    if data.ndc:
        return c2w, fov, c2w[:3, 3] - c2w[:3, 2], c2w[:3, 1].copy()
    up = data.cameras.c2w[:, :, 1].double().mean(0).numpy()
    return c2w, fov, np.zeros(3), up / np.linalg.norm(up)


def _one_frame(c2w: np.ndarray, fov: float, width: int, height: int):
    import numpy as np

    from fieldcraft.io.camera_path import CameraPath

    return CameraPath(np.asarray(c2w, np.float64)[None], np.array([fov]), width, height, 30.0)


def _camera_path_file(path: Path) -> Path:
    """Where the viewer writes the camera path: inside a run directory, beside a file."""
    return path / "camera_path.json" if path.is_dir() else path.with_name(path.stem + ".camera_path.json")


# ----------------------------------------------------------------------------------------- scenes


def nerf_scene(run: Path, width: int | None, height: int | None, device: str | None):
    """A ``fit nerf`` run: its field, rendered as ``render nerf --path FILE`` renders it."""
    from fieldcraft.tasks.nerf.outputs import camera_path_cameras, field_frames, fitted_views, load_model
    from fieldcraft.viewer.server import Scene

    model, meta = load_model(run, device=device)
    data = fitted_views(meta, None, "train")
    c2w, fov, target, up = _posed_camera(data)
    w, h = _size(width, height, (data.width, data.height))

    def render(c2w: np.ndarray, fov: float, width: int, height: int) -> np.ndarray:
        return next(field_frames(model, camera_path_cameras(_one_frame(c2w, fov, width, height)), data.near, data.far))

    return Scene(run.name, "nerf", render, c2w, fov, w, h, target, up, _camera_path_file(run))


def lightfield_scene(run: Path, width: int | None, height: int | None, device: str | None):
    """A ``fit lightfield`` run: one network evaluation per ray
    (:func:`fieldcraft.tasks.lightfield.render_view`)."""
    from fieldcraft.tasks.lightfield import fitted_views, load_lightfield, render_view
    from fieldcraft.viewer.server import Scene

    model = load_lightfield(run, device)
    data = fitted_views(model.meta, None, "train")
    c2w, fov, target, up = _posed_camera(data)
    w, h = _size(width, height, (data.width, data.height))

    def render(c2w: np.ndarray, fov: float, width: int, height: int) -> np.ndarray:
        path = _one_frame(c2w, fov, width, height)
        return render_view(model, path.c2w[0], *path.intrinsics(0), width, height).float().cpu().numpy()

    return Scene(run.name, "lightfield", render, c2w, fov, w, h, target, up, _camera_path_file(run))


def octree_scene(file: Path, width: int | None, height: int | None, device: str | None):
    """A baked octree, rendered as ``render nerf --octree FILE --path FILE`` renders it. The first
    camera is the fitted run's (when the run named in the file is still there), else one looking at
    the grid's centre with +z up."""
    import numpy as np

    from fieldcraft.io.octree_file import load_octree
    from fieldcraft.render.octree import OctreeRenderer
    from fieldcraft.viewer.server import Scene

    tree = load_octree(file)
    renderer = OctreeRenderer(tree, device)
    size = (256, 256)
    aabb = np.asarray(tree.aabb, np.float64)
    centre, extent = aabb.mean(0), float((aabb[1] - aabb[0]).max())
    up = np.array([0.0, 0.0, 1.0])
    fov = 40.0
    c2w = look_at(centre + extent * np.array([0.9, -0.9, 0.6]), centre, up)
    target = centre
    run = tree.source.get("run") if isinstance(tree.source, dict) else None
    if isinstance(run, str) and (Path(run) / "checkpoint.safetensors").is_file():
        try:
            from fieldcraft.tasks.nerf.baked import run_header
            from fieldcraft.tasks.nerf.outputs import fitted_views

            data = fitted_views(run_header(run), None, "train")
            c2w, fov, target, up = _posed_camera(data)
            size = (data.width, data.height)
        except FieldcraftError:
            pass  # the run or its dataset moved: the default camera
    w, h = _size(width, height, size)
    renderer.render_camera(np.eye(4)[:3], 4.0, 4.0, 4.0, 4.0, 8, 8)  # compile or load the kernels now

    def render(c2w: np.ndarray, fov: float, width: int, height: int) -> np.ndarray:
        path = _one_frame(c2w, fov, width, height)
        return np.clip(renderer.render_camera(path.c2w[0, :3], *path.intrinsics(0), height, width)["rgb"], 0.0, 1.0)

    return Scene(file.name, "octree", render, c2w, fov, w, h, target, up, _camera_path_file(file))


def _traced_scene(name: str, kind: str, sdf, width: int | None, height: int | None, where: Path):
    """A signed distance ``sdf(points [n, 3] numpy) -> [n]`` over the cube ``[-1, 1]^3``, sphere traced
    (:func:`fieldcraft.render.sphere_tracing.render_sdf`), +y up, first seen from :data:`TRACED_DISTANCE`
    away, 20 degrees above the xz plane."""
    import numpy as np
    import torch

    from fieldcraft.render.sphere_tracing import orbit_cameras, render_sdf
    from fieldcraft.viewer.server import Scene

    def traced(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(sdf(x.double().cpu().numpy()), np.float32).reshape(-1))

    def render(c2w: np.ndarray, fov: float, width: int, height: int) -> np.ndarray:
        horizontal = math.degrees(2.0 * math.atan(width / height * math.tan(0.5 * math.radians(fov))))
        return render_sdf(traced, torch.as_tensor(c2w, dtype=torch.float32), width, height, horizontal)

    c2w = orbit_cameras(1, radius=TRACED_DISTANCE)[0].double().numpy()
    w, h = _size(width, height, (256, 256))
    return Scene(name, kind, render, c2w, 40.0, w, h, np.zeros(3), np.array([0.0, 1.0, 0.0]),
                 _camera_path_file(where))


def sdf_scene(run: Path, width: int | None, height: int | None, device: str | None):
    """A ``fit sdf`` run: its zero level set, sphere traced in normalised coordinates."""
    from fieldcraft.geometry.shape_field import shape_function

    fn, loss, _, _ = shape_function(run, device)
    if loss == "occupancy":
        raise FieldcraftError(f"{run}: sphere tracing needs a signed distance field (this is an occupancy fit)")
    return _traced_scene(run.name, "sdf", fn, width, height, run)


def mesh_scene(file: Path, width: int | None, height: int | None):
    """A mesh file, scaled into the cube ``[-1, 1]^3``: sphere tracing of its unsigned distance (exact,
    :func:`fieldcraft.geometry.bvh.closest_points`) less :data:`SURFACE_OFFSET`."""
    from fieldcraft.geometry.bvh import build_bvh, closest_points
    from fieldcraft.geometry.mesh import load_shape, normalise

    shape = load_shape(file)
    if not shape.is_mesh:
        raise FieldcraftError(f"{file}: is a point cloud; the viewer shows meshes")
    shape, _ = normalise(shape)
    bvh = build_bvh(shape.vertices, shape.faces)
    return _traced_scene(file.name, "mesh", lambda p: closest_points(bvh, p)[0] - SURFACE_OFFSET, width, height, file)
