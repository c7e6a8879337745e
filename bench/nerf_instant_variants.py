"""Variants of the ``instant`` preset on an object scene (lego), scored on the val split.

    python bench/nerf_instant_variants.py --variants preset,previous,lr1,r512 --seconds 120 --threads 2 --val-views 100
    python bench/nerf_instant_variants.py --data ../shared/data/nerf/lego_200 --variants preset,previous,r512,r128 \
        --steps 1500 --val-views 50

How the preset's settings are chosen: each variant is fitted for ``--steps`` steps (a step budget, so
the PSNR does not depend on the machine's load; ``--threads 1`` by default) or for ``--seconds``
seconds (a time budget, as ``fit nerf --seconds``: run it on an otherwise idle machine, one
variant after the other, with ``--threads 2``), and scored on the first ``--val-views`` views of
the *val* split (never the test split). Variants (``VARIANTS``), each a change to the preset:
``preset`` the preset itself; ``previous`` ``finest_from_views`` off
(finest level 512, lr 1e-2); ``lr1`` lr 1e-2; ``r512`` / ``r256`` / ``r128`` a fixed finest level
(``finest_from_views`` off); ``sil`` the silhouette box; ``t16`` 2^16 table rows per level; ``l8``
8 levels; ``ts13`` 2^13 samples a batch; ``rs128`` 128 marching steps across the box; ``ema``
evaluation on a running average of the weights (decay 0.99).

Writes ``bench/results/nerf_instant_variants_<dataset>_val.json`` (one entry per variant, dataset
and budget; earlier entries of other variants are kept) and prints a line per variant.
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
RESULTS = HERE / "results" / "nerf_instant_variants_{}_val.json"


def variants() -> dict:
    from fieldcraft.tasks.nerf import nerf_config

    base = nerf_config("instant")
    pe = base.field.position_encoding

    def grid(**kw):
        return base.field.replace(position_encoding=pe.replace(**kw))

    def fixed(finest: int):
        return base.replace(finest_from_views=False, field=grid(max_resolution=finest))

    return {
        "preset": base,
        "previous": fixed(512).replace(lr=1e-2),
        "lr1": base.replace(lr=1e-2),
        "r512": fixed(512),
        "r256": fixed(256),
        "r128": fixed(128),
        "sil": base.replace(box="silhouette"),
        "t16": base.replace(field=grid(log2_table_size=16)),
        "l8": base.replace(field=grid(n_levels=8)),
        "ts13": base.replace(target_samples=1 << 13),
        "rs128": base.replace(render_steps=128),
        "ema": base.replace(ema_decay=0.99),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--variants", default=None, help="comma-separated names (default: all)")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--seconds", type=float, default=None, help="a time budget instead of --steps")
    ap.add_argument("--val-views", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="default bench/results/nerf_instant_variants_<data>_val.json")
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
    data = args.data.name
    args.json = args.json or Path(str(RESULTS).format(data))
    budget = Budget(seconds=args.seconds) if args.seconds else Budget(steps=args.steps)
    budget_name = f"{args.seconds:g} s" if args.seconds else f"{args.steps} steps"
    result = json.loads(args.json.read_text()) if args.json.exists() else {
        "what": f"instant preset variants on {data}: mean PSNR over the first val views after a step or time budget",
        "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            out = Path(tmp) / name
            load, cpu = os.getloadavg()[0], time.process_time()
            s = fit(table[name], args.data, out, budget, overwrite=True, progress=False)
            cpu = time.process_time() - cpu
            m = evaluate(out, split="val", max_images=args.val_views, progress=False)
            finest = json.loads((out / "config.json").read_text())["config"]["field"]["position_encoding"].get(
                "max_resolution") \
                if (out / "config.json").exists() else None
            run = {"name": name, "data": data, "budget": budget_name, "steps": s["steps"], "val_views": m["views"],
                   "val_psnr": m["psnr"], "val_ssim": m["ssim"], "train_psnr": s["train_psnr"],
                   "fit_seconds": s["fit_seconds"], "threads": args.threads, "finest_level": finest,
                   "lr": table[name].lr, "cpu_ms_per_step_incl_setup": 1000 * cpu / s["steps"],
                   "load_average_1min_before": load}
            print(json.dumps(run), flush=True)
            result["runs"] = [r for r in result["runs"]
                              if (r["name"], r.get("budget"), r.get("val_views")) != (name, budget_name, m["views"])]
            result["runs"].append(run)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.json}")


if __name__ == "__main__":
    main()
