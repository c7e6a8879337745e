"""NeRF on real captures: held-out (every 8th frame) PSNR / SSIM, steps and peak memory.

    python bench/nerf_real.py --data ../shared/data/nerf/fruit --presets nerfacto,instant --seconds 300
    python bench/nerf_real.py --data ../shared/data/nerf/fern_llff --presets instant --seconds 600
    python bench/nerf_real.py --data ../shared/data/nerf/fruit --presets nerfacto --steps 500 --downscale 2 --test-views 3

Each run fits from scratch (``fieldcraft.tasks.nerf.fit``, ``--downscale`` on load) in a child
process (so its peak resident memory, ``ru_maxrss``, is the fit's and the evaluation's alone),
then scores the held-out frames (``eval nerf``: all of them unless ``--test-views``). Results
are merged into ``bench/results/nerf_real.json`` keyed by dataset, preset, budget and downscale,
with the 1-minute load average and thread count of each run (time budgets depend on the load).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "nerf_real.json"


def one_run(data: str, preset: str, kind: str, value: float, downscale: int, test_views: int | None, out: str,
            seed: int) -> dict:
    """Fit and evaluate in this process (the child); returns the figures."""
    import resource

    from fieldcraft.data.scene import forward_facing
    from fieldcraft.runtime import set_threads
    from fieldcraft.tasks import nerf
    from fieldcraft.train import Budget

    set_threads()
    import torch

    config = nerf.nerf_config(preset, ndc=forward_facing(data), seed=seed)
    budget = Budget(steps=int(value)) if kind == "steps" else Budget(seconds=value)
    t0 = time.time()
    fit = nerf.fit(config, data, out, budget, progress=False, overwrite=True, downscale=downscale)
    fit_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    m = nerf.evaluate(out, "test", max_images=test_views, progress=False)
    return {"data": data, "preset": preset, kind: value, "downscale": downscale, "steps": fit["steps"],
            "fit_seconds": fit["fit_seconds"], "psnr": m["psnr"], "ssim": m["ssim"], "views": m["views"],
            "render_seconds_per_view": m["render_seconds_per_view"], "peak_rss_gib_fit": fit_rss,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "threads": torch.get_num_threads(), "load_average_1min": os.getloadavg()[0],
            "wall_seconds": time.time() - t0, "per_view": [round(v["psnr"], 3) for v in m["per_view"]]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="dataset directory (nerfstudio, COLMAP, LLFF)")
    ap.add_argument("--presets", default="nerfacto", help="comma-separated presets")
    ap.add_argument("--seconds", default=None, help="comma-separated fitting-time budgets")
    ap.add_argument("--steps", default=None, help="comma-separated step budgets (instead of --seconds)")
    ap.add_argument("--downscale", type=int, default=1)
    ap.add_argument("--test-views", type=int, default=None, help="score only the first N held-out views")
    ap.add_argument("--work", default="/tmp/fieldcraft_bench_nerf_real", help="where run directories go")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:  # one run, figures as JSON on stdout's last line
        kind, value = args.child.split(":")
        print(json.dumps(one_run(args.data, args.presets, kind, float(value), args.downscale, args.test_views,
                                 args.work, args.seed)))
        return 0
    if (args.seconds is None) == (args.steps is None):
        ap.error("give --seconds or --steps")
    from fieldcraft.io.records import write_json

    budgets = [("steps", int(s)) for s in args.steps.split(",")] if args.steps else \
              [("seconds", float(s)) for s in args.seconds.split(",")]
    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.exists() else {"runs": {}}
    name = Path(args.data).resolve().name
    for preset in args.presets.split(","):
        for kind, value in budgets:
            key = f"{name}_{preset}_{kind}{value:g}_x{args.downscale}"
            out = Path(args.work) / key
            cmd = [sys.executable, __file__, "--data", args.data, "--presets", preset, "--downscale",
                   str(args.downscale), "--work", str(out), "--seed", str(args.seed), "--child", f"{kind}:{value}"]
            if args.test_views:
                cmd += ["--test-views", str(args.test_views)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)
                return done.returncode
            row = json.loads(done.stdout.strip().splitlines()[-1])
            results["runs"][key] = row
            write_json(results_path, results)
            print(f"{key}: {row['steps']} steps, held-out PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.4f} "
                  f"({row['views']} views), peak {row['peak_rss_gib']:.2f} GiB, load {row['load_average_1min']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
