"""Choose the latent classifier's settings by k-fold cross-validation on the TRAINING latents only,
then train on all of them and score the held-out latents once.

The settings of ``fit classifier`` (input noise, dropout) are chosen here without looking at the
held-out signals: each candidate is trained on k-1 folds of the training latents and scored on
the remaining fold; the candidate with the best mean fold accuracy is then trained on every
training latent and evaluated on the held-out latents (reported, never used to choose).

    python bench/classifier_select.py TRAIN VAL [--folds 5] [--noise 0,0.1,0.2,0.3,0.5]
        [--json bench/results/classifier_select_functa.json]

TRAIN, VAL: ``encode functa`` output directories (latents with labels), e.g. from bench/functa.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

from fieldcraft.latents.store import read_latents, write_latents
from fieldcraft.runtime import set_threads
from fieldcraft.tasks.classifier import ClassifierFitConfig, eval_classifier, fit_classifier


def fold_accuracy(z: np.ndarray, y: np.ndarray, config: ClassifierFitConfig, folds: int, work: Path) -> list[float]:
    """Accuracy on each of ``folds`` folds (a fixed permutation, seed 0) of a classifier trained on the others."""
    perm = np.random.default_rng(0).permutation(len(z))
    parts = np.array_split(perm, folds)
    accs = []
    for k, held in enumerate(parts):
        train = np.setdiff1d(perm, held)
        d = work / f"fold{k}"
        d.mkdir(parents=True, exist_ok=True)
        write_latents(d / "train.safetensors", z[train], y[train])
        write_latents(d / "held.safetensors", z[held], y[held])
        cfg = dataclasses.replace(config, latents=str(d / "train.safetensors"))
        fit_classifier(cfg, d / "C", progress=False, overwrite=True)
        accs.append(eval_classifier(d / "C", d / "held.safetensors")["accuracy"])
    return accs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train")
    ap.add_argument("val")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--noise", default="0,0.1,0.2,0.3,0.5")
    ap.add_argument("--dropout", default="0.3")
    ap.add_argument("--json", type=Path, default=Path("bench/results/classifier_select_functa.json"))
    args = ap.parse_args(argv)
    set_threads()  # OMP_NUM_THREADS, when set, decides
    z, y, _ = read_latents(args.train)
    if y is None:
        sys.exit(f"{args.train}: latents have no labels")
    candidates = [(float(n), float(d)) for n in args.noise.split(",") for d in args.dropout.split(",")]
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for noise, dropout in candidates:
            base = ClassifierFitConfig(noise=noise, dropout=dropout)
            accs = fold_accuracy(z, y, base, args.folds, Path(tmp) / f"n{noise}_d{dropout}")
            rows.append({"noise": noise, "dropout": dropout, "fold_accuracy": accs, "mean": float(np.mean(accs))})
            print(f"noise {noise:.2f} dropout {dropout:.2f}: {args.folds}-fold accuracy "
                  f"{np.mean(accs):.4f} (folds {', '.join(f'{a:.3f}' for a in accs)})", flush=True)
        best = max(rows, key=lambda r: r["mean"])
        cfg = ClassifierFitConfig(latents=str(args.train), noise=best["noise"], dropout=best["dropout"])
        fit_classifier(cfg, Path(tmp) / "final", progress=False)
        held = eval_classifier(Path(tmp) / "final", args.val)["accuracy"]
    print(f"chosen by cross-validation: noise {best['noise']}, dropout {best['dropout']}; "
          f"held-out accuracy {held:.4f} over {len(read_latents(args.val)[0])} signals")
    result = {"train": str(args.train), "val": str(args.val), "folds": args.folds, "candidates": rows,
              "chosen": {"noise": best["noise"], "dropout": best["dropout"]}, "heldout_accuracy": held,
              "heldout_count": int(len(read_latents(args.val)[0])), "seconds": time.perf_counter() - t0,
              "protocol": "settings chosen by k-fold cross-validation on the training latents only; the held-out "
                          "latents are scored once, with the chosen settings trained on all training latents"}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
