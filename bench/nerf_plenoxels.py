"""The ``plenoxels`` NeRF preset against ``instant`` on lego_100 at the same number of steps.

    python bench/nerf_plenoxels.py                    # 1000 steps each, all 200 test views
    python bench/nerf_plenoxels.py --steps 500 --test-views 50

The two presets fit at the same time, as two processes of one thread each (``fieldcraft fit nerf DATA
--preset P --steps N`` with ``OMP_NUM_THREADS=1``), so both see the same machine load; then each is
scored on the test split (``fieldcraft eval nerf DIR``, again both at once). Reported per preset:
steps, fitting seconds, milliseconds per step, test PSNR / SSIM, milliseconds per rendered view, the
checkpoint's size; and the 1-minute load average before and after fitting (the figures are only
comparable between the two presets of one run). Results: ``bench/results/nerf_plenoxels_lego.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

from nerf_tensorf import DATA, HERE, _env, _fieldcraft  # one-thread environment and CLI of the sibling bench

RESULTS = HERE / "results" / "nerf_plenoxels_lego.json"
PRESETS = ("plenoxels", "instant")


def run(data: str, work: Path, steps: int, test_views: int | None) -> dict:
    outs = {p: work / f"{p}_{steps}" for p in PRESETS}
    load_before = os.getloadavg()[0]
    procs = {p: subprocess.Popen(_fieldcraft("fit", "nerf", data, "--preset", p, "--out", str(outs[p]), "--steps",
                                             str(steps), "--overwrite", "--quiet"), env=_env(),
                                 stdout=subprocess.DEVNULL) for p in PRESETS}
    for p, proc in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"fit nerf --preset {p} failed (exit {proc.returncode})")
    load_after = os.getloadavg()[0]
    limit = ["--limit", str(test_views)] if test_views else []
    evals = {p: subprocess.Popen(_fieldcraft("eval", "nerf", str(outs[p]), "--quiet", *limit), env=_env(),
                                 stdout=subprocess.DEVNULL) for p in PRESETS}
    for p, proc in evals.items():
        if proc.wait() != 0:
            raise SystemExit(f"eval nerf ({p}) failed (exit {proc.returncode})")
    runs = {}
    for p in PRESETS:
        metrics = json.loads((outs[p] / "eval" / "test" / "metrics.json").read_text())
        last = json.loads((outs[p] / "history.jsonl").read_text().splitlines()[-1])
        runs[p] = {"command": f"fieldcraft fit nerf {data} --preset {p} --steps {steps} --out DIR && "
                              f"fieldcraft eval nerf DIR" + (f" --limit {test_views}" if test_views else ""),
                   "steps": last["step"], "fit_seconds": round(last["seconds"], 1),
                   "ms_per_step": round(1000 * last["seconds"] / max(last["step"], 1), 1),
                   "test_psnr": round(metrics["psnr"], 3), "test_ssim": round(metrics["ssim"], 4),
                   "test_views": len(metrics["per_view"]),
                   "render_ms_per_view": round(1000 * metrics["render_seconds_per_view"], 1),
                   "checkpoint_mb": round((outs[p] / "checkpoint.safetensors").stat().st_size / 1e6, 1)}
    return {"steps": steps, "threads_per_fit": 1, "fits": "concurrent", "load_average_before": round(load_before, 2),
            "load_average_after_fit": round(load_after, 2), "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--test-views", type=int, default=None, help="score only the first N test views")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fieldcraft_bench_plenoxels"))
    args = ap.parse_args()
    if not Path(args.data).is_dir():
        raise SystemExit(f"{args.data}: dataset not found")
    result = run(args.data, args.work, args.steps, args.test_views)
    for p, r in result["runs"].items():
        print(f"{p:10s} {r['steps']} steps  {r['fit_seconds']:7.1f} s ({r['ms_per_step']} ms/step)  "
              f"test PSNR {r['test_psnr']:.2f} dB  SSIM {r['test_ssim']:.3f}  {r['render_ms_per_view']} ms/view  "
              f"checkpoint {r['checkpoint_mb']} MB")
    print(f"load average {result['load_average_before']} before, {result['load_average_after_fit']} after fitting")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    from fieldcraft.io.records import write_json

    write_json(RESULTS, result)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
