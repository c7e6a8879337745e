"""Sparse-view CT benchmark: FBP, SART and the field on Shepp-Logan and the real tooth.

Cases: Shepp-Logan 256 x 256 at 10, 20, 45 views, noiseless and with Poisson noise
(``--photons``, default 1e4 per bin); tooth (``../shared/data/ct/tooth.h5``, slice 0) at 30
and 60 of its 181 angles, scored against the FBP of all 181. Prints a table and writes
``bench/results/ct.json``. Each field fit gets ``--seconds`` of fitting time (default 60; the
machine's load changes how many steps that buys, so the JSON records steps too).

    OMP_WAIT_POLICY=PASSIVE python bench/ct.py [--seconds 60] [--preset hash] [--only phantom|tooth]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from fieldcraft.runtime import configure_cpu_defaults, set_threads
from fieldcraft.tasks import ct

ROOT = Path(__file__).resolve().parents[1]
TOOTH = ROOT.parent / "shared" / "data" / "ct" / "tooth.h5"


def cases(photons: float, only: str | None) -> list[dict]:
    out = []
    if only in (None, "phantom"):
        for views in (10, 20, 45):
            for noise in (None, photons):
                out.append({"name": f"shepp-logan {views} views" + (f", {photons:g} photons" if noise else ""),
                            "source": "sample:shepp-logan", "views": views, "photons": noise})
    if only in (None, "tooth"):
        for views in (30, 60):
            out.append({"name": f"tooth {views}/181 angles", "source": str(TOOTH), "views": views, "photons": None})
    return out


def main() -> int:
    configure_cpu_defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="fitting-time budget per field (default 60)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--preset", default="hash")
    parser.add_argument("--photons", type=float, default=1e4)
    parser.add_argument("--only", choices=("phantom", "tooth"), default=None)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ct.json"))
    parser.add_argument("--keep", default=None, help="also write each case's outputs under this directory")
    args = parser.parse_args()
    set_threads()
    if args.only != "phantom" and not TOOTH.is_file():
        print(f"missing {TOOTH} (see ../shared/data/README.md)", file=sys.stderr)
        return 2

    rows = []
    header = f"{'case':34s} {'FBP dB':>7s} {'SART dB':>8s} {'field dB':>9s} {'FBP SSIM':>9s} {'SART SSIM':>9s} {'field SSIM':>10s} {'steps':>6s} {'fit s':>6s}"
    print(header)
    for case in cases(args.photons, args.only):
        cfg = ct.CTTaskConfig(source=case["source"], size=args.size, views=case["views"], photons=case["photons"],
                              preset=args.preset, field=ct.ct_field_config(args.preset, args.size),
                              lr=ct.PRESET_LR[args.preset])
        t0 = time.perf_counter()
        out_dir = Path(args.keep) / case["name"].replace(" ", "_").replace(",", "").replace("/", "of") if args.keep \
            else Path("/tmp") / "fieldcraft_bench_ct"
        result = ct.fit(cfg, out_dir, seconds=args.seconds, progress=False, write_outputs=bool(args.keep))
        m = result.metrics
        row = {"case": case["name"], "source": case["source"], "views": case["views"], "photons": case["photons"],
               "reference": m["reference"], "data_range": m["data_range"],
               "fbp": m["fbp"], "sart": m["sart"], "field": m["field"], "setup_seconds": m["setup_seconds"],
               "wall_seconds": time.perf_counter() - t0}
        rows.append(row)
        print(f"{case['name']:34s} {m['fbp']['psnr']:7.2f} {m['sart']['psnr']:8.2f} {m['field']['psnr']:9.2f} "
              f"{m['fbp']['ssim']:9.3f} {m['sart']['ssim']:9.3f} {m['field']['ssim']:10.3f} "
              f"{m['field']['steps']:6d} {m['field']['seconds']:6.1f}", flush=True)

    result = {
        "benchmark": "ct", "seconds_budget": args.seconds, "size": args.size, "preset": args.preset,
        "photons_noisy": args.photons, "torch_threads": torch.get_num_threads(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_at_end": os.getloadavg()},
        "metric": "PSNR = 10 log10(data_range^2 / MSE) over the full image (unclipped); SSIM = skimage "
                  "structural_similarity with the same data_range; phantom: data_range 1; tooth: against the "
                  "FBP of all 181 angles, data_range = its max - min",
        "cases": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
