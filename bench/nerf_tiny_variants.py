"""``tiny`` NeRF variants side by side, chosen on the validation split: short fits of the same
steps and seed, scored on the first views of lego_100's ``val`` split (never the test split,
which reports the chosen preset).

    python bench/nerf_tiny_variants.py --steps 100 --val-views 20 --threads 1

Variants (all: 8x256 ReLU, skip at 5, softplus density, 64 stratified samples in a box, one full
lego_100 image per step, bf16, Adam at a constant 5e-4, so only these fields differ):

- ``box_torch``: positions normalised over the scene box, ``sin(2^k pi p)``, PyTorch's default init;
- ``box_glorot``: the same with Glorot-uniform weights and zero biases (Keras' default, the notebook's);
- ``world_glorot``: also the notebook's encoding, ``sin(2^k x)`` on world coordinates;
- ``world_glorot_hull``: also the samples in the box around the training views' visual hull
  (``box="silhouette"``) instead of the dataset's ``[-1.5, 1.5]^3``;
- ``world_glorot_hull_rays``: also each ray's samples only over its stretch through the visual hull
  itself (``box="hull"``, as the ``tiny`` preset).

The variants run at the same time, one process each (``--threads`` per process), so a noisy machine
slows them alike. Each writes ``--work/<variant>``; the figures (val PSNR / SSIM on the first
``--val-views`` val views, training-batch PSNR of the last logged steps, fitting seconds) go to
``bench/results/nerf_tiny_variants.json`` and are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "nerf" / "lego_100"
RESULTS = HERE / "results" / "nerf_tiny_variants.json"
VARIANTS = ("box_torch", "box_glorot", "world_glorot", "world_glorot_hull", "world_glorot_hull_rays")


def variant_config(name: str, seed: int):
    from fieldcraft.encodings import FrequencyEncodingConfig
    from fieldcraft.tasks.nerf import nerf_config

    cfg = nerf_config("tiny", schedule="constant", seed=seed)
    world = name.startswith("world")
    field = cfg.field.replace(position_encoding=FrequencyEncodingConfig(n_frequencies=6, pi_scale=not world),
                              positions="world" if world else "box", init="torch" if "torch" in name else "glorot")
    box = "hull" if name.endswith("hull_rays") else "silhouette" if name.endswith("hull") else "dataset"
    return cfg.replace(field=field, box=box)


def run_one(name: str, args: argparse.Namespace) -> dict:
    import torch

    from fieldcraft.tasks.nerf import evaluate, fit
    from fieldcraft.train import Budget, History

    torch.set_num_threads(args.threads)
    out = Path(args.work) / name
    summary = fit(variant_config(name, args.seed), args.data, out, Budget(steps=args.steps), progress=False,
                  device="cpu", overwrite=True, checkpoint_seconds=1e9)
    m = evaluate(out, "val", max_images=args.val_views, progress=False, device="cpu")
    tail = History.load(out / "history.jsonl").column("psnr")[-10:]
    return {"variant": name, "steps": summary["steps"], "fit_seconds": summary["fit_seconds"], "split": "val",
            "val_views": m["views"], "val_psnr": m["psnr"], "val_ssim": m["ssim"], "train_psnr_last_logged": tail}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--val-views", type=int, default=20, help="score the first N views of the val split")
    ap.add_argument("--threads", type=int, default=1, help="threads per variant process")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/fieldcraft_bench_tiny_variants")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one variant, print its JSON
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return 0
    names = [v for v in args.variants.split(",") if v]
    for v in names:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r} (choose from {', '.join(VARIANTS)})")
    base = [sys.executable, __file__, "--data", args.data, "--steps", str(args.steps), "--val-views", str(args.val_views),
            "--threads", str(args.threads), "--seed", str(args.seed), "--work", args.work]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    procs = {v: subprocess.Popen([*base, "--one", v], stdout=subprocess.PIPE, text=True, env=env) for v in names}
    rows = []
    for v, p in procs.items():
        stdout, _ = p.communicate()
        if p.returncode != 0:
            print(f"variant {v} failed (exit {p.returncode})", file=sys.stderr)
            return 1
        rows.append(json.loads(stdout.strip().splitlines()[-1]))
    load = os.getloadavg()[0]
    for r in rows:
        r["load_average_at_end"] = load
        print(f"{r['variant']:>24}  {r['steps']} steps  {r['fit_seconds']:7.0f} s  val PSNR {r['val_psnr']:.2f} dB  "
              f"SSIM {r['val_ssim']:.3f}  ({r['val_views']} val views)")
    from fieldcraft.io.records import write_json

    write_json(Path(args.results), {
        "benchmark": f"tiny NeRF variants on {Path(args.data).name}: PSNR / SSIM on the first {args.val_views} val views after "
                     f"{args.steps} steps (seed {args.seed}), to choose the preset without looking at the test split",
        "command": "python bench/nerf_tiny_variants.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
