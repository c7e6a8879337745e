"""Functa end to end on tiny inputs (8x8 digits, a 16-wide SIREN): the inner loop, meta-learning
(second and first order), resume, encode (latents, labels, reconstructions, imputation), the CNN
encoder, the prior's samples, interpolation strips and the latent classifier."""

import json

import numpy as np
import pytest
import torch

from fieldcraft.cli import main
from fieldcraft.coords import pixel_centres
from fieldcraft.datasets import write_idx
from fieldcraft.errors import FieldcraftError
from fieldcraft.io.images import read_png
from fieldcraft.latents.functa import FunctaNetConfig, observation_mask, signal_mse
from fieldcraft.latents.store import read_latents, write_latents
from fieldcraft.metrics import psnr
from fieldcraft.tasks.classifier import ClassifierFitConfig, eval_classifier, fit_classifier
from fieldcraft.tasks.functa import FunctaFitConfig, encode_functa, fit_functa, load_functa
from fieldcraft.train import Budget

TINY = dict(source="sample:digits", limit=32, latent=8, width=16, layers=2, batch_size=8, prior_steps=40)


@pytest.fixture(scope="module")
def tiny_functa(tmp_path_factory):
    out = tmp_path_factory.mktemp("functa")
    metrics = fit_functa(FunctaFitConfig(**TINY), out, Budget(steps=40), progress=False)
    return out, metrics


@pytest.fixture(scope="module")
def digits_idx(tmp_path_factory):
    """12 digits as MNIST-style IDX files (images + labels beside them)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    root = tmp_path_factory.mktemp("idx")
    images = np.rint(d.images[100:112] / 16 * 255).astype(np.uint8)
    write_idx(root / "t10k-images-idx3-ubyte.gz", images)
    write_idx(root / "t10k-labels-idx1-ubyte.gz", d.target[100:112].astype(np.uint8))
    return root / "t10k-images-idx3-ubyte.gz", d.target[100:112]


def test_inner_loop_is_per_signal_and_lowers_the_error():
    torch.manual_seed(0)
    model = FunctaNetConfig(latent=8, width=16, layers=2).build()
    coords = pixel_centres(8, 8)
    y = torch.rand(5, 64, 1)
    z0 = model.inner_loop(y, coords, 0)
    z = model.inner_loop(y, coords, 3)
    assert torch.all(signal_mse(model(z, coords), y) < signal_mse(model(z0, coords), y))
    alone = model.inner_loop(y[2:3], coords, 3)  # a signal's latent does not depend on its batch
    assert torch.allclose(alone, z[2:3], atol=1e-6)


def test_second_order_gradient_differs_from_first_order():
    torch.manual_seed(0)
    model = FunctaNetConfig(latent=4, width=8, layers=2).build()
    coords, y = pixel_centres(4, 4), torch.rand(3, 16, 1)
    grads = {}
    for second in (True, False):
        model.zero_grad()
        z = model.inner_loop(y, coords, 2, create_graph=second)
        signal_mse(model(z, coords), y).mean().backward()
        grads[second] = model.to_shift.weight.grad.clone()
        assert model.inner_lr.grad is not None and model.inner_lr.grad.abs().sum() > 0  # Meta-SGD learns either way
    assert not torch.allclose(grads[True], grads[False])


def test_meta_learning_improves_and_writes_outputs(tiny_functa):
    out, metrics = tiny_functa
    assert metrics["steps"] == 40 and metrics["stopped"] is None and metrics["order"] == "second-order"
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    first, last = np.mean([h["psnr"] for h in history[:5]]), np.mean([h["psnr"] for h in history[-5:]])
    assert last > first + 1.0
    z, labels, meta = read_latents(out)
    assert z.shape == (32, 8) and labels.tolist()[:3] == [0, 1, 2] and meta["names"][0] == "00000"
    assert (out / "prior" / "checkpoint.safetensors").exists() and np.isfinite(metrics["prior"]["final_loss"])
    assert np.isfinite(metrics["train_mean_psnr"])


def test_first_order_fit_and_reference_kernels(tmp_path, monkeypatch):
    monkeypatch.setenv("FIELDCRAFT_KERNELS", "reference")
    m = fit_functa(FunctaFitConfig(**{**TINY, "first_order": True, "prior_steps": 0}), tmp_path, Budget(steps=5),
                   progress=False)
    assert m["order"] == "first-order" and m["steps"] == 5 and np.isfinite(m["train_mean_psnr"])
    model, _ = load_functa(tmp_path)
    torch.manual_seed(0)
    initial = model.config.build()  # the fit's initialisation (same seed, same draws)
    assert torch.isfinite(model.inner_lr).all() and not torch.allclose(model.inner_lr, initial.inner_lr)
    assert not (tmp_path / "prior").exists()


def test_ctrl_c_then_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    import os
    import signal

    from fieldcraft.tasks import functa as task

    cfg = FunctaFitConfig(**{**TINY, "prior_steps": 0})
    loss = task.MetaLearning.loss

    def interrupted(self, model, step):  # Ctrl-C during step 3: the run stops after it
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return loss(self, model, step)

    monkeypatch.setattr(task.MetaLearning, "loss", interrupted)
    stopped = fit_functa(cfg, tmp_path / "a", Budget(steps=8), progress=False)
    assert stopped["stopped"] == "SIGINT" and stopped["steps"] == 4 and not (tmp_path / "a" / "latents.safetensors").exists()
    monkeypatch.undo()
    m = fit_functa(cfg, tmp_path / "a", resume=True, progress=False)  # the stored budget: 8 steps
    m2 = fit_functa(cfg, tmp_path / "b", Budget(steps=8), progress=False)
    assert m["steps"] == m2["steps"] == 8 and m["stopped"] is None
    za, _, _ = read_latents(tmp_path / "a")
    zb, _, _ = read_latents(tmp_path / "b")
    np.testing.assert_allclose(za, zb, atol=1e-5)


def test_encode_writes_latents_labels_and_reconstructions(tiny_functa, digits_idx, tmp_path):
    out, _ = tiny_functa
    images, labels = digits_idx
    assert main(["encode", "functa", str(out), str(images), "--out", str(tmp_path / "E"), "--batch-size", "5",
                 "--quiet"]) == 0
    z, got, meta = read_latents(tmp_path / "E")
    assert z.shape == (12, 8) and got.tolist() == labels.tolist() and got.dtype == np.int64
    m = json.loads((tmp_path / "E" / "metrics.json").read_text())
    assert m["count"] == 12 and m["inner_steps"] == 10  # the fit's encode_steps
    from fieldcraft.datasets import open_images

    ds = open_images(str(images))
    rec = read_png(tmp_path / "E" / "reconstructions" / "00003.png")
    assert rec.shape == (8, 8, 1)
    assert abs(psnr(ds.read([3])[0], rec) - m["per_image"][3]["psnr"]) < 1e-9
    assert abs(np.mean([r["psnr"] for r in m["per_image"]]) - m["mean_psnr"]) < 1e-9
    # batching does not change the latents
    encode_functa(out, str(images), tmp_path / "E1", batch_size=12, progress=False)
    np.testing.assert_allclose(read_latents(tmp_path / "E1")[0], z, atol=1e-5)
    m3 = encode_functa(out, str(images), tmp_path / "E3", inner_steps=3, progress=False)
    assert m3["inner_steps"] == 3 and m3["mean_psnr"] < m["mean_psnr"]  # more steps, lower error


def test_imputation_reports_unobserved_pixels(tiny_functa, tmp_path):
    out, _ = tiny_functa
    m = encode_functa(out, "sample:digits", tmp_path, limit=6, observe="top-half", progress=False)
    assert m["observe"] == "top-half" and np.isfinite(m["mean_psnr_unobserved"]) and np.isfinite(m["mean_psnr_observed"])
    mask = observation_mask("random:0.25", 8, 8, torch.arange(40))
    assert 0.15 < float(mask.mean()) < 0.35
    assert torch.equal(observation_mask("random:0.25", 8, 8, torch.tensor([7]))[0], mask[7])
    with pytest.raises(FieldcraftError, match="--observe"):
        observation_mask("random:2", 8, 8, torch.arange(2))


def test_sample_render_and_cnn_encoder(tiny_functa, tmp_path):
    out, _ = tiny_functa
    assert main(["sample", "functa", str(out), "--n", "10", "--out", str(tmp_path / "grid.png")]) == 0
    assert read_png(tmp_path / "grid.png").shape == (3 * 9 - 1, 4 * 9 - 1, 1)  # 10 samples: 4 columns, 3 rows
    assert main(["render", "functa", str(out), "--interpolate", "0", "1", "--source", "sample:digits", "--frames", "5",
                 "--size", "16", "--out", str(tmp_path / "strip.png")]) == 0
    assert read_png(tmp_path / "strip.png").shape == (16, 80, 1)
    assert main(["fit", "functa-encoder", str(out), "sample:digits", "--limit", "32", "--steps", "5", "--quiet",
                 "--out", str(tmp_path / "H")]) == 0
    m = encode_functa(out, "sample:digits", tmp_path / "E", limit=8, encoder=tmp_path / "H", progress=False)
    assert m["inner_steps"] == 0 and m["encoder"] and np.isfinite(m["mean_psnr"])


def test_classifier_on_separable_latents(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    z = rng.normal(size=(120, 6)).astype(np.float32) * 0.3 + np.eye(6)[labels][:, :6] * 3 + 5
    write_latents(tmp_path / "train.safetensors", z, labels)
    write_latents(tmp_path / "nolabels.safetensors", z)
    m = fit_classifier(ClassifierFitConfig(latents=str(tmp_path / "train.safetensors"), width=32), tmp_path / "C",
                       Budget(steps=100), progress=False)
    assert m["train_accuracy"] == 1.0 and m["classes"] == 3
    assert main(["eval", "classifier", str(tmp_path / "C"), str(tmp_path / "train.safetensors")]) == 0
    got = json.loads((tmp_path / "C" / "metrics.json").read_text())
    assert got["accuracy"] == 1.0 and got["train_accuracy"] == 1.0 and np.trace(got["confusion"]) == 120
    with pytest.raises(FieldcraftError, match="no labels"):
        eval_classifier(tmp_path / "C", tmp_path / "nolabels.safetensors")


def test_clear_errors(tiny_functa, tmp_path):
    out, _ = tiny_functa
    with pytest.raises(FieldcraftError, match="fitted to 8x8"):
        encode_functa(out, "sample:lfw", tmp_path, limit=2, progress=False)
    assert main(["encode", "functa", str(tmp_path / "missing"), "sample:digits", "--out", str(tmp_path / "x")]) == 2
    assert main(["sample", "functa", str(out), "--n", "0", "--out", str(tmp_path / "g.png")]) == 2
