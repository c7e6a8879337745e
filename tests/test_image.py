"""Image fields end to end: a real fit clears a PSNR threshold, checkpoints round-trip
bit-identically, held-out protocols, derivatives, clear errors."""

import json
import warnings

import numpy as np
import pytest
import tifffile
import torch

from fieldcraft.cli import main
from fieldcraft.coords import pixel_centres
from fieldcraft.data.images import load_image
from fieldcraft.fields import image_field_config
from fieldcraft.io.images import quantize, read_png, write_png
from fieldcraft.metrics import psnr
from fieldcraft.tasks.image import (
    ImageFitConfig,
    cubic_prediction,
    field_derivative,
    fit_image,
    load_image_field,
    render_derivative,
    render_field,
    train_mask,
)
from fieldcraft.train import Budget


@pytest.fixture(scope="module")
def camera_fit(tmp_path_factory):
    out = tmp_path_factory.mktemp("camera")
    metrics = fit_image(ImageFitConfig(source="sample:camera", size=64, preset="hash"), out, Budget(steps=150),
                        progress=False)
    return out, metrics


def test_tiny_hash_fit_clears_psnr(camera_fit):
    out, metrics = camera_fit
    assert metrics["psnr"] > 30.0  # real photo, 64x64, 150 full-batch steps
    t, r = read_png(out / "target.png"), read_png(out / "reconstruction.png")
    assert abs(psnr(t, r) - metrics["psnr"]) < 1e-9
    assert (out / "psnr_curve.png").stat().st_size > 0
    with open(out / "metrics.json") as f:
        assert json.load(f)["steps"] == 150


def test_checkpoint_roundtrip_bit_identical(camera_fit):
    out, _ = camera_fit
    field, meta = load_image_field(out)
    again = render_field(field, 64, 64)
    import imageio.v3 as iio

    codes = quantize(again, 16)
    stored = iio.imread(out / "reconstruction.png")[..., None]
    assert np.array_equal(codes, stored)
    assert meta["fieldcraft_version"] and meta["image"]["height"] == 64


def test_resume_continues_to_budget(tmp_path):
    cfg = ImageFitConfig(source="sample:camera", size=32, preset="hash")
    fit_image(cfg, tmp_path, Budget(steps=20), progress=False)
    m = fit_image(cfg, tmp_path, Budget(steps=50), resume=True, progress=False)
    assert m["steps"] == 50
    # the same result as an uninterrupted 50-step run (same seeds; the per-step schedule ignores the budget)
    other = tmp_path / "straight"
    m2 = fit_image(cfg, other, Budget(steps=50), progress=False)
    assert abs(m["psnr"] - m2["psnr"]) < 1e-3


def test_super_resolution_render_cli(camera_fit, tmp_path):
    out, _ = camera_fit
    assert main(["render", "image", str(out), "--width", "256", "--out", str(tmp_path / "sr.png")]) == 0
    assert read_png(tmp_path / "sr.png").shape == (256, 256, 1)


def test_pixel_centres_and_masks():
    xy = pixel_centres(3, 4)
    assert torch.allclose(xy[0], torch.tensor([-0.75, -2 / 3]))
    m = train_mask(ImageFitConfig(protocol="every-other-pixel"), 8, 8)
    assert m.sum() == 16 and m[0, 0] and not m[0, 1] and not m[1, 0]
    m = train_mask(ImageFitConfig(train_fraction=0.25, seed=1), 100, 100)
    assert 0.2 < m.mean() < 0.3


def test_heldout_metrics_reported(tmp_path):
    m = fit_image(ImageFitConfig(source="sample:camera", size=32, train_fraction=0.5), tmp_path, Budget(steps=5),
                  progress=False)
    assert m["train_pixels"] + m["heldout_pixels"] == 32 * 32
    assert m["psnr"] == m["psnr_heldout"] and np.isfinite(m["psnr_heldout_cubic"]) and np.isfinite(m["psnr_all"])


def test_cubic_baseline_interpolates_the_training_pixels():
    """Bicubic on the every-other-pixel grid is exact for a quadratic ramp and keeps training pixels;
    scattered masks (Clough-Tocher) too, up to its own error."""
    y, x = np.mgrid[0:16, 0:16] / 15.0
    img = (0.2 + 0.3 * x + 0.4 * y * y)[..., None]
    grid = np.zeros((16, 16), bool)
    grid[::2, ::2] = True
    pred = cubic_prediction(img, grid)
    assert np.allclose(pred[grid], img[grid], atol=1e-5)
    assert np.abs(pred[:15, :15] - img[:15, :15]).max() < 1e-5  # inside the grid (the last row/column extrapolate)
    scattered = np.random.default_rng(0).random((16, 16)) < 0.5
    pred = cubic_prediction(img, scattered)
    assert np.allclose(pred[scattered], img[scattered]) and psnr(pred, img) > 35


@pytest.mark.parametrize("kind", ["grad", "laplace"])
def test_derivatives_match_finite_differences(kind):
    """Autograd |grad f| and Laplacian of a SIREN field against float64 central differences."""
    field = image_field_config("siren", 3).build().double()
    xy = torch.rand(50, 2, dtype=torch.float64) * 2 - 1
    got = field_derivative(field, xy, kind)
    eps = 1e-4
    ex, ey = torch.tensor([eps, 0.0], dtype=torch.float64), torch.tensor([0.0, eps], dtype=torch.float64)
    with torch.no_grad():
        if kind == "grad":
            fx = (field(xy + ex) - field(xy - ex)) / (2 * eps)
            fy = (field(xy + ey) - field(xy - ey)) / (2 * eps)
            want = torch.sqrt((fx**2 + fy**2).sum(-1))
        else:
            f0 = field(xy)
            want = ((field(xy + ex) + field(xy - ex) + field(xy + ey) + field(xy - ey) - 4 * f0) / eps**2).sum(-1)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-3 if kind == "laplace" else 1e-6)
    assert render_derivative(field, 5, 4, kind).shape == (5, 4)


def test_sixteen_bit_colour_png_roundtrip(tmp_path):
    """16-bit RGB(A) PNGs keep all 16 bits per channel, written and read."""
    x = np.random.default_rng(0).random((7, 5, 3))
    write_png(tmp_path / "c.png", x, bits=16)
    codes = np.rint(np.clip(x, 0, 1) * 65535)
    assert np.array_equal(np.rint(read_png(tmp_path / "c.png") * 65535), codes)
    img = load_image(str(tmp_path / "c.png"))
    assert img.bit_depth == 16 and np.array_equal(np.rint(img.pixels.astype(np.float64) * 65535), codes)


def test_sixteen_bit_and_rgba_inputs(tmp_path):
    rgba = np.zeros((5, 7, 4), np.uint16)
    rgba[..., 0] = 65535
    rgba[..., 3] = 32768
    tifffile.imwrite(tmp_path / "x.tif", rgba)
    img = load_image(str(tmp_path / "x.tif"))
    assert img.pixels.shape == (5, 7, 4) and img.bit_depth == 16
    assert np.allclose(img.pixels[0, 0], [1, 0, 0, 32768 / 65535])
    write_png(tmp_path / "g.png", np.full((4, 6), 0.5), bits=8)
    assert load_image(str(tmp_path / "g.png"), size=3).pixels.shape == (2, 3, 1)


def _error_line(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fieldcraft: error: ") and "Traceback" not in err[0]
    return err[0]


def test_bad_inputs_give_one_clear_line(tmp_path, capsys):
    out = str(tmp_path / "o")
    assert "no such file" in _error_line(capsys, ["fit", "image", str(tmp_path / "missing.png"), "--out", out])
    good = tmp_path / "good.png"
    write_png(good, np.random.default_rng(0).random((16, 16, 3)))
    trunc = tmp_path / "truncated.png"
    trunc.write_bytes(good.read_bytes()[:60])
    assert "truncated.png: unreadable or truncated" in _error_line(capsys, ["fit", "image", str(trunc), "--out", out])
    (tmp_path / "empty.png").write_bytes(b"")
    assert "empty file" in _error_line(capsys, ["fit", "image", str(tmp_path / "empty.png"), "--out", out])
    with warnings.catch_warnings():  # tifffile warns that it is writing a zero-size image: that is the point
        warnings.simplefilter("ignore")
        tifffile.imwrite(tmp_path / "zero.tif", np.zeros((0, 5), np.uint16))
    assert "zero.tif" in _error_line(capsys, ["fit", "image", str(tmp_path / "zero.tif"), "--out", out])
    nan = np.full((8, 8), 0.5, np.float16)
    nan[2, 3] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", nan)
    line = _error_line(capsys, ["fit", "image", str(tmp_path / "nan.tif"), "--out", out])
    assert "nan.tif" in line and "non-finite" in line and "row 2, column 3" in line
    assert "unknown preset 'nope'" in _error_line(capsys, ["fit", "image", str(good), "--preset", "nope", "--out", out])
    assert "unknown sample" in _error_line(capsys, ["fit", "image", "sample:nothing", "--out", out])
    assert "no checkpoint" in _error_line(capsys, ["render", "image", str(tmp_path), "--out", str(tmp_path / "r.png")])


def test_console_entry_point_exit_codes_and_output(tmp_path):
    """``python -m fieldcraft`` (``cli.run``, which ends with ``os._exit``) flushes its output and
    returns the command's exit code: 0 with the result printed, 2 with one error line."""
    import subprocess
    import sys

    ok = subprocess.run([sys.executable, "-m", "fieldcraft", "fit", "image", "sample:camera", "--size", "16",
                         "--steps", "2", "--out", str(tmp_path / "run"), "--quiet"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "run" / "checkpoint.safetensors").is_file() and ok.stdout.strip()
    bad = subprocess.run([sys.executable, "-m", "fieldcraft", "fit", "image", str(tmp_path / "missing.png"), "--out",
                          str(tmp_path / "x")], capture_output=True, text=True)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and lines[0].startswith("fieldcraft: error:"), bad.stderr
