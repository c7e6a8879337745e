"""Sparse-view CT benchmark: FBP, SART and the field on Shepp-Logan and the real tooth.

Cases: Shepp-Logan 256 x 256 at 10, 20, 45 views, noiseless and with Poisson noise
(``--photons``, default 1e4 per bin); tooth (``../shared/data/ct/tooth.h5``, slice 0) at 30
and 60 of its 181 angles, scored against the FBP of all 181. Prints a table and writes
``bench/results/ct.json``. Each field fit gets ``--seconds`` of fitting time (default 60; the
machine's load changes how many steps that buys, so the JSON records steps too). The tooth's
centre of rotation is estimated from its projections (``fieldcraft.data.ct.rotation_centre``).

    OMP_WAIT_POLICY=PASSIVE python bench/ct.py [--seconds 60] [--preset hash] [--only phantom|tooth]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from fieldcraft.io.records import write_json
from fieldcraft.metrics import PSNR_DEFINITION, SSIM_DEFINITION
from fieldcraft.runtime import configure_cpu_defaults, set_threads
from fieldcraft.tasks import ct
from fieldcraft.train import Budget

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
                              preset=args.preset, field=ct.ct_field_config(args.preset, args.size))
        t0 = time.perf_counter()
        name = case["name"].replace(" ", "_").replace(",", "").replace("/", "of")
        out_dir = Path(args.keep) / name if args.keep else Path(tempfile.gettempdir()) / "fieldcraft_bench_ct" / name
        m = ct.fit_ct(cfg, out_dir, Budget(seconds=args.seconds), progress=False, overwrite=True)
        keys = ("reference", "data_range", "centre_of_rotation", "centre_source", "psnr", "ssim", "steps",
                "fit_seconds", "fbp_psnr", "fbp_ssim", "fbp_seconds", "sart_psnr", "sart_ssim", "sart_seconds",
                "sart_iterations", "setup_seconds", "device")
        row = {"case": case["name"], "source": case["source"], "views": case["views"], "photons": case["photons"],
               **{k: m[k] for k in keys}, "wall_seconds": time.perf_counter() - t0}
        rows.append(row)
        print(f"{case['name']:34s} {m['fbp_psnr']:7.2f} {m['sart_psnr']:8.2f} {m['psnr']:9.2f} "
              f"{m['fbp_ssim']:9.3f} {m['sart_ssim']:9.3f} {m['ssim']:10.3f} "
              f"{m['steps']:6d} {m['fit_seconds']:6.1f}", flush=True)

    result = {
        "benchmark": "ct", "command": "OMP_WAIT_POLICY=PASSIVE python bench/ct.py " + " ".join(sys.argv[1:]),
        "seconds_budget": args.seconds, "size": args.size, "preset": args.preset,
        "photons_noisy": args.photons, "torch_threads": torch.get_num_threads(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_at_end": os.getloadavg()},
        "metric": f"psnr: {PSNR_DEFINITION}, over the full image (unclipped); ssim: {SSIM_DEFINITION}; "
                  "phantom: data range 1; tooth: against the FBP of all 181 angles, data range = its max - min",
        "cases": rows,
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
