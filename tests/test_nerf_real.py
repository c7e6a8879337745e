"""NeRF on real captures: camera models with lens distortion, COLMAP models, downscaling on load,
missing images, uint8 images and rays made per batch (docs/nerf.md, "Real captures").

Fixtures are made here (a synthetic ring of cameras written as COLMAP .bin / .txt models and as
a nerfstudio transforms.json with distortion); tests reading ../shared data use ``shared_data``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_data

from fieldcraft.data import colmap
from fieldcraft.data.cameras import Cameras, distort, project, undistort
from fieldcraft.data.scene import dataset_format, dataset_scene, downscale_image, forward_facing, load_posed_images
from fieldcraft.errors import FieldcraftError
from fieldcraft.io.images import encode_png
from fieldcraft.render.cameras import look_at
from fieldcraft.render.rays import camera_rays
from fieldcraft.tasks.nerf.outputs import fitted_views

# COLMAP's projections (pycolmap 4.2.1, Camera.img_from_cam) of the camera-space points
# (0.3, -0.4, 1), (-0.5, 0.2, 1), (0.05, 0.6, 1): an implementation independent of fieldcraft's.
COLMAP_REFERENCE = {
    "OPENCV": ([100, 110, 50, 40, -0.2, 0.05, 0.003, -0.002],
               [[78.43575, -1.6966], [2.47175, 60.98261], [54.614852, 101.992666]]),
    "OPENCV_FISHEYE": ([100, 110, 50, 40, 0.1, -0.05, 0.01, -0.002],
                       [[78.355243, -1.58769], [3.145751, 60.61587], [54.614475, 100.911073]]),
    "SIMPLE_RADIAL": ([100, 50, 40, 0.08], [[80.6, -0.8], [-1.16, 60.464], [55.145, 101.74]]),
    "RADIAL": ([100, 50, 40, 0.08, -0.02], [[80.5625, -0.75], [-1.0759, 60.43036], [55.131859, 101.582313]]),
}


def _cameras(model: str, params: list[float], c2w: torch.Tensor) -> Cameras:
    f, d, fisheye = colmap.intrinsics(colmap.ColmapCamera(model, 100, 80, params))
    n = len(c2w)
    col = lambda v: torch.full((n,), float(v), dtype=torch.float64)
    return Cameras(c2w.double(), col(f[0]), col(f[1]), col(f[2]), col(f[3]), 100, 80,
                   torch.tensor([d] * n, dtype=torch.float64), torch.full((n,), fisheye))


@pytest.mark.parametrize("model", list(COLMAP_REFERENCE))
def test_projection_matches_colmap_and_rays_undistort(model):
    """``project`` reproduces COLMAP's distorted projection; the ray made through that pixel
    passes through the point (Newton undistortion round trip), and a pinhole ray would not."""
    params, expected = COLMAP_REFERENCE[model]
    # OpenGL camera at the origin looking down -z: COLMAP's camera point (x, y, 1) is world (x, -y, -1).
    cams = _cameras(model, params, torch.eye(4)[None, :3])
    pts = torch.tensor([[0.3, 0.4, -1.0], [-0.5, -0.2, -1.0], [0.05, -0.6, -1.0]], dtype=torch.float64)
    cam = torch.zeros(3, dtype=torch.long)
    uv, depth = project(cams, pts, cam)
    np.testing.assert_allclose(uv.numpy(), expected, atol=1e-5)
    o, d = camera_rays(cams, cam, uv[:, 0], uv[:, 1], normalize=True)
    off = torch.linalg.cross(pts - o, d).norm(dim=-1)  # distance of each point from its ray
    assert float(off.max()) < 1e-8
    pinhole = Cameras(cams.c2w, cams.fx, cams.fy, cams.cx, cams.cy, 100, 80)
    o2, d2 = camera_rays(pinhole, cam, uv[:, 0], uv[:, 1], normalize=True)
    assert float(torch.linalg.cross(pts - o2, d2).norm(dim=-1).min()) > 1e-3


def test_undistortion_round_trip_posed_cameras():
    """Random points seen by posed distorted cameras (both models, per-camera coefficients):
    project, make the ray through the pixel, the ray passes through the point (float32)."""
    g = torch.Generator().manual_seed(0)
    c2w = torch.stack([look_at(torch.tensor([3.0 * math.cos(a), 1.0, 3.0 * math.sin(a)]))[:3] for a in (0.3, 2.0)])
    cams = Cameras(c2w, torch.tensor([80.0, 90.0]), torch.tensor([82.0, 88.0]), torch.tensor([40.0, 52.0]),
                   torch.tensor([30.0, 28.0]), 96, 64, torch.tensor([[-0.25, 0.08, -0.01, 0.0, 0.002, -0.003],
                                                                       [0.05, -0.02, 0.01, -0.001, 0.0, 0.0]]),
                   torch.tensor([False, True]))
    pts = torch.rand(200, 3, generator=g) - 0.5
    cam = torch.arange(200) % 2
    uv, depth = project(cams, pts, cam)
    assert bool((depth > 0).all())
    o, d = camera_rays(cams, cam, uv[:, 0], uv[:, 1])
    assert float(torch.linalg.cross(pts - o, d).norm(dim=-1).max()) < 1e-5
    x = torch.linspace(-0.5, 0.5, 11)
    xd, yd = distort(x, x.flip(0), cams.distortion[cam[:11]], cams.fisheye[cam[:11]])
    ux, uy = undistort(xd, yd, cams.distortion[cam[:11]], cams.fisheye[cam[:11]])
    assert float((ux - x).abs().max()) < 1e-6 and float((uy - x.flip(0)).abs().max()) < 1e-6


# --- fixtures: a ring of cameras around the origin, as COLMAP models and as transforms.json


def _ring(n: int) -> torch.Tensor:
    """OpenGL camera-to-world [n, 3, 4] on a ring of radius 4 at height 1, looking at the origin."""
    return torch.stack([look_at(torch.tensor([4.0 * math.cos(a), 1.0, 4.0 * math.sin(a)], dtype=torch.float64))[:3]
                        for a in np.linspace(0, 2 * math.pi, n, endpoint=False)])


def write_png(path: Path, codes: np.ndarray) -> None:
    """Write uint8 codes as an 8-bit PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(codes))


def _pattern(k: int, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([(xx * 16 + k * 8) % 256, (yy * 20) % 256, np.full_like(xx, 30 * k % 256)], -1).astype(np.uint8)


def _colmap_scene(root: Path, n: int = 10, ext: str = ".bin", model: str = "SIMPLE_RADIAL",
                  size: tuple[int, int] = (16, 12)) -> tuple[colmap.ColmapModel, torch.Tensor]:
    """A COLMAP model of ``n`` ring cameras (world-to-camera in COLMAP's axes) + 60 points + images."""
    w, h = size
    params = {"SIMPLE_RADIAL": [14.0, w / 2, h / 2, -0.05],
              "OPENCV": [14.0, 15.0, w / 2, h / 2, -0.05, 0.01, 0.001, -0.002]}[model]
    c2w = _ring(n).numpy()
    cv = c2w.copy()
    cv[:, :, 1:3] *= -1  # OpenGL -> OpenCV camera axes
    rot = cv[:, :, :3].transpose(0, 2, 1)
    t = -np.einsum("nij,nj->ni", rot, cv[:, :, 3])
    q = colmap.rotation_to_qvec(rot)
    images = {k + 1: colmap.ColmapImage(q[k].tolist(), t[k].tolist(), 1, f"im{k:02d}.png") for k in range(n)}
    pts = np.random.default_rng(0).uniform(-1, 1, (60, 3))
    m = colmap.ColmapModel({1: colmap.ColmapCamera(model, w, h, params)}, images, pts, np.full(60, 3))
    colmap.write_model(root / "sparse" / "0", m, ext)
    for k in range(n):
        write_png(root / "images" / f"im{k:02d}.png", _pattern(k, h, w))
    return m, torch.from_numpy(c2w)


@pytest.mark.parametrize("ext", [".bin", ".txt"])
def test_colmap_model_read_and_posed(tmp_path, ext):
    """A COLMAP model (.bin and .txt) reads back as written; the loaded cameras see every 3-D
    point where COLMAP's own projection (x_cam = R X + t, then distortion) puts it."""
    m, _ = _colmap_scene(tmp_path, ext=ext, model="OPENCV")
    back = colmap.read_model(tmp_path / "sparse" / "0", ext)
    assert back.cameras[1] == m.cameras[1] and back.images[3] == m.images[3]
    np.testing.assert_allclose(back.points, m.points)
    assert back.track.tolist() == [3] * 60
    train = load_posed_images(tmp_path, "train")
    test = load_posed_images(tmp_path, "test")
    assert train.format == "colmap" and train.scene == "unbounded" and len(test) == 2 and len(train) == 8
    assert test.names == ["im00.png", "im08.png"] and train.images.dtype == torch.uint8
    c2w_all = colmap.colmap_c2w(back, sorted(back.images))
    centre, scale = colmap.normalisation(c2w_all)
    assert np.allclose(centre, 0, atol=1e-6)  # the ring looks at the origin
    assert abs(float(train.cameras.c2w[:, :, 3].abs().max()) - 1.0) < 1e-5
    # COLMAP's projection of the raw points into image im08 (test index 1)
    im = back.images[9]
    rot = colmap.qvec_to_rotation(np.array([im.qvec]))[0]
    xc = m.points @ rot.T + np.array(im.tvec)
    fx, fy, cx, cy, k1, k2, p1, p2 = m.cameras[1].params
    x, y = xc[:, 0] / xc[:, 2], xc[:, 1] / xc[:, 2]
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2
    xd, yd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x), y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    expected = np.stack([fx * xd + cx, fy * yd + cy], -1)
    pts = torch.from_numpy((m.points - centre) * scale).float()
    uv, _ = project(test.cameras, pts, torch.ones(60, dtype=torch.long))
    np.testing.assert_allclose(uv.numpy(), expected, atol=2e-3)


def _poses_bounds(c2w: np.ndarray, h: int = 12, w: int = 16, f: float = 14.0) -> np.ndarray:
    """LLFF's ``poses_bounds.npy`` rows of OpenGL camera-to-world poses (columns down, right, back)."""
    llff = np.concatenate([-c2w[:, :, 1:2], c2w[:, :, 0:1], c2w[:, :, 2:4],
                           np.broadcast_to(np.array([h, w, f], float)[None, :, None], (len(c2w), 3, 1))], 2)
    return np.concatenate([llff.reshape(len(c2w), 15), np.tile([[1.0, 10.0]], (len(c2w), 1))], 1)


def test_llff_all_around_with_a_colmap_model_reads_the_model(tmp_path):
    """imgs2poses leaves poses_bounds.npy beside the COLMAP model: cameras all around (no NDC)
    read the model as an unbounded scene; forward-facing ones stay LLFF."""
    _, c2w = _colmap_scene(tmp_path)  # a ring at height 1 looking at the origin: arccos(1 / sqrt(17)) = 76 degrees
    np.save(tmp_path / "poses_bounds.npy", _poses_bounds(c2w.numpy()))
    assert dataset_format(tmp_path)[0] == "colmap" and not forward_facing(tmp_path)
    kind, why = dataset_scene(tmp_path)
    assert kind == "unbounded" and "76 degrees" in why and load_posed_images(tmp_path, "train").format == "colmap"
    with pytest.raises(FieldcraftError, match="fitted with them: refit it"):  # a run fitted on NDC rays
        fitted_views({"data": str(tmp_path), "aabb": [[-1.0] * 3, [1.0] * 3], "ndc": True}, None, "test")
    front = np.stack([look_at(torch.tensor([0.3 * k, 0.1 * k, 4.0], dtype=torch.float64))[:3].numpy()
                      for k in range(10)])
    np.save(tmp_path / "poses_bounds.npy", _poses_bounds(front))
    assert dataset_format(tmp_path)[0] == "llff" and forward_facing(tmp_path)
    assert dataset_scene(tmp_path) == ("forward", "LLFF forward-facing capture")


def test_colmap_errors(tmp_path):
    _colmap_scene(tmp_path)
    sparse = tmp_path / "sparse" / "0"
    data = (sparse / "images.bin").read_bytes()
    (sparse / "images.bin").write_bytes(data[:50])
    with pytest.raises(FieldcraftError, match="images.bin: truncated") as e:
        load_posed_images(tmp_path, "train")
    assert "\n" not in str(e.value)
    m, _ = _colmap_scene(tmp_path / "b")
    m.cameras[1] = colmap.ColmapCamera("FULL_OPENCV", 16, 12, [14.0] * 12)
    colmap.write_model(tmp_path / "b" / "sparse" / "0", m)
    with pytest.raises(FieldcraftError, match="cameras.bin: camera 1: camera model FULL_OPENCV is not supported"):
        load_posed_images(tmp_path / "b", "train")


def test_colmap_beer_model():
    """The shared beer capture: 71 SIMPLE_RADIAL cameras (one per image), 720x1280; its model
    folder read directly with --downscale 4 (held out: every 8th of the images sorted by name)."""
    root = Path(shared_data("nerf", "beer_colmap"))
    m = colmap.read_model(root / "sparse" / "0")
    assert len(m.images) == 71 and len(m.points) == 4414
    assert {c.model for c in m.cameras.values()} == {"SIMPLE_RADIAL"}
    test = load_posed_images(root / "sparse" / "0", "test", downscale=4)
    assert len(test) == 9 and test.images.shape[1:] == (320, 180, 3) and test.names[1] == "0008.jpg"
    assert float(test.cameras.distortion[:, 0].abs().min()) > 0 and test.cameras.fx[0] == pytest.approx(
        m.cameras[m.images[1].camera_id].params[0] / 4, rel=0.05)


def _nerfstudio(root: Path, n: int = 10, size: tuple[int, int] = (16, 12), **extra) -> dict:
    w, h = size
    frames = [{"file_path": f"images/f{k:02d}.png", "transform_matrix": _ring(n)[k].tolist() + [[0, 0, 0, 1]]}
              for k in range(n)]
    meta = {"camera_model": "OPENCV", "fl_x": 14.0, "fl_y": 15.0, "cx": w / 2, "cy": h / 2, "w": w, "h": h,
            "k1": -0.05, "k2": 0.01, "p1": 0.001, "p2": -0.002, "aabb_scale": 16, "frames": frames, **extra}
    for k in range(n):
        write_png(root / "images" / f"f{k:02d}.png", _pattern(k, h, w))
    (root / "transforms.json").write_text(json.dumps(meta))
    return meta


def test_nerfstudio_distortion_downscale_and_missing(tmp_path, capsys):
    meta = _nerfstudio(tmp_path)
    train = load_posed_images(tmp_path, "train")
    assert train.cameras.distortion[0].tolist() == pytest.approx([-0.05, 0.01, 0, 0, 0.001, -0.002])
    assert train.scene == "unbounded" and train.images.dtype == torch.uint8
    small = load_posed_images(tmp_path, "train", downscale=2)
    assert small.images.shape[1:3] == (6, 8)
    assert float(small.cameras.fx[0]) == 7.0 and float(small.cameras.cy[0]) == 3.0
    block = _pattern(1, 12, 16)[:2, :2].astype(np.float64).mean((0, 1))
    assert small.images[0, 0, 0].tolist() == np.round(block).astype(int).tolist()
    # nerfstudio's pre-shrunk folder wins when every frame has one
    for k in range(10):
        write_png(tmp_path / "images_2" / f"f{k:02d}.png", np.full((6, 8, 3), 77, np.uint8))
    assert int(load_posed_images(tmp_path, "train", downscale=2).images[0].float().mean()) == 77
    # per-frame intrinsics and image sizes: a frame twice as large is brought to the common size
    meta["frames"][3].update(w=32, h=24, fl_x=28.0, fl_y=30.0, cx=16.0, cy=12.0)
    write_png(tmp_path / "images" / "f03.png", np.repeat(np.repeat(_pattern(3, 12, 16), 2, 0), 2, 1))
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    mixed = load_posed_images(tmp_path, "train")
    assert mixed.images.shape[1:3] == (12, 16) and float(mixed.cameras.fx[2]) == pytest.approx(14.0)
    # a missing image: one line naming it, or skipped (and counted) with skip_missing
    (tmp_path / "images" / "f05.png").unlink()
    with pytest.raises(FieldcraftError) as e:
        load_posed_images(tmp_path, "train")
    assert "f05.png: image file not found" in str(e.value) and "--skip-missing" in str(e.value)
    capsys.readouterr()
    kept = load_posed_images(tmp_path, "train", skip_missing=True)
    assert len(kept) == 7 and "f05.png" not in kept.names
    assert "skipped 1 of 8 frames" in capsys.readouterr().err


@pytest.mark.parametrize("edit, scene", [
    ({}, "unbounded"),  # colmap2nerf: aabb_scale 16
    ({"aabb_scale": 1}, "object"),
    ({"aabb_scale": None}, "unbounded"),  # ns-process-data: camera_model and coefficients, no aabb_scale
    ({"aabb_scale": None, "camera_model": None}, "unbounded"),  # distortion coefficients alone
    ({"aabb_scale": None, "camera_model": None, "k1": 0, "k2": 0, "p1": 0, "p2": 0}, "object"),  # synthetic
])
def test_nerfstudio_scene_kind(tmp_path, edit, scene):
    """What kind of scene a transforms.json holds decides the default preset; the reader agrees."""
    meta = _nerfstudio(tmp_path)
    meta.update(edit)
    (tmp_path / "transforms.json").write_text(json.dumps({k: v for k, v in meta.items() if v is not None}))
    kind, why = dataset_scene(tmp_path)
    assert kind == scene and "transforms.json" in why
    assert load_posed_images(tmp_path, "train").scene == scene


def test_nerfstudio_capture_without_aabb_scale_is_normalised(tmp_path):
    """ns-process-data keeps COLMAP's scale: the reader centres and scales the world as colmap2nerf
    does, so the same capture at another scale and offset loads to the same cameras."""
    meta = _nerfstudio(tmp_path)
    del meta["aabb_scale"]
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    a = load_posed_images(tmp_path, "train")
    for fr in meta["frames"]:
        m = np.array(fr["transform_matrix"])
        m[:3, 3] = 7.5 * m[:3, 3] + [3.0, -2.0, 10.0]
        fr["transform_matrix"] = m.tolist()
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    b = load_posed_images(tmp_path, "train")
    assert torch.allclose(a.cameras.c2w, b.cameras.c2w, atol=1e-5)
    test = load_posed_images(tmp_path, "test")  # the held-out frames share colmap2nerf's scale: mean distance 4
    assert float(torch.cat([a.cameras.c2w, test.cameras.c2w])[:, :, 3].norm(dim=-1).mean()) == pytest.approx(4.0, abs=1e-4)


def test_downscale_is_a_box_filter():
    img = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    out = downscale_image(img, 2)
    assert out.shape == (1, 2, 3)
    np.testing.assert_allclose(out[0, 1], img[:2, 2:4].mean((0, 1)))
    with pytest.raises(FieldcraftError, match="--downscale must be"):
        load_posed_images(".", "train", downscale=0)


def test_training_rays_are_made_per_batch(tmp_path):
    """Training keeps uint8 pixels and makes the rays of a batch only: they equal the rays made
    for those pixels directly."""
    from fieldcraft.render.rays import make_rays
    from fieldcraft.tasks import nerf

    _nerfstudio(tmp_path)
    data = load_posed_images(tmp_path, "train")
    model = nerf.NerfModel(nerf.nerf_config("instant"), data.aabb, False)
    rays, pixels = nerf.training_rays(model, data)
    assert pixels.pixels.dtype == torch.uint8 and len(rays) == len(pixels) == 8 * 12 * 16
    idx = torch.tensor([0, 17, 12 * 16 * 5 + 3])
    got = rays[idx]
    ref = make_rays(data.cameras, torch.tensor([0, 0, 5]), torch.tensor([0.5, 1.5, 3.5]), torch.tensor([0.5, 1.5, 0.5]),
                    data.near, data.far, data.aabb, False)
    torch.testing.assert_close(got.dirs, ref.dirs)
    torch.testing.assert_close(pixels[idx][2], data.image(5)[0, 3])


def test_fit_and_eval_a_colmap_capture(tmp_path):
    """The command line on a COLMAP model: fit with --downscale, held-out evaluation (every 8th
    image) reads the images the same way; a missing image stops with status 2."""
    from fieldcraft.cli import main

    _colmap_scene(tmp_path / "data", size=(32, 24))
    out = tmp_path / "run"
    assert main(["fit", "nerf", str(tmp_path / "data"), "--out", str(out), "--steps", "3", "--downscale", "2",
                 "--quiet", "--device", "cpu"]) == 0
    assert main(["eval", "nerf", str(out), "--quiet", "--device", "cpu"]) == 0
    metrics = json.loads((out / "eval" / "test" / "metrics.json").read_text())
    assert metrics["views"] == 2 and math.isfinite(metrics["psnr"]) and 0 <= metrics["ssim"] <= 1
    assert [v["name"] for v in metrics["per_view"]] == ["im00.png", "im08.png"]
    (tmp_path / "data" / "images" / "im03.png").unlink()
    assert main(["fit", "nerf", str(tmp_path / "data"), "--out", str(tmp_path / "r2"), "--steps", "1"]) == 2


# --- unbounded scenes: contraction, its sampler, appearance codes, the nerfacto preset


def test_contraction_and_its_sampler():
    from fieldcraft.render.contraction import contract, contracted_march, inner_box
    from fieldcraft.render.occupancy_grid import BinaryGrid

    x = torch.tensor([[0.3, -0.9, 0.1], [1.0, 0.0, 0.0], [1.0 + 1e-4, 0.0, 0.0], [1e6, -3e5, 2.0]])
    y = contract(x)
    assert torch.equal(y[:2], x[:2])                           # the inner box is kept
    assert float((y[2] - y[1]).abs().max()) < 2e-4            # continuous at its surface
    assert 1.99 < float(y[3].abs().max()) < 2.0               # everything else inside [-2, 2]^3
    # candidates cover [t_min, t_max] without gaps, growing beyond the inner box
    box = torch.tensor([[-2.0] * 3, [2.0] * 3])
    o, d = torch.zeros(3, 3), torch.nn.functional.normalize(torch.randn(3, 3), dim=-1)
    ri, t0, t1 = contracted_march(None, o, d, torch.full((3,), 0.1), torch.full((3,), 500.0), box, 64, jitter=True)
    for r in range(3):
        a, b = t0[ri == r], t1[ri == r]
        assert float(a[0]) == pytest.approx(0.1) and float(b[-1]) == pytest.approx(500.0, rel=1e-4)
        assert torch.allclose(a[1:], b[:-1]) and bool((b - a)[-5:].min() > (b - a)[:5].max())
    # an occupancy grid in contracted space keeps only intervals whose midpoint is occupied
    grid = BinaryGrid(torch.tensor([[-2.0] * 3, [2.0] * 3]), 8)
    grid.binary.zero_()
    grid.binary[7, 4, 4] = True                               # contracted x in [1.5, 2): world x beyond 2 * 2
    o, d = torch.zeros(1, 3) + 0.01, torch.tensor([[1.0, 0.0, 0.0]])
    ri, t0, t1 = contracted_march(grid, o, d, torch.tensor([0.1]), torch.tensor([1000.0]), box, 128)
    assert len(ri) > 0 and bool((0.5 * (t0 + t1) > 4.0).all())
    ring = _ring(7).float()
    ib = inner_box(ring)
    assert bool(((ring[:, :, 3] >= ib[0] - 1e-5) & (ring[:, :, 3] <= ib[1] + 1e-5)).all())
    assert float(ib.mean(0).abs().max()) < 1e-4              # the ring looks at the origin


def test_appearance_codes():
    from fieldcraft.encodings import FrequencyEncodingConfig
    from fieldcraft.fields.appearance import AppearanceField
    from fieldcraft.fields.radiance import RadianceFieldConfig

    f = AppearanceField(RadianceFieldConfig(position_encoding=FrequencyEncodingConfig(n_frequencies=2)),
                        torch.tensor([[-1.0] * 3, [1.0] * 3]), n_images=3, dim=4)
    x = torch.zeros(2, 3)
    _, same = f(x, None, torch.tensor([0, 2]))
    assert torch.equal(same[0], same[1])                     # codes start at zero: every image alike
    with torch.no_grad():
        f.codes.weight[2] = 1.0
    _, rgb = f(x, None, torch.tensor([0, 2]))
    _, mean = f(x, None, None)
    assert not torch.allclose(rgb[0], rgb[1])
    with torch.no_grad():
        f.codes.weight[:] = torch.tensor([[0.0] * 4, [0.0] * 4, [3.0] * 4])
        _, at_mean = f(x[:1], None, None)
        f.codes.weight[0] = 1.0
        _, code_one = f(x[:1], None, torch.tensor([0]))
    torch.testing.assert_close(at_mean, code_one)            # the mean code (1, 1, 1, 1)


def test_nerfacto_on_a_colmap_capture(tmp_path, capsys):
    """The default preset for an unbounded capture is nerfacto (printed); its rays are not clipped to
    a box, training uses the images' codes, and evaluation (mean code) reads the checkpoint back."""
    from fieldcraft.cli import main
    from fieldcraft.tasks import nerf

    _colmap_scene(tmp_path / "data", size=(32, 24))
    out = tmp_path / "run"
    assert main(["fit", "nerf", str(tmp_path / "data"), "--out", str(out), "--steps", "3", "--quiet",
                 "--device", "cpu"]) == 0
    assert "preset nerfacto (COLMAP capture: unbounded scene" in capsys.readouterr().out
    model, meta = nerf.load_model(out, device="cpu")
    assert model.contracted and meta["n_images"] == 8 and model.field.codes.weight.shape == (8, 16)
    data = nerf.fitted_views(meta, None, "test")
    rays = model.view_rays(data.cameras, 0, data.near, data.far)
    assert bool((rays.t_max == data.far).all())
    assert main(["eval", "nerf", str(out), "--quiet", "--device", "cpu"]) == 0
    assert json.loads((out / "eval" / "test" / "metrics.json").read_text())["preset"] == "nerfacto"


def test_render_path_and_point_cloud(tmp_path):
    """``render nerf --path`` follows the smoothed captured path to a video; ``export nerf --format
    ply`` writes a point cloud whose points lie in the fitted box."""
    pytest.importorskip("trimesh")
    import trimesh

    from fieldcraft.cli import main
    from fieldcraft.render.cameras import smooth_path
    from fieldcraft.tasks import nerf

    ring = _ring(12).float()
    path = smooth_path(ring, 30, sigma=1.0)
    assert path.shape == (30, 3, 4)
    rot = path[:, :, :3]
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3).expand(30, 3, 3), atol=1e-5, rtol=0)
    assert float((path[0, :, 3] - ring[0, :, 3]).norm()) < 0.3  # starts near the first captured pose
    steps = (path[1:, :, 3] - path[:-1, :, 3]).norm(dim=-1)
    assert float(steps.max()) < 2.5 * float(steps.mean())      # no jumps

    _colmap_scene(tmp_path / "data", size=(32, 24))
    out = tmp_path / "run"
    assert main(["fit", "nerf", str(tmp_path / "data"), "--out", str(out), "--steps", "2", "--preset", "instant",
                 "--quiet", "--device", "cpu"]) == 0
    video = tmp_path / "path.gif"
    assert main(["render", "nerf", str(out), "--path", "--frames", "3", "--out", str(video), "--quiet",
                 "--device", "cpu"]) == 0
    assert video.stat().st_size > 0
    assert main(["render", "nerf", str(out), "--path", "--orbit", "--out", str(video)]) == 2
    model, meta = nerf.load_model(out, device="cpu")
    with torch.no_grad():  # an opaque ball in the middle, so some pixels are opaque
        model.grid.binary.fill_(True)
    from fieldcraft.tasks.nerf.pointcloud import point_cloud

    torch.manual_seed(0)
    ply = tmp_path / "cloud.ply"
    model.field.density = lambda x, **kw: torch.where(x.norm(dim=-1) < 0.5, 1e3, 0.0)  # noqa: E731 (a stand-in field)
    import fieldcraft.tasks.nerf.pointcloud as pc

    original = pc.load_model
    pc.load_model = lambda *a, **k: (model, meta)
    try:
        field_forward = model.field.forward
        model.field.forward = lambda x, d=None, *rest, **kw: (model.field.density(x), field_forward(x, d, *rest, **kw)[1])
        info = point_cloud(out, ply, stride=2, progress=False, device="cpu")
    finally:
        pc.load_model = original
    cloud = trimesh.load(ply)
    assert info["points"] == len(cloud.vertices) > 0
    radius = np.linalg.norm(np.asarray(cloud.vertices), axis=1)
    assert radius.max() < 0.6  # on the ball (radius 0.5, expected depth at its surface)


def test_nerfacto_renders_alike_on_the_reference_kernels(monkeypatch):
    """The contracted model's rendering and gradients on the PyTorch reference kernels (a GPU's
    path) equal the numba path's."""
    from fieldcraft.render.contraction import inner_box
    from fieldcraft.render.rays import make_rays
    from fieldcraft.tasks import nerf

    ring = _ring(4).float()
    cams = Cameras(ring, torch.full((4,), 20.0), torch.full((4,), 20.0), torch.full((4,), 8.0), torch.full((4,), 6.0),
                   16, 12, torch.tensor([[-0.1, 0.01, 0, 0, 0.001, 0.0]] * 4), torch.zeros(4, dtype=torch.bool))

    out = {}
    for kernels in ("fast", "reference"):
        monkeypatch.setenv("FIELDCRAFT_KERNELS", kernels)
        torch.manual_seed(0)
        model = nerf.NerfModel(nerf.nerf_config("nerfacto"), inner_box(ring), False, n_images=4)
        cam = torch.arange(64) % 4
        rays = make_rays(cams, cam, torch.rand(64) * 16, torch.rand(64) * 12, 0.01, 100.0, None, False)
        torch.manual_seed(1)
        r = model.render(rays, torch.ones(1, 3), train=True, step=0)
        r["rgb"].sum().backward()
        out[kernels] = (r["rgb"].detach(), model.field.position_encoding.table.grad.clone())
    torch.testing.assert_close(out["fast"][0], out["reference"][0], atol=1e-5, rtol=1e-4)
    assert float(out["fast"][1].abs().max()) > 0
    torch.testing.assert_close(out["fast"][1], out["reference"][1], atol=1e-5, rtol=1e-4)
