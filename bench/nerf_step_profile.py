"""Where an ``instant`` NeRF step and a test-view render spend their time (lego_100).

    python bench/nerf_step_profile.py                       # 300 steps, 2 threads, 20 test views
    python bench/nerf_step_profile.py --compare REV         # also the code of git revision REV, same run

Each measurement runs in a subprocess with ``--threads`` OpenMP / numba threads:

1. ``fit nerf`` (preset ``instant``, lego_100) for ``--warmup`` steps (compiles or loads the numba
   kernels; not timed), then a fresh fit of ``--steps`` steps under ``cProfile``. The table gives
   milliseconds a step: the whole step (``Trainer._train_step``) and its parts, each the
   cumulative time of the functions named in ``PARTS`` divided by the steps (parts nest: the
   render contains the march and the fields; "grid encoding fwd/bwd kernel" is the numba
   kernels' own time wherever they were called from). cProfile adds a little to every Python
   call, so the Python-heavy parts read high; the step time is also given without the profiler
   (a separate fit of the same steps).
2. Rendering: the first ``--views`` test views of the fitted run, milliseconds a view (rays,
   sampling, fields, compositing), without the profiler.

``--compare REV`` checks out REV into a temporary git worktree and measures it the same way,
alternating with the working tree, so both run under the same conditions; the JSON then holds
``before`` (REV) and ``after`` (this tree) and the ratios. Writes
``bench/results/nerf_step_profile_lego.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data" / "nerf" / "lego_100"
RESULTS = HERE / "results" / "nerf_step_profile_lego.json"

# name -> (module suffix, function name): cumulative time of every function matching both
PARTS = {
    "step": ("train/loop.py", "_train_step"),
    "loss (render + backward of the batch)": ("tasks/nerf/training.py", "loss"),
    "render the batch": ("tasks/nerf/model.py", "_render_packed"),
    "march (occupancy grid)": ("render/occupancy_grid.py", "march"),
    "fields (encoding + MLPs), all calls": ("fields/radiance.py", "_trunk"),
    "grid encoding fwd kernel": ("kernels/grid.py", "_forward_kernel"),
    "grid encoding bwd kernel": ("kernels/grid.py", "backward_kernel"),
    "MLPs forward": ("networks/mlp.py", "forward"),
    "compositing": ("render/compositing.py", "weights_from_densities"),
    "occupancy grid update": ("render/occupancy_grid.py", "update"),
    "backward": ("torch/_tensor.py", "backward"),
    "optimizer step": ("train/row_sparse_adam.py", "step"),
}

WORKER = r"""
import cProfile, json, pstats, sys, time
from fieldcraft.runtime import configure_cpu_defaults
configure_cpu_defaults()
import torch
from fieldcraft.tasks.nerf import background_colour, fitted_views, load_model
from fieldcraft.tasks.nerf.training import fit
from fieldcraft.train import Budget
data, work, steps, warmup, views = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
parts = json.loads(sys.argv[6])
fit(None, data, work + "/warm", Budget(steps=warmup), overwrite=True, progress=False)
t = time.perf_counter()
plain = fit(None, data, work + "/plain", Budget(steps=steps), overwrite=True, progress=False)
plain_s = time.perf_counter() - t
prof = cProfile.Profile()
prof.enable()
fit(None, data, work + "/prof", Budget(steps=steps), overwrite=True, progress=False)
prof.disable()
stats = pstats.Stats(prof).stats
out = {}
for name, (suffix, fn) in parts.items():
    tot = 0.0
    for (file, _, func), (_, _, tt, ct, _) in stats.items():
        if func == fn and file.replace("\\", "/").endswith(suffix):
            tot += tt if name.endswith("kernel") else ct
    out[name] = 1000 * tot / steps
model, meta = load_model(work + "/plain", device="cpu")
test = fitted_views(meta, None, "test", views + 1)
bg = background_colour(model.config.background)[None]
def view(k):
    rays = model.view_rays(test.cameras, k, test.near, test.far)
    return model.render_image(rays, bg, test.height, test.width)["rgb"].float().cpu().numpy()
view(0)
ms = []
for k in range(1, views + 1):
    t = time.perf_counter(); view(k); ms.append(1000 * (time.perf_counter() - t))
print(json.dumps({"ms_per_step_profiled": out, "ms_per_step_plain": 1000 * plain["fit_seconds"] / steps,
                  "train_psnr": plain["train_psnr"], "ms_per_view": sum(ms) / len(ms), "threads": torch.get_num_threads()}))
"""


def measure(src: Path, args: argparse.Namespace, work: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), NUMBA_NUM_THREADS=str(args.threads),
               PYTHONPATH=str(src / "src"))
    load = os.getloadavg()[0]
    res = subprocess.run([sys.executable, "-c", WORKER, str(args.data), str(work), str(args.steps), str(args.warmup),
                          str(args.views), json.dumps(PARTS)], env=env, check=True, capture_output=True, text=True,
                         cwd=src)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["load_average_1min_before"] = load
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--views", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compare", metavar="REV", help="also measure git revision REV (before/after)")
    ap.add_argument("--json", type=Path, default=RESULTS)
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data}: dataset not found (see ../shared/data/README.md)")
    result: dict = {"what": f"instant preset on {args.data.name}: milliseconds a training step by part "
                            f"({args.steps} steps under cProfile) and a test view's render time",
                    "steps": args.steps, "threads": args.threads, "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.compare:
            rev = subprocess.run(["git", "rev-parse", args.compare], cwd=REPO, check=True, capture_output=True,
                                 text=True).stdout.strip()
            before_src = tmp / "before"
            subprocess.run(["git", "worktree", "add", "--detach", str(before_src), rev], cwd=REPO, check=True,
                           capture_output=True)
            try:
                result["before_revision"] = rev
                result["before"] = measure(before_src, args, tmp / "b")
                result["after"] = measure(REPO, args, tmp / "a")
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(before_src)], cwd=REPO, check=False)
        else:
            result["after"] = measure(REPO, args, tmp / "a")
    result["load_average_1min_at_end"] = os.getloadavg()[0]
    rows = list(PARTS) + ["(step without profiler)", "(ms a test view)"]

    def value(r: dict, name: str) -> float:
        if name == "(step without profiler)":
            return r["ms_per_step_plain"]
        if name == "(ms a test view)":
            return r["ms_per_view"]
        return r["ms_per_step_profiled"][name]

    print(f"{'part (ms a step)':42s}" + ("  before   after  ratio" if args.compare else "   after"))
    for name in rows:
        a = value(result["after"], name)
        if args.compare:
            b = value(result["before"], name)
            print(f"{name:42s} {b:7.1f} {a:7.1f} {a / b if b else float('nan'):6.2f}")
        else:
            print(f"{name:42s} {a:7.1f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.json}")


if __name__ == "__main__":
    main()
