"""Light field network vs NeRF (``instant``) on lego: test PSNR and milliseconds per view, same fitting budget.

    python bench/lightfield.py                          # 120 s each, 1 thread, all 200 test views of lego_100
    python bench/lightfield.py --seconds 60 --threads 2
    python bench/lightfield.py --presets relu,pe,fourier,siren --seconds 60   # the light field's encodings

Steps (each command a subprocess with ``OMP_NUM_THREADS=--threads``):

1. ``fieldcraft fit lightfield DATA --seconds S`` and ``fieldcraft eval lightfield RUN`` (test split):
   PSNR / SSIM and ``ms_per_view`` (rendering alone: rays, network, copy to the CPU);
2. ``fieldcraft fit nerf DATA --preset instant --seconds S`` and ``fieldcraft eval nerf RUN``;
3. NeRF's milliseconds per view measured the same way as the light field's: the first
   ``--timed-views`` test views rendered (rays, sampling, fields, compositing, copy to the CPU)
   in a subprocess with the same threads, without scoring or writing PNGs;
4. ``--presets``: instead of 1-3, fit the light field with each preset for the same budget and
   score it on the first ``--val-views`` views of the *val* split (the choice of the default
   encoding is made on validation views, not on the test views).

Writes ``bench/results/lightfield_vs_nerf_lego.json`` (``--presets``:
``bench/results/lightfield_presets_lego.json``) with the conditions (threads, CPUs, 1-minute load
average before each fit) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "nerf" / "lego_100"
RESULTS = HERE / "results" / "lightfield_vs_nerf_lego.json"
PRESET_RESULTS = HERE / "results" / "lightfield_presets_lego.json"

NERF_TIMING = """
import json, sys, time, torch
from fieldcraft.tasks.nerf import fitted_views, load_model, background_colour
model, meta = load_model(sys.argv[1], device="cpu")
data = fitted_views(meta, None, "test", int(sys.argv[2]))
bg = background_colour(model.config.background)[None]
def view(k):
    rays = model.view_rays(data.cameras, k, data.near, data.far)
    return model.render_image(rays, bg, data.height, data.width)["rgb"].float().cpu().numpy()
view(0)
ms = []
for k in range(len(data)):
    t = time.perf_counter(); view(k); ms.append(1000 * (time.perf_counter() - t))
print(json.dumps({"ms": ms, "threads": torch.get_num_threads()}))
"""


def _run(cmd: list[str], threads: int, capture: bool = False) -> tuple[float, float, str]:
    """Run a command with ``threads`` OpenMP threads: ``(wall seconds, load average before, stdout)``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads)}
    load = os.getloadavg()[0]
    t = time.perf_counter()
    done = subprocess.run(cmd, check=True, env=env, stdout=subprocess.PIPE if capture else None, text=True)
    return time.perf_counter() - t, load, done.stdout or ""


def _summary(metrics: dict, header: dict) -> dict:
    return {"preset": header["config"]["preset"], "steps": header["step"], "fit_seconds": header["seconds"],
            "views": metrics["views"], "psnr": metrics["psnr"], "ssim": metrics["ssim"],
            "eval_seconds_per_view": metrics["render_seconds_per_view"]}


def compare(args: argparse.Namespace, fc: list[str], root: Path) -> dict:
    """Steps 1-3 of the module docstring."""
    budget = ["--seconds", str(args.seconds), "--quiet", "--device", "cpu"]
    out: dict = {"data": str(args.data), "split": "test", "budget_seconds": args.seconds, "threads": args.threads,
                 "cpus": len(os.sched_getaffinity(0))}
    lf_run, nerf_run = root / "lightfield", root / "nerf"
    _, load, _ = _run([*fc, "fit", "lightfield", str(args.data), "--out", str(lf_run), "--overwrite", *budget,
                       "--preset", args.preset], args.threads)
    _run([*fc, "eval", "lightfield", str(lf_run), "--quiet", "--device", "cpu"], args.threads)
    metrics = json.loads((lf_run / "eval" / "test" / "metrics.json").read_text())
    out["lightfield"] = {**_summary(metrics, json.loads((lf_run / "config.json").read_text())),
                         "ms_per_view": metrics["ms_per_view"], "load_before_fit": load}
    _, load, _ = _run([*fc, "fit", "nerf", str(args.data), "--out", str(nerf_run), "--overwrite", *budget,
                       "--preset", "instant"], args.threads)
    _run([*fc, "eval", "nerf", str(nerf_run), "--quiet", "--device", "cpu"], args.threads)
    metrics = json.loads((nerf_run / "eval" / "test" / "metrics.json").read_text())
    _, _, timing = _run([sys.executable, "-c", NERF_TIMING, str(nerf_run), str(args.timed_views)], args.threads,
                        capture=True)
    ms = json.loads(timing.strip().splitlines()[-1])["ms"]
    out["nerf"] = {**_summary(metrics, json.loads((nerf_run / "config.json").read_text())),
                   "ms_per_view": sum(ms) / len(ms), "ms_views_timed": len(ms), "load_before_fit": load}
    out["speed_up"] = out["nerf"]["ms_per_view"] / out["lightfield"]["ms_per_view"]
    out["psnr_gap"] = out["nerf"]["psnr"] - out["lightfield"]["psnr"]
    return out


def presets(args: argparse.Namespace, fc: list[str], root: Path) -> dict:
    """Step 4 of the module docstring."""
    out: dict = {"data": str(args.data), "split": "val", "views": args.val_views, "budget_seconds": args.seconds,
                 "threads": args.threads, "cpus": len(os.sched_getaffinity(0)), "presets": {}}
    for preset in args.presets.split(","):
        run = root / f"lightfield-{preset}"
        _, load, _ = _run([*fc, "fit", "lightfield", str(args.data), "--out", str(run), "--overwrite", "--seconds",
                           str(args.seconds), "--quiet", "--device", "cpu", "--preset", preset], args.threads)
        _run([*fc, "eval", "lightfield", str(run), "--split", "val", "--limit", str(args.val_views), "--quiet",
              "--device", "cpu"], args.threads)
        metrics = json.loads((run / "eval" / "val" / "metrics.json").read_text())
        header = json.loads((run / "config.json").read_text())
        train_psnr = [json.loads(line)["psnr"] for line in (run / "history.jsonl").read_text().splitlines()][-1]
        out["presets"][preset] = {**_summary(metrics, header), "ms_per_view": metrics["ms_per_view"],
                                  "train_batch_psnr": train_psnr, "load_before_fit": load}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA, help="dataset (default: ../shared/data/nerf/lego_100)")
    ap.add_argument("--seconds", type=float, default=120.0, help="fitting budget of each fit (default 120)")
    ap.add_argument("--threads", type=int, default=1, help="OpenMP threads of every command (default 1)")
    ap.add_argument("--preset", default="relu", help="the light field's preset (default relu)")
    ap.add_argument("--timed-views", type=int, default=10, help="test views NeRF's render-only timing uses")
    ap.add_argument("--presets", default=None, help="comma-separated light-field presets to compare on val views")
    ap.add_argument("--val-views", type=int, default=25, help="--presets: val views scored (default 25)")
    ap.add_argument("--work", type=Path, default=None, help="run directories (default: a temporary folder)")
    ap.add_argument("--results", type=Path, default=None)
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"bench/lightfield.py: {args.data}: dataset not found (../shared/data beside the checkout)",
              file=sys.stderr)
        return 2
    fc = [sys.executable, "-m", "fieldcraft"]
    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        out = presets(args, fc, root) if args.presets else compare(args, fc, root)
    out["load_average_after"] = os.getloadavg()[0]
    from fieldcraft.io.records import write_json

    dest = args.results or (PRESET_RESULTS if args.presets else RESULTS)
    write_json(dest, out)
    rows = out["presets"] if args.presets else {"lightfield": out["lightfield"], "nerf instant": out["nerf"]}
    split = out["split"]
    print(f"{args.data.name}, {split} split, {args.seconds:g} s fits, {args.threads} thread(s)")
    print(f"{'method':<20}{'steps':>8}{'PSNR':>9}{'SSIM':>8}{'ms/view':>10}")
    for name, r in rows.items():
        label = name if not args.presets else f"lightfield {name}"
        print(f"{label:<20}{r['steps']:>8}{r['psnr']:>9.2f}{r['ssim']:>8.3f}{r['ms_per_view']:>10.1f}")
    print(f"-> {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
