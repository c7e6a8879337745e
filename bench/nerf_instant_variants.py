"""Variants of the ``instant`` preset on lego_100 at a fixed step budget, scored on the val split.

    python bench/nerf_instant_variants.py                         # every variant, 1200 steps, 1 thread
    python bench/nerf_instant_variants.py --variants base,r256 --steps 1200 --threads 1

How the preset's settings are chosen: each variant is fitted for ``--steps`` steps (a step budget, so
the PSNR does not depend on the machine's load) and scored on the first ``--val-views`` views of
the *val* split (never the test split). Variants (``VARIANTS``): ``sil`` the silhouette box, ``r256``
finest hash-grid level 256 instead of 512, ``t16`` 2^16 table rows per level instead of 2^17,
``l8`` 8 levels instead of 16, ``ts13`` / ``ts15`` 2^13 / 2^15 samples a batch instead of 2^14,
``rs128`` 128 marching steps across the box instead of 256, ``lr2`` learning rate 2e-2, ``ema``
evaluation on a running average of the weights (decay 0.99); combinations joined by ``_``.
Compare steps of different cost (``ts``) with the CPU milliseconds a step measured in one run.

Writes ``bench/results/nerf_instant_variants_lego_val.json`` (one entry per variant, appended to
what is there) and prints a line per variant.
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

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "nerf" / "lego_100"
RESULTS = HERE / "results" / "nerf_instant_variants_lego_val.json"


def variants() -> dict:
    from fieldcraft.tasks.nerf import nerf_config

    base = nerf_config("instant")
    pe = base.field.position_encoding

    def grid(**kw):
        return base.field.replace(position_encoding=pe.replace(**kw))

    return {
        "base": base,
        "sil": base.replace(box="silhouette"),
        "r256": base.replace(field=grid(max_resolution=256)),
        "t16": base.replace(field=grid(log2_table_size=16)),
        "l8": base.replace(field=grid(n_levels=8)),
        "ts13": base.replace(target_samples=1 << 13),
        "rs128": base.replace(render_steps=128),
        "r256_lr2": base.replace(lr=2e-2, field=grid(max_resolution=256)),
        "r256_ema": base.replace(ema_decay=0.99, field=grid(max_resolution=256)),
        "r256_ts15": base.replace(target_samples=1 << 15, max_rays=16384, field=grid(max_resolution=256)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--variants", default=None, help="comma-separated names (default: all)")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--val-views", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=RESULTS)
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data}: dataset not found (see ../shared/data/README.md)")
    from fieldcraft.runtime import configure_cpu_defaults

    configure_cpu_defaults()
    import torch

    torch.set_num_threads(args.threads)
    from fieldcraft.tasks.nerf.outputs import evaluate
    from fieldcraft.tasks.nerf.training import fit
    from fieldcraft.train import Budget

    table = variants()
    names = args.variants.split(",") if args.variants else list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        sys.exit(f"unknown variants {unknown} (choose from {', '.join(table)})")
    result = json.loads(args.json.read_text()) if args.json.exists() else {
        "what": "instant preset variants on lego_100, fixed steps, mean PSNR over the first val views", "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            out = Path(tmp) / name
            load, cpu = os.getloadavg()[0], time.process_time()
            s = fit(table[name], args.data, out, Budget(steps=args.steps), overwrite=True, progress=False)
            cpu = time.process_time() - cpu
            m = evaluate(out, split="val", max_images=args.val_views, progress=False)
            run = {"name": name, "steps": args.steps, "val_views": m["views"], "val_psnr": m["psnr"],
                   "train_psnr": s["train_psnr"], "fit_seconds": s["fit_seconds"], "threads": args.threads,
                   "cpu_ms_per_step_incl_setup": 1000 * cpu / args.steps, "load_average_1min_before": load}
            print(json.dumps(run), flush=True)
            result["runs"] = [r for r in result["runs"] if (r["name"], r["steps"]) != (name, args.steps)] + [run]
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.json}")


if __name__ == "__main__":
    main()
