"""Feature fields on lego: how well distilled patch-PCA maps are reproduced on held-out views.

    python bench/nerf_features.py                        # fit the NeRF too (1000 steps), 1 thread
    python bench/nerf_features.py --nerf RUN             # reuse a fitted NeRF run (its features/ is replaced)

Steps (each a ``fieldcraft`` subprocess with ``OMP_NUM_THREADS=--threads``): ``fit nerf DATA --steps
--nerf-steps`` (unless ``--nerf``), ``extract features`` for the train and val splits (patch-pca,
``--dim`` channels), ``fit features RUN --steps --steps``, ``eval features RUN --split val``.
Writes ``bench/results/nerf_features_lego.json`` (the val metrics of ``eval features``, the last
training record, the conditions: threads, CPUs, 1-minute load average before each step) and
prints them.
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
RESULTS = HERE / "results" / "nerf_features_lego.json"


def _run(args: list[str], threads: int) -> tuple[float, float]:
    """Run ``fieldcraft ARGS`` with ``threads`` threads: ``(wall seconds, load average before)``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads)}
    load = os.getloadavg()[0]
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fieldcraft", *args, "--quiet"], check=True, env=env)
    return time.perf_counter() - t, load


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--nerf", type=Path, default=None, help="a fitted NeRF run to reuse")
    p.add_argument("--nerf-steps", type=int, default=1000)
    p.add_argument("--steps", type=int, default=1000, help="distillation steps")
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nerf_features_"))
    run = args.nerf or work / "nerf"
    steps: dict[str, dict[str, float]] = {}

    def step(name: str, cmd: list[str]) -> None:
        seconds, load = _run(cmd, args.threads)
        steps[name] = {"wall_seconds": seconds, "load_average_before": load}

    if args.nerf is None:
        step("fit nerf", ["fit", "nerf", str(args.data), "--out", str(run), "--steps", str(args.nerf_steps)])
    for split in ("train", "val"):
        step(f"extract {split}", ["extract", "features", str(args.data), "--out", str(work / split), "--split", split,
                                  "--dim", str(args.dim)])
    step("fit features", ["fit", "features", str(run), "--features", str(work / "train"), "--steps", str(args.steps),
                          "--overwrite"])
    step("eval features", ["eval", "features", str(run), "--features", str(work / "val"), "--split", "val"])
    metrics = json.loads((run / "features" / "eval" / "val" / "metrics.json").read_text())
    history = [json.loads(line) for line in (run / "features" / "history.jsonl").read_text().splitlines()]
    extracted = json.loads((work / "train" / "features.json").read_text())
    from fieldcraft.io.checkpoint import load_checkpoint

    fitted = load_checkpoint(run)[1]
    record = {"data": str(args.data), "nerf": {"preset": fitted["config"]["preset"], "steps": fitted["step"]},
              "method": "patch-pca", "dim": args.dim, "explained_variance": extracted["explained_variance"],
              "distillation_steps": args.steps, "last_training_record": history[-1] if history else None,
              "val": {k: metrics[k] for k in ("views", "mse", "relative_mse", "cosine", "definitions")},
              "threads": args.threads, "cpus": os.cpu_count(), "steps": steps}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(f"val ({metrics['views']} views): feature MSE {metrics['mse']:.4g}, relative {metrics['relative_mse']:.3f}, "
          f"cosine {metrics['cosine']:.3f}; training relative {history[-1]['relative']:.3f} -> {RESULTS}")


if __name__ == "__main__":
    main()
