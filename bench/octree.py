"""Baked octrees on lego: PSNR against the field they were baked from, and how fast they render.

    python bench/octree.py --run RUN                 # a fitted instant run (fitted here if missing)
    python bench/octree.py --run RUN --fit-seconds 300 --resolution 256 --sh-degree 2

Steps, each timed:

1. ``fieldcraft fit nerf lego_100 --seconds S --out RUN`` when ``RUN`` holds no checkpoint;
2. the field's own ``fieldcraft eval nerf RUN --data lego_200`` (reused when ``RUN/eval/test`` already
   holds it for that dataset and step);
3. ``fieldcraft export nerf RUN --format octree --out RUN/lego.octree`` (bake);
4. ``fieldcraft eval nerf RUN --octree RUN/lego.octree --data lego_200`` twice, as separate
   processes, timing each whole command (the second finds numba's compiled kernels in its cache);
5. where that command's CPU time goes (``breakdown``, CPU seconds of this process): start-up of a
   fresh interpreter to a loaded octree (a subprocess), reading the test images, rendering every
   view, and scoring and writing one view (SSIM, depth picture, two PNGs). ``--breakdown-only``
   runs this step alone and merges it into the existing results;
6. with ``--finetune-steps N`` (optional): ``fieldcraft export nerf RUN --format octree --octree
   RUN/lego.octree --finetune-steps N --out RUN/lego_finetuned.octree`` (fine-tuning the bake on
   the training images, timed) and its ``eval nerf --octree`` on the same test views (``finetune``);
   ``--finetune-only`` runs this step alone (default 1000 steps) and merges it into the results.

Writes ``bench/results/nerf_octree_lego.json``: PSNR / SSIM of field and octree on the same
views, the gap, milliseconds per view, whole-command seconds, bake seconds, file size, and the
1-minute load average before each timed command (the machine's condition).
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
DATA = HERE.parent.parent / "shared" / "data" / "nerf"
RESULTS = HERE / "results" / "nerf_octree_lego.json"


def _timed(cmd: list[str]) -> tuple[float, float]:
    """Run a command; ``(wall seconds, load average before)``; stop on failure."""
    load = os.getloadavg()[0]
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t, load


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="run directory of an instant fit")
    ap.add_argument("--train", default=str(DATA / "lego_100"), help="dataset to fit when --run has no checkpoint")
    ap.add_argument("--test", default=str(DATA / "lego_200"), help="dataset whose test split is scored")
    ap.add_argument("--fit-seconds", type=float, default=300.0)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--sh-degree", type=int, default=1)
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--breakdown-only", action="store_true", help="only step 5, merged into --results")
    ap.add_argument("--finetune-steps", type=int, default=0, help="step 6: fine-tune the bake N steps (0: skip)")
    ap.add_argument("--finetune-only", action="store_true",
                    help="only step 6 (on RUN/lego.octree), merged into --results")
    args = ap.parse_args(argv)
    fc = [sys.executable, "-m", "fieldcraft"]
    if args.finetune_only:
        out = json.loads(Path(args.results).read_text())
        out["finetune"] = finetune_row(fc, args.run, args.run / "lego.octree", args.test, args.finetune_steps or 1000,
                                       out["field_psnr"])
        return _write(args.results, out)
    if args.breakdown_only:
        out = json.loads(Path(args.results).read_text())
        out["breakdown"] = breakdown(args.run, args.run / "lego.octree", args.test)
        return _write(args.results, out)
    run, octree = args.run, args.run / "lego.octree"
    out: dict = {"run": str(run), "test_data": args.test, "resolution": args.resolution, "sh_degree": args.sh_degree,
                 "cpus": len(os.sched_getaffinity(0))}
    if not (run / "checkpoint.safetensors").is_file():
        out["fit_seconds_wall"], out["load_before_fit"] = _timed(
            [*fc, "fit", "nerf", args.train, "--seconds", str(args.fit_seconds), "--out", str(run), "--quiet"])
    header = json.loads((run / "config.json").read_text())
    out["fit"] = {"preset": header["config"]["preset"], "step": header["step"], "seconds": header["seconds"]}
    field_metrics = run / "eval" / "test" / "metrics.json"
    previous = json.loads(field_metrics.read_text()) if field_metrics.is_file() else {}
    reuse = previous.get("step") == header["step"] and previous.get("views") == 200 and \
        Path(previous.get("data", "")).resolve().parent == Path(args.test).resolve()
    if not reuse:
        _timed([*fc, "eval", "nerf", str(run), "--data", args.test, "--quiet"])
    field = json.loads(field_metrics.read_text())
    out["bake_seconds"], out["load_before_bake"] = _timed(
        [*fc, "export", "nerf", str(run), "--format", "octree", "--out", str(octree), "--resolution",
         str(args.resolution), "--sh-degree", str(args.sh_degree), "--quiet"])
    out["octree_megabytes"] = octree.stat().st_size / 1e6
    cmd = [*fc, "eval", "nerf", str(run), "--octree", str(octree), "--data", args.test, "--quiet"]
    out["eval_command_seconds"], out["load_before_eval"] = [], []
    for _ in range(2):
        seconds, load = _timed(cmd)
        out["eval_command_seconds"].append(seconds)
        out["load_before_eval"].append(load)
    oct_metrics = json.loads((run / "eval" / "test-octree" / "metrics.json").read_text())
    names = [v["name"] for v in oct_metrics["per_view"]]
    assert names == [v["name"] for v in field["per_view"]], "field and octree scored different views"
    out.update({"views": oct_metrics["views"], "bricks": oct_metrics["bricks"],
                "field_psnr": field["psnr"], "field_ssim": field["ssim"],
                "field_seconds_per_view": field["render_seconds_per_view"],
                "octree_psnr": oct_metrics["psnr"], "octree_ssim": oct_metrics["ssim"],
                "psnr_gap": field["psnr"] - oct_metrics["psnr"], "octree_ms_per_view": oct_metrics["ms_per_view"],
                "octree_seconds_per_view_with_scoring": oct_metrics["render_seconds_per_view"],
                "kernels": oct_metrics["kernels"]})
    out["breakdown"] = breakdown(run, octree, args.test)
    if args.finetune_steps > 0:
        out["finetune"] = finetune_row(fc, run, octree, args.test, args.finetune_steps, field["psnr"])
    return _write(args.results, out)


def finetune_row(fc: list[str], run: Path, octree: Path, test: str, steps: int, field_psnr: float) -> dict:
    """Step 6: fine-tune the bake ``steps`` steps, then score it on the test views."""
    tuned = run / "lego_finetuned.octree"
    seconds, load = _timed([*fc, "export", "nerf", str(run), "--format", "octree", "--octree", str(octree),
                            "--finetune-steps", str(steps), "--out", str(tuned), "--quiet"])
    _timed([*fc, "eval", "nerf", str(run), "--octree", str(tuned), "--data", test, "--quiet"])
    m = json.loads((run / "eval" / "test-octree" / "metrics.json").read_text())
    from fieldcraft.io.checkpoint import load_checkpoint
    from fieldcraft.io.octree_file import load_octree

    info = load_octree(tuned).source["finetune"]
    meta = load_checkpoint(run)[1]
    return {"fitted": {"preset": meta["config"]["preset"], "steps": meta["step"]}, "steps": info["steps"], "batch_rays": info["batch_rays"],
            "finetune_seconds": info["seconds"],
            "command_seconds": seconds, "load_before": load, "psnr": m["psnr"], "ssim": m["ssim"],
            "psnr_gap": field_psnr - m["psnr"], "ms_per_view": m["ms_per_view"]}


def _write(path: str, out: dict) -> int:
    from fieldcraft.io.records import write_json

    write_json(path, out)
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}, indent=1))
    return 0


def breakdown(run: Path, octree: Path, test: str) -> dict:
    """CPU seconds of the parts of ``eval nerf --octree`` (step 5 of the module docstring)."""
    import numpy as np

    from fieldcraft.data.scene import composite
    from fieldcraft.io.images import write_png
    from fieldcraft.io.octree_file import load_octree
    from fieldcraft.metrics import ssim
    from fieldcraft.render.depth import depth_picture
    from fieldcraft.render.octree import OctreeRenderer
    from fieldcraft.tasks.nerf.baked import run_header
    from fieldcraft.tasks.nerf.outputs import fitted_views

    start = ("import torch\nfrom fieldcraft.tasks.nerf.baked import evaluate_octree\n"
             "from fieldcraft.render.octree import OctreeRenderer\nfrom fieldcraft.io.octree_file import load_octree\n"
             f"from fieldcraft.kernels.octree import warm_up\nOctreeRenderer(load_octree({str(octree)!r})); warm_up()\n")
    t = os.times()
    subprocess.run([sys.executable, "-c", start], check=True)
    u = os.times()
    startup = (u.children_user - t.children_user) + (u.children_system - t.children_system)
    c0 = time.process_time()
    data = fitted_views(run_header(run), test, "test")
    c1 = time.process_time()
    renderer = OctreeRenderer(load_octree(octree))
    cams = data.cameras
    cam = lambda k: (cams.c2w[k].numpy(), float(cams.fx[k]), float(cams.fy[k]), float(cams.cx[k]),  # noqa: E731
                     float(cams.cy[k]), cams.height, cams.width)
    renderer.render_camera(*cam(0))
    c2 = time.process_time()
    outs = [renderer.render_camera(*cam(k)) for k in range(len(data))]
    c3 = time.process_time()
    n = min(20, len(data))
    bg = torch_tensor(renderer.tree.background)
    for k in range(n):
        gt = composite(data.image(k), bg).numpy()
        ssim(np.clip(outs[k]["rgb"], 0, 1), gt)
        write_png(run / "eval" / "bench_tmp.png", outs[k]["rgb"])
        write_png(run / "eval" / "bench_tmp.png", depth_picture(outs[k]["depth"], outs[k]["opacity"]))
    c4 = time.process_time()
    (run / "eval" / "bench_tmp.png").unlink(missing_ok=True)
    return {"startup_cpu_seconds": startup, "read_images_cpu_seconds": c1 - c0,
            "render_cpu_ms_per_view": 1000 * (c3 - c2) / len(data),
            "score_and_write_cpu_ms_per_view": 1000 * (c4 - c3) / n, "load_average": os.getloadavg()[0]}


def torch_tensor(values):
    import torch

    return torch.as_tensor(values, dtype=torch.float32)


if __name__ == "__main__":
    raise SystemExit(main())
