"""Variants of the ``instant`` preset on a forward-facing (NDC) scene, scored on validation frames.

    python bench/nerf_ndc_variants.py --variants preset,rs64+dist5e-4 --seconds 240 --jobs 2
    python bench/nerf_ndc_variants.py --variants rs64,rs64+r1024,rs64+t18,rs64+ts13 --seconds 240 --jobs 2

How the NDC settings of the preset are chosen: each variant is fitted (``fieldcraft.tasks.nerf.fit``)
on the training frames of ``--data`` (fern by default) except every 8th of them, and scored on
those left-out training frames (PSNR / SSIM as ``eval nerf``); the LLFF test frames (every 8th
frame of the capture) are never looked at. The budget is ``--seconds`` of fitting (run the
variants at the same time, ``--jobs 2`` one-thread processes, so they share the machine's load)
or ``--steps``; ``--seed`` seeds every variant. A variant is ``preset`` (the NDC preset
itself) or changes to it joined by ``+`` (``CHANGES``; ``rs64+r1024``): ``rs64`` / ``rs32`` 64 / 32
marching steps along the NDC ray (the preset: 128); ``dist5e-4`` / ``dist2e-3`` the distortion
loss at that weight; ``ts13`` / ``ts15`` 2^13 / 2^15 samples a batch; ``r1024`` finest level 1024;
``t18`` 2^18 table rows per level; ``g128`` a 128^3 occupancy grid; ``a3`` alpha threshold 1e-3;
``lr2`` lr 2e-2.

Writes ``bench/results/nerf_ndc_variants_<dataset>_val.json`` (one entry per variant, budget and seed;
other entries are kept) and prints a line per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "nerf" / "fern_llff"
RESULTS = HERE / "results" / "nerf_ndc_variants_{}_val.json"
HOLDOUT = 8


CHANGES = {  # name -> (NerfConfig fields it sets, hash-grid fields it sets)
    "rs64": ({"render_steps": 64}, {}),
    "rs32": ({"render_steps": 32}, {}),
    "dist5e-4": ({"distortion_weight": 5e-4}, {}),
    "dist2e-3": ({"distortion_weight": 2e-3}, {}),
    "ts13": ({"target_samples": 1 << 13}, {}),
    "ts15": ({"target_samples": 1 << 15}, {}),
    "r1024": ({}, {"max_resolution": 1024}),
    "t18": ({}, {"log2_table_size": 18}),
    "g128": ({"grid_resolution": 128}, {}),
    "a3": ({"alpha_threshold": 1e-3}, {}),
    "lr2": ({"lr": 2e-2}, {}),
}


def variant(name: str):
    """The NDC ``instant`` config of a variant name: ``preset``, or changes of ``CHANGES`` joined by ``+``."""
    from fieldcraft.tasks.nerf import nerf_config

    config = nerf_config("instant", ndc=True)
    for change in ([] if name == "preset" else name.split("+")):
        if change not in CHANGES:
            sys.exit(f"unknown change {change!r} in {name!r} (use preset or {'+'.join(CHANGES)})")
        fields, grid = CHANGES[change]
        pe = config.field.position_encoding.replace(**grid)
        config = config.replace(field=config.field.replace(position_encoding=pe), **fields)
    return config


def one_run(args: argparse.Namespace, name: str) -> dict:
    """Fit variant ``name`` on the training frames but every ``HOLDOUT``-th and score those (the child)."""
    import torch
    from nerf_proposal import score_val

    from fieldcraft.data.scene import load_posed_images
    from fieldcraft.tasks.nerf import fit
    from fieldcraft.train import Budget

    torch.set_num_threads(args.threads)
    config = variant(name).replace(seed=args.seed)
    n = len(load_posed_images(args.data, "train"))
    out = Path(args.work) / f"{name}_seed{args.seed}"
    budget = Budget(seconds=args.seconds) if args.seconds else Budget(steps=args.steps)
    load = os.getloadavg()[0]
    s = fit(config, args.data, out, budget, overwrite=True, progress=False,
            frames=tuple(i for i in range(n) if i % HOLDOUT))
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    psnr, ssim, views, seconds = score_val(out, HOLDOUT, None)
    return {"name": name, "steps": s["steps"], "fit_seconds": s["fit_seconds"],
            "ms_per_step": 1000 * s["fit_seconds"] / s["steps"], "val_psnr": psnr, "val_ssim": ssim,
            "val_views": [v["name"] for v in views], "val_per_view": [round(v["psnr"], 3) for v in views],
            "train_psnr": s["train_psnr"], "mean_rays": sum(h["rays"] for h in history) / len(history),
            "mean_samples_per_ray": sum(h["spr"] for h in history) / len(history),
            "render_steps": config.render_steps, "target_samples": config.target_samples, "lr": config.lr,
            "threads": args.threads, "load_average_1min_before": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--variants", default="preset,rs64", help="comma-separated names (VARIANTS)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=None, help="a time budget instead of --steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="threads of each run")
    ap.add_argument("--jobs", type=int, default=1, help="variants fitted at the same time")
    ap.add_argument("--work", default="/tmp/fieldcraft_bench_nerf_ndc")
    ap.add_argument("--json", type=Path, default=None, help="default bench/results/nerf_ndc_variants_<data>_val.json")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data}: dataset not found (see ../shared/data/README.md)")
    if args.child:
        sys.path.insert(0, str(HERE))
        print(json.dumps(one_run(args, args.child)))
        return
    names = args.variants.split(",")
    for name in names:
        variant(name)  # unknown changes end here
    budget = f"{args.seconds:g} s" if args.seconds else f"{args.steps} steps"
    flags = ["--data", str(args.data), "--steps", str(args.steps), "--threads", str(args.threads), "--work", args.work,
             "--seed", str(args.seed)]
    flags += ["--seconds", str(args.seconds)] if args.seconds else []

    def child(name: str) -> dict:
        done = subprocess.run([sys.executable, __file__, *flags, "--child", name], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{name}: failed\n{done.stderr[-2000:]}")
        run = json.loads(done.stdout.strip().splitlines()[-1]) | {"budget": budget, "jobs": args.jobs,
                                                                 "seed": args.seed}
        print(json.dumps(run), flush=True)
        return run

    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(child, names))
    path = args.json or Path(str(RESULTS).format(args.data.name))
    result = json.loads(path.read_text()) if path.exists() else {
        "what": f"instant preset (NDC) variants on {args.data.name}: mean PSNR over the training frames left out "
                f"of the fit (every {HOLDOUT}th), after a step or time budget", "runs": []}
    keys = {(r["name"], r["budget"], r["seed"]) for r in runs}
    result["runs"] = [r for r in result["runs"] if (r["name"], r["budget"], r.get("seed")) not in keys] + runs
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
