"""Every task for a few steps on a device (CUDA by default), through the command line.

    python bench/gpu_smoke.py                 # on cuda; exits 0 with a note when there is none
    python bench/gpu_smoke.py --device cpu --reference   # the GPU's code path, on this CPU

Each fit is followed by the task's render / eval / export command on the same device. Prints
one line per command (seconds, exit status) and writes bench/results/smoke_<device>.json. Not part
of the test suite (the suite runs the same reference path on the CPU: tests/test_devices.py).
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

ROOT = Path(__file__).resolve().parents[1]
LEGO_MINI = ROOT / "tests" / "data" / "nerf" / "lego_mini"


def commands(work: Path, device: str) -> list[tuple[str, list[str]]]:
    box = work / "box.obj"
    _write_box(box)
    d = ["--device", device]
    run = lambda name: str(work / name)  # noqa: E731
    return [
        ("fit image", ["fit", "image", "sample:camera", "--size", "64", "--steps", "20", "--out", run("image"), *d]),
        ("render image", ["render", "image", run("image"), "--width", "128", "--out", run("image/x2.png"), *d]),
        ("fit image-gradients", ["fit", "image-gradients", "sample:camera", "--size", "32", "--steps", "10",
                                 "--out", run("grad"), *d]),
        ("fit blend", ["fit", "blend", "sample:camera", "sample:moon", "--size", "32", "--steps", "10",
                       "--out", run("blend"), *d]),
        ("fit nerf instant", ["fit", "nerf", str(LEGO_MINI), "--preset", "instant", "--steps", "10",
                              "--out", run("nerf_instant"), *d]),
        ("fit nerf vanilla", ["fit", "nerf", str(LEGO_MINI), "--preset", "vanilla", "--steps", "2",
                              "--out", run("nerf_vanilla"), *d]),
        ("fit nerf tiny", ["fit", "nerf", str(LEGO_MINI), "--preset", "tiny", "--steps", "2",
                           "--out", run("nerf_tiny"), *d]),
        ("eval nerf", ["eval", "nerf", run("nerf_instant"), *d]),
        ("fit sdf", ["fit", "sdf", str(box), "--steps", "10", "--out", run("sdf"), *d]),
        ("fit sdf eikonal", ["fit", "sdf", str(box), "--loss", "eikonal", "--steps", "5", "--out", run("sdf_eik"), *d]),
        ("fit occupancy", ["fit", "occupancy", str(box), "--steps", "10", "--out", run("occ"), *d]),
        ("render sdf", ["render", "sdf", run("sdf"), "--out", run("sdf/renders"), *d]),
        ("fit ct", ["fit", "ct", "sample:shepp-logan", "--size", "64", "--views", "10", "--steps", "10",
                    "--out", run("ct"), *d]),
        ("render ct", ["render", "ct", run("ct"), "--out", run("ct/x.png"), *d]),
    ]


def _write_box(path: Path) -> None:
    v = [(x, y, z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
    f = [(1, 3, 4), (1, 4, 2), (5, 6, 8), (5, 8, 7), (1, 2, 6), (1, 6, 5), (3, 7, 8), (3, 8, 4), (1, 5, 7), (1, 7, 3),
         (2, 4, 8), (2, 8, 6)]
    path.write_text("".join(f"v {a} {b} {c}\n" for a, b, c in v) + "".join(f"f {a} {b} {c}\n" for a, b, c in f))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--reference", action="store_true", help="FIELDCRAFT_KERNELS=reference (no numba kernels)")
    ap.add_argument("--json", type=Path, default=None,
                    help="default: bench/results/smoke_<device>[_reference_kernels].json")
    args = ap.parse_args()
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device on this machine: nothing to run")
            return 0
    if args.json is None:
        kind = args.device.replace(":", "") + ("_reference_kernels" if args.reference else "")
        args.json = ROOT / "bench" / "results" / f"smoke_{kind}.json"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    if args.reference:
        env["FIELDCRAFT_KERNELS"] = "reference"
    rows, failed = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in commands(Path(tmp), args.device):
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "fieldcraft", *argv, *(["--quiet"] if argv[0] == "fit" else [])],
                               capture_output=True, text=True, env=env)
            seconds = time.perf_counter() - t0
            err = p.stderr.strip().splitlines()[-1] if p.returncode and p.stderr.strip() else ""
            rows.append({"command": name, "exit": p.returncode, "seconds": round(seconds, 2), "error": err})
            failed += p.returncode != 0
            print(f"{name:22s} exit {p.returncode}  {seconds:6.1f} s  {err}", flush=True)
    result = {"device": args.device, "reference_kernels": args.reference, "failed": failed, "commands": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(rows) - failed}/{len(rows)} commands passed; wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
