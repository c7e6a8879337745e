"""fit images: batched per-image fields (tiny datasets, few steps)."""

import json
import os
import signal

import numpy as np
import pytest
import torch

from fieldcraft.cli import main
from fieldcraft.datasets import open_images, write_idx
from fieldcraft.errors import FieldcraftError
from fieldcraft.io.images import decode_png, read_png
from fieldcraft.metrics import psnr
from fieldcraft.tasks.images import (
    BatchedFields,
    BatchedPixelRegression,
    ImagesFitConfig,
    fit_images,
    images_field_config,
    load_weights,
)
from fieldcraft.train import Budget


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_smoke_reference_kernels(tmp_path, monkeypatch):
    monkeypatch.setenv("FIELDCRAFT_KERNELS", "reference")
    config = ImagesFitConfig(source="sample:digits", limit=16, batch_images=6)
    m = fit_images(config, tmp_path, Budget(steps=25), progress=False)
    assert m["images"] == 16 and m["chunks"] == 3 and m["steps_per_chunk"] == [25, 25, 25]
    assert m["stopped"] is None and np.isfinite(m["psnr"]) and m["psnr"] > 25
    names = [r["name"] for r in m["per_image"]]
    assert names == [f"{i:05d}" for i in range(16)]
    # the reported PSNR is that of the 16-bit PNGs against the (16-bit-rounded) targets
    targets = open_images("sample:digits", limit=16).read(range(16))
    for i in (0, 7, 15):
        recon = decode_png((tmp_path / "reconstructions" / f"{names[i]}.png").read_bytes()) / 65535.0
        assert recon.shape == (8, 8, 1)
        t16 = np.rint(targets[i].astype(np.float64) * 65535) / 65535
        assert psnr(t16, recon) == pytest.approx(m["per_image"][i]["psnr"], abs=1e-9)
    assert m["psnr"] == pytest.approx(np.mean([r["psnr"] for r in m["per_image"]]))
    assert (tmp_path / "mosaic.png").exists() and (tmp_path / "checkpoint.safetensors").exists()
    # weights: per chunk, named as the field's parameters with a leading image dimension
    field, params, info = load_weights(tmp_path / "chunks" / "00001.weights.safetensors")
    assert info["names"] == names[6:12] and info["first"] == 6
    assert params["network.linears.0.weight"].shape == (6, 32, 2)
    from fieldcraft.coords import pixel_centres

    with torch.no_grad():
        y = field(pixel_centres(8, 8, "cpu").expand(6, -1, -1), params)
    np.testing.assert_allclose(y[0].reshape(8, 8, 1).clamp(0, 1).numpy(),
                               read_png(tmp_path / "reconstructions" / "00006.png"), atol=1 / 65535 + 1e-6)


def test_batched_gradient_is_each_images_own():
    """Micro-batching and batching do not mix images: each image's gradient is that of its own fit."""
    torch.manual_seed(0)
    model = BatchedFields(images_field_config("siren-small", 1), 5, torch.Generator().manual_seed(1))
    coords = torch.rand(5, 10, 2) * 2 - 1
    targets = torch.rand(5, 10, 1)
    grads = {}
    for micro in (5, 2, 1):
        model.zero_grad()
        BatchedPixelRegression(coords, targets, micro).loss(model, 0)
        grads[micro] = {k: p.grad.clone() for k, p in model.params().items()}
    for name in grads[5]:
        torch.testing.assert_close(grads[5][name], grads[2][name])
        torch.testing.assert_close(grads[5][name], grads[1][name])
    # image 3 alone (unbatched weights) has the same gradient as its slice
    params = {k: v[3].detach().clone().requires_grad_() for k, v in model.params().items()}
    loss = ((model.field(coords[3], params) - targets[3]) ** 2).mean()
    loss.backward()
    for name, p in params.items():
        torch.testing.assert_close(p.grad, grads[1][name][3])


def test_resume_continues_chunk_in_progress_and_skips_finished(tmp_path, monkeypatch):
    config = ImagesFitConfig(source="sample:digits", limit=10, batch_images=4)
    full = fit_images(config, tmp_path / "full", Budget(steps=12), progress=False)

    calls = {"n": 0}
    original = BatchedPixelRegression.loss

    def interrupting(self, model, step):
        calls["n"] += 1
        if model.batch == 4 and step == 5 and calls.get("sent") is None and calls["n"] > 13:
            calls["sent"] = True
            os.kill(os.getpid(), signal.SIGINT)  # in chunk 1: the loop ends the step, saves, returns
        return original(self, model, step)

    monkeypatch.setattr(BatchedPixelRegression, "loss", interrupting)
    part = fit_images(config, tmp_path / "part", Budget(steps=12), progress=False)
    assert part["stopped"] == "SIGINT" and part["chunks_done"] == 1 and part["steps_per_chunk"] == [12, 6]
    assert not (tmp_path / "part" / "chunks" / "00001.json").exists()
    monkeypatch.setattr(BatchedPixelRegression, "loss", original)
    chunk0 = (tmp_path / "part" / "chunks" / "00000.weights.safetensors").stat().st_mtime_ns
    resumed = fit_images(config, tmp_path / "part", None, resume=True, progress=False)
    assert resumed["stopped"] is None and resumed["steps_per_chunk"] == [12, 12, 12]
    assert (tmp_path / "part" / "chunks" / "00000.weights.safetensors").stat().st_mtime_ns == chunk0  # skipped
    assert [r["psnr"] for r in resumed["per_image"]] == [r["psnr"] for r in full["per_image"]]
    for k in range(3):
        a = _weights(tmp_path / "full" / "chunks" / f"{k:05d}.weights.safetensors")
        b = _weights(tmp_path / "part" / "chunks" / f"{k:05d}.weights.safetensors")
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_seconds_budget_is_shared_by_image_count(tmp_path):
    config = ImagesFitConfig(source="sample:digits", limit=9, batch_images=6)
    m = fit_images(config, tmp_path, Budget(seconds=0.6), progress=False)
    chunks = [json.loads((tmp_path / "chunks" / f"{k:05d}.json").read_text()) for k in range(2)]
    assert chunks[0]["fit_seconds"] >= 0.4 and chunks[1]["fit_seconds"] >= 0.2  # 6/9 and 3/9 of 0.6 s
    assert m["fit_seconds"] == pytest.approx(sum(c["fit_seconds"] for c in chunks))


def test_cli_idx_with_names_and_refusals(tmp_path, capsys):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (5, 6, 7), dtype=np.uint8))
    out = tmp_path / "run"
    src = str(tmp_path / "t10k-images-idx3-ubyte.gz")
    assert main(["fit", "images", src, "--out", str(out), "--steps", "3", "--limit", "4", "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["images"] == 4 and sorted(p.name for p in (out / "reconstructions").iterdir()) == [
        "00000.png", "00001.png", "00002.png", "00003.png"]
    assert read_png(out / "reconstructions" / "00000.png").shape == (6, 7, 1)
    # a second fresh run is refused; --overwrite starts again
    assert main(["fit", "images", src, "--out", str(out), "--steps", "3", "--quiet"]) == 2
    assert "already holds" in capsys.readouterr().err
    assert main(["fit", "images", src, "--out", str(out), "--steps", "2", "--limit", "2", "--overwrite",
                 "--quiet"]) == 0
    assert len(list((out / "reconstructions").iterdir())) == 2  # the earlier run's outputs are gone
    assert main(["fit", "images", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "x"), "--steps", "1"]) == 2
    assert "missing.npy: no such file" in capsys.readouterr().err


def test_folder_rgb_names(tmp_path):
    from fieldcraft.io.images import write_png

    rng = np.random.default_rng(3)
    src = tmp_path / "imgs"
    for name in ("cat", "dog"):
        write_png(src / f"{name}.png", rng.random((5, 4, 3)), bits=8)
    m = fit_images(ImagesFitConfig(source=str(src)), tmp_path / "out", Budget(steps=2), progress=False)
    assert [r["name"] for r in m["per_image"]] == ["cat", "dog"]
    assert read_png(tmp_path / "out" / "reconstructions" / "dog.png").shape == (5, 4, 3)


def test_resume_refuses_changed_dataset(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((4, 5, 5), np.uint8))
    config = ImagesFitConfig(source=str(tmp_path / "a.npy"))
    fit_images(config, tmp_path / "run", Budget(steps=1), progress=False)
    np.save(tmp_path / "a.npy", np.zeros((6, 5, 5), np.uint8))
    with pytest.raises(FieldcraftError, match="the dataset changed"):
        fit_images(config, tmp_path / "run", Budget(steps=2), resume=True, progress=False)


def test_cli_sigint_exits_130_then_resume_finishes(tmp_path):
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    base = [sys.executable, "-m", "fieldcraft", "fit", "images", "sample:digits", "--out", str(out), "--quiet"]
    cmd = base + ["--limit", "64", "--batch-images", "32", "--seconds", "60"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "history.jsonl").exists() and time.time() < deadline:  # training has started
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 130, stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["stopped"] == "SIGINT" and m["chunks_done"] == 0 and m["images"] == 32
    # the stored budget is 60 s; a shorter one finishes the chunk in progress (its share is spent) and the next
    r = subprocess.run(base + ["--seconds", "1", "--resume"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["stopped"] is None and m["chunks_done"] == 2 and m["images"] == 64
    assert len(list((out / "reconstructions").glob("*.png"))) == 64
