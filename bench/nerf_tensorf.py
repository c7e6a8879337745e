"""The ``tensorf`` NeRF preset against ``instant`` on lego_100: same budget, same load, same script.

    python bench/nerf_tensorf.py                      # 120 s each, 200 test views
    python bench/nerf_tensorf.py --seconds 60 --steps 500 --test-views 50

For each budget (``--seconds`` of fitting time, and ``--steps`` when given) the two presets fit at the
same time, as two processes of one thread each (``fieldcraft fit nerf DATA --preset P ...`` with
``OMP_NUM_THREADS=1``), so both see the same machine load; then each is scored on the test split
(``fieldcraft eval nerf DIR``, all 200 views unless ``--test-views``). Reported per run: steps, fitting
seconds, milliseconds per step, test PSNR / SSIM; per budget the ratios tensorf / instant of PSNR
gain, steps and time per step; and, from both runs' ``history.jsonl``, the fitting seconds each took
to reach the same steps (step-for-step cost). The 1-minute load average before and after is
recorded. Results: ``bench/results/nerf_tensorf_lego.json`` (a budget run again replaces its previous entry).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "nerf" / "lego_100"
RESULTS = HERE / "results" / "nerf_tensorf_lego.json"
PRESETS = ("instant", "tensorf")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", MKL_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    return env


def _fieldcraft(*args: str) -> list[str]:
    return [sys.executable, "-m", "fieldcraft", *args]


def _history(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _seconds_at(history: list[dict], step: int) -> float | None:
    """Fitting seconds when the run first logged ``step`` or later."""
    for rec in history:
        if rec["step"] >= step:
            return rec["seconds"]
    return None


def run_pair(data: str, work: Path, budget: list[str], tag: str, test_views: int | None) -> dict:
    """Fit both presets at once under ``budget`` (CLI flags), then score each on the test split."""
    outs = {p: work / f"{p}_{tag}" for p in PRESETS}
    load_before = os.getloadavg()[0]
    procs = {p: subprocess.Popen(_fieldcraft("fit", "nerf", data, "--preset", p, "--out", str(outs[p]), *budget,
                                             "--overwrite", "--quiet"), env=_env(), stdout=subprocess.DEVNULL)
             for p in PRESETS}
    for p, proc in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"fit nerf --preset {p} failed (exit {proc.returncode})")
    load_after_fit = os.getloadavg()[0]
    runs = {}
    for p in PRESETS:  # scored one after the other: rendering time is not part of the comparison
        limit = ["--limit", str(test_views)] if test_views else []
        subprocess.run(_fieldcraft("eval", "nerf", str(outs[p]), "--quiet", *limit), env=_env(), check=True,
                       stdout=subprocess.DEVNULL)
        metrics = json.loads((outs[p] / "eval" / "test" / "metrics.json").read_text())
        hist = _history(outs[p] / "history.jsonl")
        last = hist[-1]
        runs[p] = {"steps": last["step"], "fit_seconds": round(last["seconds"], 2),
                   "ms_per_step": round(1000 * last["seconds"] / max(last["step"], 1), 1),
                   "test_psnr": round(metrics["psnr"], 3), "test_ssim": round(metrics["ssim"], 4),
                   "test_views": len(metrics["per_view"]), "train_psnr_last": last.get("psnr"),
                   "history": hist}
    i, t = runs["instant"], runs["tensorf"]
    common = min(i["steps"], t["steps"])
    checkpoints = [s for s in (100, 250, 500, 1000, 1500, 2000, 3000) if s <= common]
    step_for_step = [{"step": s, "instant_seconds": _seconds_at(i["history"], s),
                      "tensorf_seconds": _seconds_at(t["history"], s)} for s in checkpoints]
    for row in step_for_step:
        a, b = row["instant_seconds"], row["tensorf_seconds"]
        row["tensorf_over_instant"] = round(b / a, 3) if a and b else None
    for r in runs.values():
        r.pop("history")
    return {"budget": " ".join(budget), "runs": runs, "psnr_difference_db": round(t["test_psnr"] - i["test_psnr"], 3),
            "steps_ratio": round(t["steps"] / i["steps"], 3),
            "time_per_step_ratio": round(t["ms_per_step"] / i["ms_per_step"], 3),
            "step_for_step_seconds": step_for_step,
            "load_average_1min": {"before": round(load_before, 2), "after_fits": round(load_after_fit, 2),
                                  "after_evals": round(os.getloadavg()[0], 2)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--seconds", type=float, default=120.0, help="fitting-time budget of each preset (0: skip)")
    ap.add_argument("--steps", type=int, default=0, help="also compare at this step budget (0: skip)")
    ap.add_argument("--test-views", type=int, default=None, help="score only the first N test views (default: all)")
    ap.add_argument("--work", default="/tmp/fieldcraft_bench_tensorf", help="where run directories go")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args(argv)
    if not Path(args.data).is_dir():
        raise SystemExit(f"{args.data}: no such dataset (lego_100 from the shared data)")

    from fieldcraft.io.records import write_json

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    comparisons = []
    if args.seconds > 0:
        comparisons.append(run_pair(args.data, work, ["--seconds", f"{args.seconds:g}"], f"s{args.seconds:g}",
                                    args.test_views))
    if args.steps > 0:
        comparisons.append(run_pair(args.data, work, ["--steps", str(args.steps)], f"n{args.steps}", args.test_views))
    results_path = Path(args.results)
    previous = json.loads(results_path.read_text()).get("comparisons", []) if results_path.exists() else []
    new_budgets = {c["budget"] for c in comparisons}  # a budget run again replaces its previous figures
    result = {"data": str(Path(args.data).resolve()), "machine": {"cpus": os.cpu_count()},
              "conditions": "both presets fitted at the same time, one thread each (OMP_NUM_THREADS=1)",
              "comparisons": [c for c in previous if c["budget"] not in new_budgets] + comparisons,
              "wall_seconds_last_invocation": round(time.time() - t0, 1)}
    results_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(args.results), result)
    for c in comparisons:
        print(f"budget {c['budget']}  (load {c['load_average_1min']})")
        for p, r in c["runs"].items():
            print(f"  {p:8s} steps {r['steps']:5d}  {r['ms_per_step']:7.1f} ms/step  test PSNR {r['test_psnr']:.2f} dB  "
                  f"SSIM {r['test_ssim']:.4f}  ({r['test_views']} views)")
        print(f"  tensorf - instant: {c['psnr_difference_db']:+.2f} dB; steps ratio {c['steps_ratio']}, "
              f"time/step ratio {c['time_per_step_ratio']}")
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
