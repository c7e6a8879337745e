"""NeRF presets on lego_100 under time (or step) budgets: test-split PSNR / SSIM, steps, rays/s.

    python bench/nerf_lego.py --presets instant --budgets 120
    python bench/nerf_lego.py --presets tiny --steps 1000
    python bench/nerf_lego.py                       # every preset x 60, 120, 300, 600 s

Each run fits from scratch (``fieldcraft.tasks.nerf.fit``) into ``--work/<preset>_<budget>``, then
renders and scores the test split (all 200 views unless ``--test-views``; PSNR and SSIM of
:mod:`fieldcraft.metrics`). Results are merged into ``bench/results/nerf_lego.json`` (keyed by
preset and budget: the latest run of each replaces the previous one) and printed as a table.
Time budgets depend on the machine's load: the 1-minute load average is recorded with each run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "nerf" / "lego_100"
RESULTS = HERE / "results" / "nerf_lego.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--presets", default="instant,tiny,vanilla", help="comma-separated presets")
    ap.add_argument("--budgets", default="60,120,300,600", help="comma-separated fitting-time budgets (seconds)")
    ap.add_argument("--steps", default=None, help="comma-separated step budgets (instead of --budgets)")
    ap.add_argument("--test-views", type=int, default=None, help="score only the first N test views (default: all)")
    ap.add_argument("--work", default="/tmp/fieldcraft_bench_nerf", help="where run directories go")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from fieldcraft.data.scene import forward_facing
    from fieldcraft.io.records import write_json
    from fieldcraft.metrics import SSIM_DEFINITION
    from fieldcraft.runtime import set_threads
    from fieldcraft.tasks import nerf
    from fieldcraft.train import Budget

    set_threads()
    budgets = [("steps", int(s)) for s in args.steps.split(",")] if args.steps else \
              [("seconds", float(s)) for s in args.budgets.split(",")]
    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.exists() else {"runs": {}}
    for preset in args.presets.split(","):
        for kind, value in budgets:
            key = f"{preset}_{kind}{value:g}"
            out = Path(args.work) / key
            t0 = time.time()
            budget = Budget(steps=int(value)) if kind == "steps" else Budget(seconds=value)
            config = nerf.nerf_config(preset, ndc=forward_facing(args.data), seed=args.seed)
            summary = nerf.fit(config, args.data, out, budget, overwrite=True, progress=sys.stderr.isatty(),
                               device="cpu")
            m = nerf.evaluate(out, "test", max_images=args.test_views, progress=sys.stderr.isatty(), device="cpu")
            load = os.getloadavg()[0]
            if results_path.exists():  # merge with runs other invocations wrote meanwhile
                results = json.loads(results_path.read_text())
            results["runs"][key] = {
                "preset": preset, "budget": {kind: value}, "steps": summary["steps"], "fit_seconds": summary["fit_seconds"],
                "rays_per_second": summary["rays_per_second"], "test_views": m["views"], "test_psnr": m["psnr"],
                "test_ssim": m["ssim"], "ssim_definition": SSIM_DEFINITION,
                "render_seconds_per_view": m["render_seconds_per_view"],
                "load_average_1min_at_end": load, "wall_seconds": time.time() - t0,
                "command": f"python bench/nerf_lego.py --presets {preset} --{'steps' if kind == 'steps' else 'budgets'} {value:g}"
                           + (f" --test-views {args.test_views}" if args.test_views else ""),
            }
            write_json(results_path, results)
            print(f"{key}: {m['psnr']:.2f} dB", flush=True)
    print(f"\n{'run':<24}{'steps':>8}{'fit s':>8}{'rays/s':>9}{'views':>7}{'PSNR':>8}{'SSIM':>8}{'load':>6}")
    for key, r in sorted(results["runs"].items()):
        print(f"{key:<24}{r['steps']:>8}{r['fit_seconds']:>8.0f}{r['rays_per_second']:>9.0f}{r['test_views']:>7}"
              f"{r['test_psnr']:>8.2f}{r['test_ssim']:>8.4f}{r['load_average_1min_at_end']:>6.1f}")
    print(f"\nwrote {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
