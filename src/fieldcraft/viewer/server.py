"""The web viewer's server: one static page (``page.html``, package data) and a JSON/PNG API, on
the standard library's ``ThreadingHTTPServer``. It renders whatever :class:`Scene` it is given
(a callable: camera in, picture out); ``fieldcraft.commands.view`` builds scenes from run
directories and files. Reference: docs/viewer.md.

Endpoints:

- ``GET /``: the page. ``GET /scene``: the scene's name, kind and initial camera (JSON).
- ``POST /render`` with ``{"camera_to_world": [16], "fov": degrees, "width": W, "height": H}``:
  the picture as an 8-bit PNG; headers ``X-Render-Ms`` (milliseconds the renderer took) and
  ``X-Render-Size`` (``WxH``). A bad request is a 400 with ``{"error": "..."}``.
- ``POST /camera_path`` with ``{"keyframes": [{"camera_to_world": [16], "fov": degrees}, ...],
  "fps": F, "seconds": S}``: writes the camera path file
  (:func:`fieldcraft.io.camera_path.camera_path_record`, at the scene's size) to
  ``Scene.camera_path_file`` and returns ``{"path": ..., "camera_path": {...}}``.

Renders run one at a time (a lock): the renderers are not meant to run concurrently and the page
keeps a single request in flight anyway.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float

from fieldcraft.errors import FieldcraftError

MAX_PIXELS = 2048 * 2048
MAX_BODY = 1 << 20

RenderFn = Callable[[np.ndarray, float, int, int], np.ndarray]


@dataclasses.dataclass
class Scene:
    """What the viewer shows.

    - ``name``: shown on the page; ``kind``: ``nerf``, ``octree``, ``sdf``, ``mesh``, ``lightfield``.
    - ``render(c2w [4, 4] float64, fov_deg, width, height)``: the picture ``[H, W, 3]`` in ``[0, 1]``
      (or ``uint8``) of the pinhole camera ``c2w`` (OpenGL axes) with vertical field of view
      ``fov_deg`` and square pixels (:func:`fieldcraft.io.camera_path.focal_length`).
    - ``c2w``, ``fov``, ``width``, ``height``: the first camera and the full picture size.
    - ``target``: the point the mouse orbits around; ``up``: the world's up direction.
    - ``camera_path_file``: where ``POST /camera_path`` writes.
    """

    name: str
    kind: str
    render: RenderFn
    c2w: Float[np.ndarray, "4 4"]
    fov: float
    width: int
    height: int
    target: Float[np.ndarray, " 3"]
    up: Float[np.ndarray, " 3"]
    camera_path_file: Path

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "width": self.width, "height": self.height,
                "camera_to_world": [float(v) for v in np.asarray(self.c2w, np.float64).reshape(-1)],
                "fov": float(self.fov), "target": [float(v) for v in self.target],
                "up": [float(v) for v in self.up], "camera_path_file": str(self.camera_path_file)}


def page() -> bytes:
    """The viewer's HTML page (package data)."""
    return files("fieldcraft.viewer").joinpath("page.html").read_bytes()


def parse_camera(body: dict[str, Any]) -> tuple[np.ndarray, float, int, int]:
    """``(c2w [4, 4], fov, width, height)`` of a ``/render`` request; bad values raise
    :class:`~fieldcraft.errors.FieldcraftError`.

    >>> c2w, fov, w, h = parse_camera({"camera_to_world": list(np.eye(4).ravel()), "fov": 40, "width": 8, "height": 6})
    >>> c2w.shape, fov, w, h
    ((4, 4), 40.0, 8, 6)
    """
    from fieldcraft.io.camera_path import parse_camera_path

    w, h = body.get("width"), body.get("height")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (w, h)) or w * h > MAX_PIXELS:
        raise FieldcraftError(f"/render: 'width' and 'height' must be whole numbers >= 1, at most {MAX_PIXELS} "
                              "pixels in all")
    path = parse_camera_path({"render_width": w, "render_height": h,
                              "camera_path": [{"camera_to_world": body.get("camera_to_world"), "fov": body.get("fov")}]},
                             "/render")
    return path.c2w[0], float(path.fov[0]), w, h


def write_camera_path(scene: Scene, body: dict[str, Any]) -> dict[str, Any]:
    """Handle ``POST /camera_path``: validate the keyframes, write the file, return what was written."""
    from fieldcraft.io.camera_path import camera_path_record, parse_camera_path
    from fieldcraft.io.records import write_json

    keys = body.get("keyframes")
    if not isinstance(keys, list) or not keys:
        raise FieldcraftError("/camera_path: 'keyframes' must be a non-empty list (add a keyframe first)")
    fps, seconds = body.get("fps", 30), body.get("seconds", 4)
    for name, v in (("fps", fps), ("seconds", seconds)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise FieldcraftError(f"/camera_path: {name!r} must be a positive number")
    keyframes = parse_camera_path({"render_width": scene.width, "render_height": scene.height, "camera_path": keys},
                                  "/camera_path")
    record = camera_path_record(keyframes.c2w, keyframes.fov, scene.width, scene.height, float(fps), float(seconds))
    write_json(scene.camera_path_file, record)
    return {"path": str(scene.camera_path_file), "camera_path": record}


def encode_picture(picture: np.ndarray) -> bytes:
    """8-bit PNG bytes of an ``[H, W, 3]`` picture (floats in ``[0, 1]`` or ``uint8``)."""
    from fieldcraft.io.images import encode_png, quantize

    picture = np.asarray(picture)
    return encode_png(picture if picture.dtype == np.uint8 else quantize(picture, 8))


def make_handler(scene: Scene, log: Callable[[str], None] | None = None) -> type[BaseHTTPRequestHandler]:
    """The request handler class serving ``scene``."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        server_version = "fieldcraft-viewer"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            if log is not None:
                log(format % args)

        def _send(self, status: int, body: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, value: Any) -> None:
            self._send(status, json.dumps(value).encode(), "application/json")

        def _body(self) -> dict[str, Any]:
            n = int(self.headers.get("Content-Length") or 0)
            if not 0 < n <= MAX_BODY:
                raise FieldcraftError(f"{self.path}: the request needs a JSON body of at most {MAX_BODY} bytes")
            try:
                body = json.loads(self.rfile.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise FieldcraftError(f"{self.path}: the body is not JSON ({exc})") from None
            if not isinstance(body, dict):
                raise FieldcraftError(f"{self.path}: the body must be a JSON object")
            return body

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            route = self.path.split("?")[0]
            if route in ("/", "/index.html"):
                self._send(HTTPStatus.OK, page(), "text/html; charset=utf-8")
            elif route == "/scene":
                self._json(HTTPStatus.OK, scene.info())
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"{route}: not found"})

        def do_POST(self) -> None:  # noqa: N802
            route = self.path.split("?")[0]
            try:
                if route == "/render":
                    c2w, fov, w, h = parse_camera(self._body())
                    with lock:
                        t0 = time.perf_counter()
                        picture = scene.render(c2w, fov, w, h)
                        ms = 1000.0 * (time.perf_counter() - t0)
                    self._send(HTTPStatus.OK, encode_picture(picture), "image/png",
                               {"X-Render-Ms": f"{ms:.2f}", "X-Render-Size": f"{w}x{h}"})
                elif route == "/camera_path":
                    self._json(HTTPStatus.OK, write_camera_path(scene, self._body()))
                else:
                    self._json(HTTPStatus.NOT_FOUND, {"error": f"{route}: not found"})
            except FieldcraftError as exc:
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            except Exception as exc:  # a renderer failing: the page shows it, the server keeps serving
                self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})

    return Handler


def serve(scene: Scene, host: str = "127.0.0.1", port: int = 8000, ready: Callable[[str], None] | None = None,
          log: Callable[[str], None] | None = None) -> None:
    """Serve ``scene`` on ``host:port`` (port 0: any free port) until interrupted; ``ready(url)`` is
    called once the socket listens."""
    try:
        httpd = ThreadingHTTPServer((host, port), make_handler(scene, log))
    except OSError as exc:
        raise FieldcraftError(f"{host}:{port}: cannot listen ({exc.strerror or exc})") from None
    httpd.daemon_threads = True
    with httpd:
        if ready is not None:
            ready(f"http://{host}:{httpd.server_address[1]}/")
        httpd.serve_forever()
