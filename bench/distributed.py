"""Throughput of data-parallel fitting: the same step-based fits as 1 and as 2 ranks (torchrun, gloo, CPU).

For each task and rank count it runs ``torchrun --nproc_per_node K -m fieldcraft fit ...`` (K = 1
runs the plain command, no process group) with ``OMP_NUM_THREADS=NUMBA_NUM_THREADS=--threads`` per
rank, and reads the fit's own figures (the JSON line every fit prints): fitting seconds (rank 0's
time inside training steps, so communication is included), steps per second and items per
second of the global batch (rays for nerf; image-steps for fit images, every image of the chunk
being in every step). Per-rank throughput = items per second / K. Each fit also runs with half the
steps: the difference of the two runs' CPU time (all ranks) per extra step is the work a step
costs, free of start-up, and unlike wall time it does not depend on what else the machine runs.

    python bench/distributed.py                         # nerf on ../shared/data/nerf/lego_100, fit images
    python bench/distributed.py --steps 100 --ranks 1 2 --threads 1

Writes bench/results/distributed_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "distributed_throughput.json"
LEGO = ROOT.parent / "shared" / "data" / "nerf" / "lego_100"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_fit(fit_args: list[str], ranks: int, threads: int, out: Path) -> dict:
    """One fit as ``ranks`` ranks; its printed metrics plus the wall time of the whole command."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")
    if ranks == 1:
        cmd = [sys.executable, "-m", "fieldcraft", *fit_args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
               str(_free_port()), "-m", "fieldcraft", *fit_args]
    cmd += ["--out", str(out), "--quiet", "--overwrite", "--device", "cpu"]
    t0, cpu0 = time.perf_counter(), _children_cpu()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("{"))
    return {**json.loads(line), "command_wall_seconds": wall, "command_cpu_seconds": cpu}


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes (all ranks and torchrun's agent)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--image-steps", type=int, default=200)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="threads per rank (OMP / numba)")
    p.add_argument("--images", type=int, default=512, help="digits fitted by fit images")
    args = p.parse_args()
    tasks = {"images": (["fit", "images", "sample:digits", "--limit", str(args.images), "--batch-images",
                         str(args.images), "--steps", str(args.image_steps)], "image_steps")}
    if LEGO.exists():
        tasks["nerf"] = (["fit", "nerf", str(LEGO), "--steps", str(args.steps)], "rays")
    else:
        print(f"skipping nerf: {LEGO} not found")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task, (fit_args, unit) in tasks.items():
            for k in args.ranks:
                # the same fit with half the steps: the CPU time of the extra steps, free of start-up costs
                half = [a if prev != "--steps" else str(int(a) // 2) for prev, a in zip(["", *fit_args], fit_args)]
                h = run_fit(half, k, args.threads, Path(tmp) / f"{task}{k}h")
                m = run_fit(fit_args, k, args.threads, Path(tmp) / f"{task}{k}")
                cpu_per_step = (m["command_cpu_seconds"] - h["command_cpu_seconds"]) / (m["steps"] - h["steps"])
                secs, steps = m["fit_seconds"], m["steps"]
                if task == "nerf":
                    items_per_s = m["rays_per_second"]
                else:  # every image is in every step's batch: image-steps per second
                    items_per_s = m["images"] * steps / secs
                row = {"task": task, "ranks": k, "threads_per_rank": args.threads, "steps": steps,
                       "fit_seconds": secs, "steps_per_second": steps / secs, f"{unit}_per_second": items_per_s,
                       f"{unit}_per_second_per_rank": items_per_s / k, "command_wall_seconds": m["command_wall_seconds"],
                       "cpu_seconds_per_step_all_ranks": cpu_per_step, "cpu_seconds_per_step_per_rank": cpu_per_step / k,
                       "global_batch": m.get("global_batch"), "world_size": m.get("world_size", 1)}
                rows.append(row)
                print(json.dumps(row))
    load = os.getloadavg()
    result = {"what": "fit throughput as 1 and as K ranks on one machine (gloo, CPU); fit_seconds = rank 0's time "
                      "inside training steps (gradient all-reduce included); cpu_seconds_per_step = CPU time of all "
                      "ranks per step (full run minus half run, per extra step)",
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "load_average_1_5_15": load},
              "commands": {t: " ".join(a) for t, (a, _) in tasks.items()}, "rows": rows}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
