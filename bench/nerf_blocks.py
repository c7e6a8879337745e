"""One field against a scene fitted in blocks (Block-NeRF) with the same budget in all.

Fits ``lego_100`` (preset ``instant``) once as one field and once as ``--blocks`` blocks, both with
the same budget (``--seconds S`` in all: each block gets ``S / N``; or ``--steps K`` in all: each
block ``K / N`` steps), evaluates both on the test split (200 views, ``eval nerf``: the blocks
composited by inverse distance, visibility and matched colours) and writes
``bench/results/nerf_blocks_lego.json``. Run on a quiet machine for time budgets:

    OMP_NUM_THREADS=2 NUMBA_NUM_THREADS=2 python bench/nerf_blocks.py --seconds 240
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "nerf" / "lego_100"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    budget = ap.add_mutually_exclusive_group(required=True)
    budget.add_argument("--seconds", type=float, help="fitting seconds, for the one field and for all blocks together")
    budget.add_argument("--steps", type=int, help="steps, for the one field and for all blocks together")
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--overlap", type=float, default=None, help="--block-overlap (default: the command's)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=None, help="evaluate the first N views only")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_nerf_blocks")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "nerf_blocks_lego.json")
    ap.add_argument("--reuse", action="store_true",
                    help="evaluate the runs already in --work (fitted by an earlier run of this script) without fitting")
    args = ap.parse_args()

    from fieldcraft.io.records import write_json
    from fieldcraft.tasks.nerf import evaluate, fit, nerf_config
    from fieldcraft.tasks.nerf.blocks import evaluate_blocks, fit_blocks
    from fieldcraft.train import Budget

    if not args.data.is_dir():
        sys.exit(f"nerf_blocks: {args.data} not found (the shared lego_100 dataset)")
    budget = Budget(steps=args.steps, seconds=args.seconds)
    config = nerf_config("instant")
    one_dir, blocks_dir = args.work / "one", args.work / f"blocks{args.blocks}"
    if not args.reuse:
        fit(config, args.data, one_dir, budget, progress=False, device="cpu", overwrite=True)
    t0 = time.perf_counter()
    one = evaluate(one_dir, args.split, max_images=args.limit, progress=False, device="cpu")
    one_eval = time.perf_counter() - t0
    summary = {} if args.reuse else fit_blocks(config, args.data, blocks_dir, budget, args.blocks,
                                                overlap=args.overlap, progress=False, device="cpu", overwrite=True)
    t0 = time.perf_counter()
    blocks = evaluate_blocks(blocks_dir, args.split, max_images=args.limit, progress=False, device="cpu")
    blocks_eval = time.perf_counter() - t0
    layout = json.loads((blocks_dir / "blocks.json").read_text())
    result = {
        "data": str(args.data), "split": args.split, "views": one["views"], "preset": "instant",
        "budget": {"steps": args.steps, "seconds": args.seconds, "for": "the one field, and all blocks together"},
        "one_field": {"psnr": one["psnr"], "ssim": one["ssim"], "steps": one["step"], "fit_seconds": one["fit_seconds"],
                      "eval_seconds": one_eval},
        "blocks": {"n": args.blocks, "overlap": layout["overlap"], "compositing": layout["compositing"],
                   "cameras_per_block": [len(c) for c in layout["cameras"]],
                   "psnr": blocks["psnr"], "ssim": blocks["ssim"], "steps_per_block": blocks["block_steps"],
                   "fit_seconds": blocks["fit_seconds"], "match_seconds": summary.get("match_seconds"),
                   "eval_seconds": blocks_eval},
        "psnr_gap_db": one["psnr"] - blocks["psnr"],
        "conditions": {"threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")},
                       "load_average_1min_at_end": os.getloadavg()[0], "cpu_count": os.cpu_count(),
                       "machine": platform.machine()},
        "command": "python bench/nerf_blocks.py " + " ".join(sys.argv[1:]),
    }
    print(f"one field : PSNR {one['psnr']:.2f} dB, SSIM {one['ssim']:.4f}, {one['step']} steps, "
          f"{one['fit_seconds']:.1f} s")
    print(f"{args.blocks} blocks  : PSNR {blocks['psnr']:.2f} dB, SSIM {blocks['ssim']:.4f}, steps {blocks['block_steps']}, "
          f"{blocks['fit_seconds']:.1f} s in all (cameras per block {result['blocks']['cameras_per_block']})")
    print(f"gap: {result['psnr_gap_db']:.2f} dB")
    write_json(args.out, result)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
