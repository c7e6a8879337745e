"""Shape-fitting benchmark: each loss on spot, bunny and armadillo with a time budget.

For every (mesh, loss): fit with ``--seconds`` of fitting time, extract at ``--resolution``
densely and with MISE, and measure Chamfer-L1 (point-to-surface, the headline; and the
point-to-point estimate), normal consistency, F-score, IoU (definitions in docs/shapes.md), fit
seconds, sampling seconds, and extraction seconds (dense vs MISE) plus the Chamfer-L1 between
the dense and MISE meshes, and the wall time of the whole command
``fieldcraft export mesh DIR --resolution R --mise`` (a fresh process: start-up, imports, JIT
cache load, extraction, writing the PLY; median of ``--command-runs``). Prints a table and writes
``bench/results/shapes.json``.

    OMP_WAIT_POLICY=PASSIVE python bench/shapes.py --seconds 120 --resolution 256
    python bench/shapes.py --meshes spot --losses regression --seconds 30 --no-dense   # quick look

The machine is shared: fitting seconds are wall-clock time inside the optimisation steps
and depend on the load; the JSON records the load average at the start of each run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MESHES = ROOT.parent / "shared" / "data" / "meshes"


def main() -> int:
    from fieldcraft.runtime import configure_cpu_defaults

    configure_cpu_defaults()
    import numpy as np

    from fieldcraft.errors import FieldcraftError
    from fieldcraft.geometry.marching_cubes import vertex_normals
    from fieldcraft.geometry.mesh import bounding_box_normalisation, load_shape, save_mesh
    from fieldcraft.geometry.metrics import mesh_metrics
    from fieldcraft.runtime import set_threads
    from fieldcraft.tasks.sdf import default_task_config, extract_mesh, fit_shape, load_shape_field
    from fieldcraft.train import Budget

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meshes", nargs="+", default=["spot", "bunny", "armadillo"])
    ap.add_argument("--losses", nargs="+", default=["regression", "eikonal", "occupancy"])
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--no-dense", action="store_true", help="skip the (slow) dense extraction")
    ap.add_argument("--command-runs", type=int, default=3, help="timed runs of the export command (0: skip)")
    ap.add_argument("--device", default=None, help="torch device of the fits (default: cuda when available, else cpu)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fieldcraft_bench_shapes"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "shapes.json")
    args = ap.parse_args()
    set_threads()
    if not MESHES.exists():
        print(f"shared meshes not found at {MESHES}", file=sys.stderr)
        return 2

    rows = []
    for name in args.meshes:
        src = MESHES / f"{name}.obj"
        gt = load_shape(src)
        for loss in args.losses:
            out = args.work / f"{name}_{loss}"
            load = os.getloadavg()[0]
            try:
                m = fit_shape(src, out, default_task_config(loss), Budget(seconds=args.seconds), progress=False,
                              resolution=args.resolution, render=loss != "occupancy", evaluate=True, overwrite=True,
                              device=args.device)
                if "mesh_error" in m:  # a fit that produced no surface
                    raise FieldcraftError(m["mesh_error"])
            except FieldcraftError as exc:  # record and go on
                rows.append({"mesh": name, "loss": loss, "load_average": load, "error": str(exc)})
                print(f"{name:10s} {loss:10s} failed: {exc}", flush=True)
                continue
            row = {"mesh": name, "loss": loss, "load_average": load, **m,
                   "mise_seconds": m["extraction_seconds"]}
            if not args.no_dense:
                field, cfg, norm, _ = load_shape_field(out, args.device)
                vd, fd, sd = extract_mesh(field, cfg.loss, args.resolution, mise=False)
                vm, fm, _ = extract_mesh(field, cfg.loss, args.resolution, mise=True)
                save_mesh(out / "dense.ply", norm.inverse(vd), fd, vertex_normals(norm.inverse(vd), fd))
                row["dense_seconds"] = sd["seconds"]
                gt_norm = bounding_box_normalisation(gt.vertices, margin=0.0)
                dm = mesh_metrics((norm.inverse(vm), fm), (norm.inverse(vd), fd), n_points=100_000, n_volume=1000,
                                  normalisation=gt_norm)
                row["mise_vs_dense_chamfer_l1"] = dm["chamfer_l1"]
            if args.command_runs > 0:
                times = export_command_seconds(out, args.resolution, args.command_runs)
                row["export_command_seconds"] = float(np.median(times))
                row["export_command_seconds_runs"] = times
            rows.append(row)
            print(_line(row), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"seconds": args.seconds, "resolution": args.resolution, "runs": rows},
                                           indent=2) + "\n")
    print()
    print(f"{'mesh':10s} {'loss':10s} {'CD-L1':>9s} {'CD-L1 p2p':>9s} {'NC':>6s} {'F@0.01':>6s} {'IoU':>6s} "
          f"{'fit s':>6s} {'steps':>6s} {'MISE s':>6s} {'dense s':>7s} {'MISE~dense':>10s} {'export cmd s':>12s}")
    for r in rows:
        print(_line(r) if "error" not in r else f"{r['mesh']:10s} {r['loss']:10s} failed: {r['error']}")
    print(f"wrote {args.out}")
    return 0


def _line(r: dict) -> str:
    return (f"{r['mesh']:10s} {r['loss']:10s} {r['chamfer_l1']:9.2e} {r['chamfer_l1_p2p']:9.2e} "
            f"{r['normal_consistency']:6.4f} {r['f_score']:6.4f} {r['iou']:6.4f} {r['fit_seconds']:6.1f} "
            f"{r['steps']:6d} {r['mise_seconds']:6.2f} {r.get('dense_seconds', float('nan')):7.1f} "
            f"{r.get('mise_vs_dense_chamfer_l1', float('nan')):10.2e} {r.get('export_command_seconds', float('nan')):12.2f}")


def export_command_seconds(directory: Path, resolution: int, runs: int) -> list[float]:
    """Wall seconds of ``fieldcraft export mesh --mise`` in fresh processes (as a user runs it)."""
    import subprocess

    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fieldcraft", "export", "mesh", str(directory), "--resolution",
                        str(resolution), "--mise", "--out", str(directory / "export_timed.ply")],
                       check=True, capture_output=True)
        times.append(round(time.perf_counter() - t0, 3))
    return times


if __name__ == "__main__":
    sys.exit(main())
