"""Light field networks: Plücker coordinates, the model, fitting on the core, eval / render, command line.

Everything runs on the vendored ``tests/data/nerf/lego_mini`` (13 train / 2 val / 4 test views at
100x100, see tests/test_nerf.py) with small networks; no shared data needed."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fieldcraft.data.scene import load_posed_images
from fieldcraft.io.checkpoint import load_checkpoint
from fieldcraft.io.images import read_png
from fieldcraft.render.rays import camera_rays, pixel_centres, plucker
from fieldcraft.tasks import lightfield as lf
from fieldcraft.train import Budget

LEGO_MINI = Path(__file__).parent / "data" / "nerf" / "lego_mini"
SMALL = lf.LightFieldConfig(hidden_width=32, hidden_layers=2, n_frequencies=4, rays=512, lr=5e-3)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_plucker_coordinates_name_the_line_not_the_ray_origin():
    """Moving the origin along the ray, or rescaling the direction by a positive factor, leaves the
    coordinates unchanged; another line gets other coordinates; ``m . d = 0`` and ``|d| = 1``."""
    g = torch.Generator().manual_seed(1)
    o, d = torch.randn(64, 3, generator=g, dtype=torch.float64), torch.randn(64, 3, generator=g, dtype=torch.float64)
    t = 10 * torch.randn(64, 1, generator=g, dtype=torch.float64)
    p = plucker(o, d)
    assert torch.allclose(plucker(o + t * d, 3.5 * d), p, atol=1e-12)
    assert torch.allclose(p[:, :3].norm(dim=-1), torch.ones(64, dtype=torch.float64))
    assert torch.allclose((p[:, :3] * p[:, 3:]).sum(-1), torch.zeros(64, dtype=torch.float64), atol=1e-12)
    shifted = plucker(o + torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), d)
    assert (shifted - p).abs().amax(-1).min() > 1e-6  # a parallel line elsewhere: another moment
    # the moment's length is the line's distance from the origin
    foot = o - (o * p[:, :3]).sum(-1, keepdim=True) * p[:, :3]
    assert torch.allclose(p[:, 3:].norm(dim=-1), foot.norm(dim=-1))


def test_model_gives_misses_the_background_and_evaluates_hits_once():
    torch.manual_seed(0)
    box = torch.tensor([[-1.0] * 3, [1.0] * 3])
    model = lf.LightField(SMALL.field(), torch.zeros(3), math.sqrt(3.0), box, torch.tensor([1.0, 0.5, 0.0]))
    origins = torch.tensor([[0.0, 0.0, 5.0], [0.0, 3.0, 5.0], [0.0, 0.0, -5.0]])
    dirs = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])  # hit, miss, box behind
    calls = []
    model.field.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    out = model(origins, dirs)
    assert calls == [1]
    assert out[1].tolist() == [1.0, 0.5, 0.0] and out[2].tolist() == [1.0, 0.5, 0.0]
    assert torch.allclose(out[0], model.field(model.coordinates(origins[:1], dirs[:1]))[0])
    # the same line seen from another point of it: the same colour
    assert torch.allclose(model(origins[:1] + 2.5 * dirs[:1], dirs[:1]), out[:1])


@pytest.mark.parametrize("preset", lf.PRESETS)
def test_presets_map_six_numbers_to_colours(preset):
    field = lf.LightFieldConfig(preset=preset, hidden_width=16, hidden_layers=2).field().build()
    rgb = field(torch.rand(10, 6) * 2 - 1)
    assert rgb.shape == (10, 3) and bool(((rgb >= 0) & (rgb <= 1)).all())


def test_bad_options_are_one_line_errors():
    from fieldcraft.errors import FieldcraftError

    with pytest.raises(FieldcraftError, match="--preset must be one of"):
        lf.LightFieldConfig(preset="hash")
    with pytest.raises(FieldcraftError, match="--rays must be >= 1"):
        lf.LightFieldConfig(rays=0)
    with pytest.raises(FieldcraftError, match="--frequencies must be >= 1"):
        lf.LightFieldConfig(n_frequencies=0)


def test_fit_improves_on_the_initial_field_and_eval_writes_the_views(tmp_path):
    """A 0-step run evaluated, then resumed to 250 steps: PSNR on training views rises by several dB;
    eval writes one PNG per view (dataset names) and metrics.json with per-view PSNR, SSIM and ms."""
    out = tmp_path / "run"
    lf.fit(SMALL, LEGO_MINI, out, Budget(steps=0), progress=False, device="cpu")
    before = lf.evaluate(out, "train", max_images=4, progress=False, device="cpu")
    summary = lf.fit(SMALL, LEGO_MINI, out, Budget(steps=250), resume=True, progress=False, device="cpu")
    assert summary["steps"] == 250 and summary["stopped"] is None
    after = lf.evaluate(out, "train", max_images=4, progress=False, device="cpu")
    assert after["psnr"] > before["psnr"] + 3.0, (before["psnr"], after["psnr"])
    test = lf.evaluate(out, "test", progress=False, device="cpu")
    dest = out / "eval" / "test"
    names = sorted(p.name for p in dest.glob("*.png"))
    assert names == ["r_0.png", "r_100.png", "r_150.png", "r_50.png"]
    written = json.loads((dest / "metrics.json").read_text())
    assert written["views"] == 4 and written["step"] == 250 and written["device"] == "cpu"
    assert [v["name"] for v in written["per_view"]] == ["r_0.png", "r_50.png", "r_100.png", "r_150.png"]
    assert written["psnr"] == pytest.approx(np.mean([v["psnr"] for v in written["per_view"]]))
    assert written["ms_per_view"] == pytest.approx(np.mean([v["ms"] for v in written["per_view"]]))
    assert all(v["ms"] > 0 and 0 < v["ssim"] <= 1 for v in written["per_view"])
    # the PNG is the render the metrics scored (to 8-bit rounding)
    png = read_png(dest / "r_0.png")
    model = lf.load_lightfield(out, "cpu")
    data = load_posed_images(LEGO_MINI, "test", max_images=1)
    render = lf.render_camera(model, data.cameras, 0).numpy()
    assert png.shape == (100, 100, 3) and np.abs(png - render).max() <= 0.5 / 255 + 1e-6
    assert test["psnr"] == written["psnr"]


def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path):
    """4 steps, then resumed to 8: the weights of 8 uninterrupted steps (same batches, Adam moments);
    a constant learning rate, since the exponential decay follows the budget in force."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    config = SMALL.replace(final_lr_factor=1.0)
    lf.fit(config, LEGO_MINI, whole, Budget(steps=8), progress=False, device="cpu", max_images=3)
    lf.fit(config, LEGO_MINI, parts, Budget(steps=4), progress=False, device="cpu", max_images=3)
    lf.fit(config, LEGO_MINI, parts, Budget(steps=8), resume=True, progress=False, device="cpu", max_images=3)
    a, b = load_checkpoint(whole)[0], load_checkpoint(parts)[0]
    weights = [k for k in a if k.startswith("model.field.")]
    assert weights and all(torch.allclose(a[k], b[k], atol=1e-6) for k in weights)
    assert load_checkpoint(parts)[1]["step"] == 8


def test_render_view_matches_the_dataset_camera(tmp_path):
    """``render_view`` (the viewer's entry point) with a camera's pose and intrinsics renders what
    eval renders for that camera; a 4x4 pose works too; the picture depends on the pose."""
    out = tmp_path / "run"
    lf.fit(SMALL, LEGO_MINI, out, Budget(steps=20), progress=False, device="cpu")
    model = lf.load_lightfield(out, "cpu")
    cams = load_posed_images(LEGO_MINI, "test").cameras
    args = (float(cams.fx[0]), float(cams.fy[0]), float(cams.cx[0]), float(cams.cy[0]), 40, 30)
    cams40 = cams.rescaled(40, 30)
    args = (float(cams40.fx[0]), float(cams40.fy[0]), float(cams40.cx[0]), float(cams40.cy[0]), 40, 30)
    view = lf.render_view(model, cams.c2w[0], *args)
    assert view.shape == (30, 40, 3)
    assert torch.allclose(view, lf.render_camera(model, cams40, 0))
    c2w4 = torch.cat([cams.c2w[0], torch.tensor([[0.0, 0.0, 0.0, 1.0]])])
    assert torch.equal(lf.render_view(model, c2w4, *args), view)
    assert not torch.allclose(lf.render_view(model, cams.c2w[1], *args), view)
    # one network evaluation per pixel that meets the box
    u, v = pixel_centres(30, 40)
    o, d = camera_rays(cams40, torch.zeros(len(u), dtype=torch.long), u, v)
    calls = []
    model.field.register_forward_hook(lambda m, i, o_: calls.append(i[0].shape[0]))
    lf.render_view(model, cams.c2w[0], *args)
    assert sum(calls) == int(model.hits(o, d).sum()) > 0


def test_unbounded_scene_sends_every_ray_through_the_network(tmp_path, capsys):
    """A nerfstudio capture with ``aabb_scale > 1`` (lego_mini's frames): no box, the frame is the
    cameras' (mean centre, largest distance); fit, eval and the one-line refusal of --orbit."""
    from fieldcraft.cli import main

    src = json.loads((LEGO_MINI / "transforms_train.json").read_text())
    root = tmp_path / "capture"
    shutil.copytree(LEGO_MINI / "train", root / "images")
    f = 50.0 / math.tan(0.5 * src["camera_angle_x"])
    frames = [{"file_path": f"images/{Path(fr['file_path']).name}.png", "transform_matrix": fr["transform_matrix"]}
              for fr in src["frames"]]
    (root / "transforms.json").write_text(json.dumps({"fl_x": f, "fl_y": f, "cx": 50.0, "cy": 50.0, "w": 100, "h": 100,
                                                      "aabb_scale": 4, "frames": frames}))
    out = tmp_path / "run"
    lf.fit(SMALL, root, out, Budget(steps=5), progress=False, device="cpu")
    model = lf.load_lightfield(out, "cpu")
    train = load_posed_images(root, "train")
    assert not bool(model.bounded) and model.meta["aabb"] is None
    assert torch.allclose(model.centre, train.cameras.c2w[:, :, 3].mean(0), atol=1e-5)
    assert float(model.radius) == pytest.approx(float((train.cameras.c2w[:, :, 3] - model.centre).norm(dim=-1).max()))
    o, d = torch.tensor([[0.0, 30.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]])  # far from everything: still the network
    assert torch.allclose(model(o, d), model.field(model.coordinates(o, d)))
    assert lf.evaluate(out, "test", progress=False, device="cpu")["views"] == 2
    capsys.readouterr()
    assert main(["render", "lightfield", str(out), "--orbit", "--out", str(tmp_path / "v.gif"), "--device", "cpu"]) == 2
    assert "object scenes only" in capsys.readouterr().err


def test_command_line(tmp_path, capsys):
    import imageio.v3 as iio

    from fieldcraft.cli import main

    out = tmp_path / "cli"
    fit = ["fit", "lightfield", str(LEGO_MINI), "--out", str(out), "--quiet", "--device", "cpu", "--width", "16",
           "--layers", "2", "--rays", "256"]
    assert main([*fit, "--steps", "3"]) == 0
    assert (out / "checkpoint.safetensors").is_file() and (out / "history.jsonl").is_file()
    assert main([*fit, "--steps", "3"]) == 2  # a fresh run does not overwrite a checkpoint unasked
    capsys.readouterr()
    assert main([*fit, "--steps", "5", "--resume", "--width", "32"]) == 0
    assert "hidden_width=16 (given 32)" in capsys.readouterr().err
    assert load_checkpoint(out)[1]["step"] == 5
    assert main(["eval", "lightfield", str(out), "--split", "val", "--quiet", "--device", "cpu"]) == 0
    assert "val: 2 views" in capsys.readouterr().out
    assert json.loads((out / "eval" / "val" / "metrics.json").read_text())["views"] == 2
    video = tmp_path / "orbit.gif"
    assert main(["render", "lightfield", str(out), "--orbit", "--frames", "3", "--out", str(video), "--quiet",
                 "--device", "cpu"]) == 0
    assert iio.imread(video).shape[0] == 3
    bad = tmp_path / "bad"
    bad.mkdir()
    capsys.readouterr()
    assert main(["fit", "lightfield", str(bad), "--out", str(tmp_path / "x"), "--steps", "1"]) == 2
    assert "not a NeRF dataset" in capsys.readouterr().err
    assert main(["eval", "lightfield", str(bad)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    image_run = tmp_path / "image"
    assert main(["fit", "image", "sample:camera", "--size", "8", "--steps", "1", "--out", str(image_run), "--quiet",
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["render", "lightfield", str(image_run), "--orbit", "--out", str(tmp_path / "v.gif")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "is of task 'image', not 'lightfield'" in err
