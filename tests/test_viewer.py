"""``fieldcraft view``: camera path files, the server's API, the kinds of scene, ``render nerf
--path FILE``, and the page driven in a real headless browser (Debian's chromium through
playwright) on a field fitted and baked from the vendored ``tests/data/nerf/lego_mini``."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from fieldcraft.errors import FieldcraftError
from fieldcraft.io.camera_path import camera_path_record, interpolate_keyframes, parse_camera_path, read_camera_path
from fieldcraft.io.records import write_json
from fieldcraft.metrics import psnr
from fieldcraft.train import Budget

LEGO_MINI = Path(__file__).parent / "data" / "nerf" / "lego_mini"
CHROMIUM = os.environ.get("FIELDCRAFT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    from fieldcraft.commands.view import look_at

    return look_at(eye, target, up)


# ------------------------------------------------------------------------------ camera path files


def test_camera_path_interpolates_keyframes_and_round_trips(tmp_path):
    """Two keyframes, 1.5 s at 4 fps: 6 frames from the first keyframe to the last, rotations
    orthonormal, centres on the segment; the file written reads back the same."""
    a, b = _look_at([3.0, 0.0, 1.0]), _look_at([0.0, 3.0, 1.0])
    record = camera_path_record(np.stack([a, b]), np.array([40.0, 50.0]), 32, 24, fps=4, seconds=1.5)
    assert len(record["camera_path"]) == 6 and len(record["keyframes"]) == 2 and record["seconds"] == 1.5
    write_json(tmp_path / "path.json", record)
    path = read_camera_path(tmp_path / "path.json")
    assert (path.width, path.height, path.fps, len(path)) == (32, 24, 4.0, 6)
    np.testing.assert_allclose(path.c2w[0], a, atol=1e-12)
    np.testing.assert_allclose(path.c2w[-1], b, atol=1e-12)
    np.testing.assert_allclose(path.fov, np.linspace(40.0, 50.0, 6))
    for m in path.c2w:
        np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-9)
        np.testing.assert_allclose(m[3], [0, 0, 0, 1])
    mid, _ = interpolate_keyframes(np.stack([a, b]), np.array([40.0, 40.0]), 3)
    np.testing.assert_allclose(mid[1, :3, 3], 0.5 * (a[:3, 3] + b[:3, 3]))
    fx, fy, cx, cy = path.intrinsics(0)  # vertical field of view 40 degrees over 24 pixels
    assert fx == fy and abs(fy - 12.0 / np.tan(np.radians(20.0))) < 1e-9 and (cx, cy) == (16.0, 12.0)


GOOD = {"render_width": 8, "render_height": 8, "fps": 30,
        "camera_path": [{"camera_to_world": list(np.eye(4).ravel()), "fov": 50}]}


@pytest.mark.parametrize("content, needle", [
    (None, "no such camera path file"),
    ("{not json", "unreadable JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({**GOOD, "camera_path": []}), "non-empty list"),
    (json.dumps({**GOOD, "render_width": 0}), "render_width"),
    (json.dumps({**GOOD, "fps": -1}), "'fps'"),
    (json.dumps({**GOOD, "camera_path": [{"camera_to_world": [1.0] * 15, "fov": 50}]}), "16 finite numbers"),
    (json.dumps({**GOOD, "camera_path": [{"camera_to_world": [0.0] * 16, "fov": 50}]}), "singular"),
    (json.dumps({**GOOD, "camera_path": [{"camera_to_world": list(np.eye(4).ravel()), "fov": 180}]}), "'fov'"),
])
def test_bad_camera_path_files_are_one_line_errors(tmp_path, content, needle):
    bad = tmp_path / "camera_path.json"
    if content is not None:
        bad.write_text(content)
    with pytest.raises(FieldcraftError) as e:
        read_camera_path(bad)
    assert needle in str(e.value) and str(bad) in str(e.value) and "\n" not in str(e.value)
    assert len(parse_camera_path(GOOD)) == 1


# ------------------------------------------------------------------------------ scenes and server


def test_scene_kinds_and_bad_paths(tmp_path):
    """A mesh is sphere traced (the cube in the middle, white around it); paths that cannot be
    viewed are one-line errors naming them."""
    from fieldcraft.commands.view import build_scene

    cube = tmp_path / "cube.obj"
    v = [(x, y, z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = [f for a, b, c, d in quads for f in ((a, b, c), (a, c, d))]
    cube.write_text("".join(f"v {x} {y} {z}\n" for x, y, z in v) + "".join(f"f {a + 1} {b + 1} {c + 1}\n"
                                                                           for a, b, c in faces))
    scene = build_scene(cube)
    assert scene.kind == "mesh" and scene.camera_path_file == tmp_path / "cube.camera_path.json"
    picture = scene.render(scene.c2w, scene.fov, 32, 32)
    assert picture.shape == (32, 32, 3) and picture.dtype == np.uint8
    assert (picture[0, 0] == 255).all() and picture[16, 16].max() < 250  # background white, the cube shaded
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "missing", tmp_path / "notes.txt", tmp_path / "empty"):
        with pytest.raises(FieldcraftError) as e:
            build_scene(bad)
        assert str(bad) in str(e.value) and "\n" not in str(e.value)


def _serve(scene):
    from http.server import ThreadingHTTPServer

    from fieldcraft.viewer.server import make_handler

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(scene))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/"


def _post(url: str, body) -> tuple[int, bytes, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def test_server_api(tmp_path):
    """The page, the scene, a render (PNG with its milliseconds), a camera path written beside the
    scene, and bad requests answered with 400 and one line."""
    from fieldcraft.io.images import decode_png
    from fieldcraft.viewer.server import Scene

    calls = []

    def render(c2w, fov, w, h):
        calls.append((c2w, fov))
        return np.full((h, w, 3), 0.5)

    scene = Scene("grey", "test", render, _look_at([3.0, 0, 0]), 45.0, 16, 12, np.zeros(3), np.array([0, 0, 1.0]),
                  tmp_path / "camera_path.json")
    httpd, url = _serve(scene)
    try:
        assert b"export camera path" in urllib.request.urlopen(url, timeout=30).read()
        info = json.loads(urllib.request.urlopen(url + "scene", timeout=30).read())
        assert (info["width"], info["height"], info["fov"]) == (16, 12, 45.0)
        status, png, headers = _post(url + "render", {"camera_to_world": info["camera_to_world"], "fov": 30,
                                                      "width": 5, "height": 4})
        assert status == 200 and decode_png(png).shape == (4, 5, 3) and (decode_png(png) == 128).all()
        assert float(headers["X-Render-Ms"]) >= 0 and headers["X-Render-Size"] == "5x4"
        np.testing.assert_allclose(calls[0][0], scene.c2w) and calls[0][1] == 30.0
        key = {"camera_to_world": info["camera_to_world"], "fov": 45.0}
        status, body, _ = _post(url + "camera_path", {"keyframes": [key], "fps": 24, "seconds": 2})
        assert status == 200 and json.loads(body)["path"] == str(scene.camera_path_file)
        assert len(read_camera_path(scene.camera_path_file)) == 1
        for route, body, needle in [("render", {"camera_to_world": [1] * 16, "fov": 30, "width": 4, "height": 4},
                                     "singular"),
                                    ("render", {"fov": 30, "width": 0, "height": 4}, "width"),
                                    ("render", b"{nope", "not JSON"),
                                    ("camera_path", {"keyframes": []}, "add a keyframe")]:
            status, out, _ = _post(url + route, body)
            error = json.loads(out)["error"]
            assert status == 400 and needle in error and "\n" not in error
        assert len(calls) == 1
    finally:
        httpd.shutdown()
        httpd.server_close()


# ---------------------------------------------------------------------------- a fitted scene


@pytest.fixture(scope="module")
def baked(tmp_path_factory) -> tuple[Path, Path]:
    """A field fitted 120 instant steps on lego_mini and baked at 64^3 (about 25 s on one core)."""
    from fieldcraft.io.octree_file import save_octree
    from fieldcraft.tasks import nerf
    from fieldcraft.tasks.nerf.bake import BakeConfig, bake

    run = tmp_path_factory.mktemp("viewer") / "run"
    cfg = nerf.nerf_config("instant", target_samples=4096, grid_warmup=16, grid_resolution=32)
    nerf.fit(cfg, LEGO_MINI, run, Budget(steps=120), progress=False, device="cpu")
    tree, _ = bake(run, BakeConfig(resolution=64, sh_degree=1, directions=8), device="cpu", progress=False)
    return run, save_octree(run.parent / "lego.octree", tree)


def test_field_view_is_what_render_path_renders(baked, tmp_path):
    """The viewer's picture of the field equals ``render nerf DIR --path FILE --out X.png`` of the
    same camera; a two-keyframe path renders one PNG per frame; a bad path file is exit 2."""
    from fieldcraft.cli import main
    from fieldcraft.commands.view import build_scene
    from fieldcraft.io.images import quantize, read_png

    run, _ = baked
    scene = build_scene(run, 24, 20, device="cpu")
    assert scene.kind == "nerf" and scene.camera_path_file == run / "camera_path.json"
    picture = scene.render(scene.c2w, scene.fov, 24, 20)
    write_json(tmp_path / "one.json", camera_path_record(scene.c2w[None], np.array([scene.fov]), 24, 20))
    assert main(["render", "nerf", str(run), "--path", str(tmp_path / "one.json"), "--out", str(tmp_path / "one.png"),
                 "--quiet", "--device", "cpu"]) == 0
    rendered = read_png(tmp_path / "one.png")
    assert rendered.shape == (20, 24, 3) and picture.std() > 0.01
    assert np.abs(quantize(picture, 8).astype(int) - quantize(rendered, 8).astype(int)).max() <= 1
    other = _look_at([0.0, -3.5, 1.5])
    write_json(tmp_path / "two.json", camera_path_record(np.stack([scene.c2w, other]), np.array([40.0, 40.0]),
                                                         12, 10, fps=2, seconds=1.5))
    assert main(["render", "nerf", str(run), "--path", str(tmp_path / "two.json"), "--out", str(tmp_path / "f.png"),
                 "--quiet", "--device", "cpu"]) == 0
    assert sorted(p.name for p in tmp_path.glob("f_*.png")) == ["f_0000.png", "f_0001.png", "f_0002.png"]
    (tmp_path / "bad.json").write_text("{}")
    assert main(["render", "nerf", str(run), "--path", str(tmp_path / "bad.json"), "--out", str(tmp_path / "x.png"),
                 "--quiet"]) == 2


def test_lightfield_scene(tmp_path):
    """A light field run is viewed through ``render_view``: the first camera's picture differs
    from another camera's."""
    from fieldcraft.commands.view import build_scene
    from fieldcraft.tasks.lightfield import LightFieldConfig, fit

    fit(LightFieldConfig(), LEGO_MINI, tmp_path / "lf", Budget(steps=5), progress=False, device="cpu")
    scene = build_scene(tmp_path / "lf", 16, 16, device="cpu")
    assert scene.kind == "lightfield" and (scene.width, scene.height) == (16, 16)
    a = scene.render(scene.c2w, scene.fov, 16, 16)
    b = scene.render(_look_at([0.0, -3.5, 1.5]), scene.fov, 16, 16)
    assert a.shape == (16, 16, 3) and 0.0 <= a.min() and a.max() <= 1.0 and np.abs(a - b).max() > 1e-4


# ------------------------------------------------------------------------- the page, in a browser


@pytest.fixture(scope="module")
def sync_playwright():
    """playwright's entry point, or a skip saying what is missing (before the scene is fitted)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("needs the Python package playwright (pip install playwright; in the dev extra)")
    if not os.path.isfile(CHROMIUM):
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium; 'make install' installs it "
                    "when run as root where apt-get exists; FIELDCRAFT_CHROMIUM names another binary)")
    return sync_playwright


def _canvas(page) -> np.ndarray:
    from PIL import Image

    url = page.evaluate("document.getElementById('view').toDataURL('image/png')")
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
    return np.asarray(image, np.float32) / 255.0


def _wait_settled(page, frames: int) -> int:
    """Wait until the page shows a full-resolution picture newer than frame ``frames``; its number."""
    page.wait_for_function("n => { const c = document.getElementById('view');"
                           " return c.dataset.settled === '1' && +c.dataset.frames > n; }", arg=frames, timeout=30000)
    return int(page.evaluate("+document.getElementById('view').dataset.frames"))


def test_page_in_headless_chromium(sync_playwright, baked, tmp_path):
    """``fieldcraft view FILE.octree``: the page shows a picture with its render time; dragging
    changes it; the exported camera path (downloaded and written beside the file) renders with
    ``render nerf --octree --path`` to the picture the page shows."""
    from fieldcraft.cli import main
    from fieldcraft.io.images import read_png

    run, octree = baked
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    server = subprocess.Popen([sys.executable, "-m", "fieldcraft", "view", str(octree), "--port", "0", "--quiet",
                               "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = server.stdout.readline()  # "fieldcraft view: octree lego.octree at http://127.0.0.1:PORT/ ..."
        assert " at http://" in line, (line, server.stderr.read() if server.poll() is not None else "")
        url = line.split(" at ")[1].split()[0]
        with sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                           headless=True, args=CHROMIUM_ARGS, accept_downloads=True)
            try:
                page = browser.new_page()
                page.goto(url)
                frames = _wait_settled(page, 0)
                status = page.inner_text("#status")
                assert status.startswith("render ") and " ms | 100x100" in status, status
                before = _canvas(page)
                assert before.shape == (100, 100, 3) and before.std() > 0.02

                box = page.locator("#view").bounding_box()
                x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
                page.mouse.move(x, y)
                page.mouse.down()
                page.mouse.move(x + 150, y + 40, steps=6)
                page.mouse.up()
                frames = _wait_settled(page, frames)
                turned = _canvas(page)
                assert np.abs(turned - before).mean() > 0.02  # the camera moved: another picture

                page.keyboard.down("Shift")  # shift-drag pans, the wheel zooms: more pictures
                page.mouse.move(x, y)
                page.mouse.down()
                page.mouse.move(x - 20, y + 20, steps=3)
                page.mouse.up()
                page.keyboard.up("Shift")
                frames = _wait_settled(page, frames)
                panned = _canvas(page)
                assert np.abs(panned - turned).mean() > 0.01
                page.mouse.wheel(0, -200)
                frames = _wait_settled(page, frames)
                after = _canvas(page)
                assert np.abs(after - panned).mean() > 0.01

                page.click("#add-keyframe")
                with page.expect_download() as download:
                    page.click("#export")
                page.wait_for_function("document.getElementById('message').dataset.exported !== undefined")
                written = Path(page.evaluate("document.getElementById('message').dataset.exported"))
                assert written == octree.with_name("lego.camera_path.json")
                assert json.loads(Path(download.value.path()).read_text()) == json.loads(written.read_text())
                assert int(page.evaluate("+document.getElementById('view').dataset.frames")) == frames
            finally:
                browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    path = read_camera_path(written)
    assert len(path) == 1 and (path.width, path.height) == (100, 100)
    t0 = time.perf_counter()
    assert main(["render", "nerf", str(run), "--octree", str(octree), "--path", str(written),
                 "--out", str(tmp_path / "cli.png"), "--quiet", "--device", "cpu"]) == 0
    assert time.perf_counter() - t0 < 30
    cli = read_png(tmp_path / "cli.png")
    assert psnr(after, cli) > 35.0 and np.abs(after - cli).max() <= 2 / 255
