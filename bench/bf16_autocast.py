"""PSNR and speed cost of bf16 autocast for wide MLPs, on a small image fit.

Usage: ``python bench/bf16_autocast.py [--steps 300] [--size 128] [--json PATH]``

Fits skimage's ``camera`` image (resized to ``size``) with the 256-wide ``siren`` and
``relu-pe`` presets of :mod:`fieldcraft.fields.presets`, full batch, Adam lr 1e-4 / 1e-3,
once in float32 and once under :func:`fieldcraft.runtime.cpu_autocast` (bf16 matmuls,
float32 weights and loss), and reports final PSNR (evaluated in float32) and seconds per step.
Standalone on purpose: it does not use the image task.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

from fieldcraft.runtime import configure_cpu_defaults

configure_cpu_defaults()

import numpy as np
import torch
from skimage import data
from skimage.transform import resize

from fieldcraft.fields.presets import image_field_config
from fieldcraft.runtime import cpu_autocast, set_threads

LR = {"siren": 1e-4, "relu-pe": 1e-3}


def fit(preset: str, size: int, steps: int, bf16: bool) -> dict:
    img = resize(data.camera().astype(np.float32) / 255.0, (size, size), anti_aliasing=True).astype(np.float32)
    target = torch.from_numpy(img).reshape(-1, 1)
    j, i = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="xy")
    x = torch.stack([(2 * j + 1) / size - 1, (2 * i + 1) / size - 1], -1).reshape(-1, 2).float()
    torch.manual_seed(0)
    field = image_field_config(preset, 1, size).build()
    opt = torch.optim.Adam(field.parameters(), lr=LR[preset])
    t0 = time.perf_counter()
    for _ in range(steps):
        with cpu_autocast(bf16):
            pred = field(x)
        loss = (pred.float() - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    seconds = (time.perf_counter() - t0) / steps
    with torch.no_grad():
        mse = (field(x).float().clamp(0, 1) - target).pow(2).mean().item()
    return {"preset": preset, "bf16": bf16, "psnr": 10 * math.log10(1 / mse), "seconds_per_step": seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bf16_autocast.json"))
    args = ap.parse_args()
    set_threads()
    rows = []
    print(f"{'preset':8} {'dtype':8} {'PSNR dB':>8} {'s/step':>8}")
    for preset in ("siren", "relu-pe"):
        for bf16 in (False, True):
            r = fit(preset, args.size, args.steps, bf16)
            rows.append(r)
            print(f"{preset:8} {'bf16' if bf16 else 'fp32':8} {r['psnr']:8.2f} {r['seconds_per_step']:8.4f}", flush=True)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump({"size": args.size, "steps": args.steps, "threads": torch.get_num_threads(),
                   "load_average": os.getloadavg(), "results": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
