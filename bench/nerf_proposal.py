"""Samplers and regularisers for real captures: occupancy grid vs proposal fields, distortion loss on/off.

    python bench/nerf_proposal.py --data ../shared/data/nerf/fruit --preset nerfacto --downscale 4 --steps 1000 \\
        --variants occupancy,occupancy+dist,proposal,proposal+dist
    python bench/nerf_proposal.py --data ../shared/data/nerf/fern_llff --preset instant --steps 1000 \\
        --variants occupancy,occupancy+dist

Variants: ``occupancy`` / ``proposal`` (``NerfConfig.sampler``), ``+dist`` adds the distortion
loss (``distortion_weight``, ``--distortion-weight``, default nerfstudio's 0.002; another weight is
named in the result's key, ``proposal+dist=0.0005``). Each run fits
the preset with the same step budget (``fieldcraft.tasks.nerf.fit``, one thread, in a child
process) and scores the held-out frames (every 8th; ``--test-views`` the first N), or with
``--val K`` fits the training frames but every K-th and scores those (a validation carved from
the training split, for choosing settings). Results (steps, seconds, ms a step, rays a step,
samples a ray, PSNR, SSIM, per view, 1-minute load average) go to
``bench/results/nerf_proposal_<dataset>.json`` keyed by variant and budget.
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


def overrides(variant: str, distortion_weight: float) -> dict:
    """Config overrides of a variant name (module docstring)."""
    sampler, _, extra = variant.partition("+")
    out: dict = {"sampler": sampler}
    if extra == "dist":
        out["distortion_weight"] = distortion_weight
    elif extra:
        raise SystemExit(f"unknown variant {variant!r}")
    return out


def score_val(out: Path, k: int, limit: int | None) -> tuple[float, float, list[dict], float]:
    """Mean PSNR / SSIM of the training frames left out of the fit (every ``k``-th, the first ``limit``)."""
    from fieldcraft.data.scene import composite
    from fieldcraft.metrics import psnr, ssim
    from fieldcraft.tasks.nerf.model import background_colour
    from fieldcraft.tasks.nerf.outputs import fitted_views, load_model

    model, meta = load_model(out)
    data = fitted_views(meta, None, "train")
    bg = background_colour(model.config.background)
    views, t0 = [], time.perf_counter()
    for i in [i for i in range(len(data)) if i % k == 0][:limit]:
        rays = model.view_rays(data.cameras, i, data.near, data.far)
        rgb = model.render_image(rays, bg[None], data.height, data.width)["rgb"].cpu().numpy()
        gt = composite(data.image(i), bg).cpu().numpy()
        views.append({"name": data.names[i], "psnr": psnr(rgb, gt), "ssim": ssim(rgb, gt)})
    n = len(views)
    return (sum(v["psnr"] for v in views) / n, sum(v["ssim"] for v in views) / n, views,
            (time.perf_counter() - t0) / n)


def one_run(args: argparse.Namespace, variant: str) -> dict:
    """Fit and evaluate one variant in this process (the child); returns the figures."""
    import torch

    from fieldcraft.data.scene import forward_facing, load_posed_images
    from fieldcraft.tasks import nerf
    from fieldcraft.train import Budget

    torch.set_num_threads(1)
    ov = overrides(variant, args.distortion_weight)
    config = nerf.nerf_config(args.preset, ndc=forward_facing(args.data), seed=args.seed, **ov)
    out = Path(args.work) / f"{Path(args.data).name}_{variant}_{args.steps}{'_val' if args.val else ''}"
    frames = None
    if args.val:
        n = len(load_posed_images(args.data, "train", downscale=args.downscale))
        frames = tuple(i for i in range(n) if i % args.val)
    fit = nerf.fit(config, args.data, out, Budget(steps=args.steps), progress=False, overwrite=True,
                   downscale=args.downscale, frames=frames)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    if args.val:  # the left-out training frames
        psnr, ssim, per_view, seconds = score_val(out, args.val, args.test_views)
        views, metrics = len(per_view), {"render_seconds_per_view": seconds}
    else:
        metrics = nerf.evaluate(out, "test", max_images=args.test_views, progress=False)
        psnr, ssim, per_view, views = metrics["psnr"], metrics["ssim"], metrics["per_view"], metrics["views"]
    return {"variant": variant, "overrides": ov, "preset": args.preset, "steps": fit["steps"],
            "fit_seconds": fit["fit_seconds"], "ms_per_step": 1000 * fit["fit_seconds"] / fit["steps"],
            "mean_rays": sum(h["rays"] for h in history) / len(history),
            "mean_spr": sum(h["spr"] for h in history) / len(history), "psnr": psnr, "ssim": ssim,
            "views": views, "split": "val" if args.val else "test", "per_view": [round(v["psnr"], 3) for v in per_view],
            "render_seconds_per_view": metrics["render_seconds_per_view"], "threads": torch.get_num_threads(),
            "load_average_1min": os.getloadavg()[0], "downscale": args.downscale}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--preset", default="nerfacto")
    ap.add_argument("--variants", default="occupancy,occupancy+dist,proposal,proposal+dist")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--downscale", type=int, default=1)
    ap.add_argument("--distortion-weight", type=float, default=0.002)
    ap.add_argument("--test-views", type=int, default=None, help="score only the first N held-out views")
    ap.add_argument("--val", type=int, default=0, help="score every K-th training frame, left out of the fit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/fieldcraft_bench_nerf_proposal")
    ap.add_argument("--results", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(one_run(args, args.child)))
        return 0
    from fieldcraft.io.records import write_json

    results = Path(args.results or HERE / "results" / f"nerf_proposal_{Path(args.data).name}.json")
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "--child", variant, *(argv if argv is not None else sys.argv[1:])]
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                                          "NUMBA_NUM_THREADS": "1"})
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return 1
        row = json.loads(proc.stdout.strip().splitlines()[-1]) | {"wall_seconds": time.time() - t0}
        name = variant + (f"={args.distortion_weight:g}" if variant.endswith("+dist") and args.distortion_weight != 0.002 else "")
        key = f"{args.preset}/{name}/{args.steps}steps/ds{args.downscale}{'/val' if args.val else ''}"
        store = json.loads(results.read_text()) if results.exists() else {}  # other runs may have written
        store[key] = row
        write_json(results, store)
        print(f"{key}: {row['psnr']:.2f} dB (SSIM {row['ssim']:.3f}, {row['views']} {row['split']} views), "
              f"{row['ms_per_step']:.0f} ms/step, {row['mean_rays']:.0f} rays x {row['mean_spr']:.1f} samples, "
              f"load {row['load_average_1min']:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
