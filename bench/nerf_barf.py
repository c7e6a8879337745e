"""Camera refinement (BARF): pose recovery on perturbed lego_100, and the PSNR gained on a real capture.

    python bench/nerf_barf.py lego --steps 2000
    python bench/nerf_barf.py fruit --steps 2000 --downscale 4

``lego``: every training pose of ``../shared/data/nerf/lego_100`` is turned by 3 degrees about a
random axis and its centre moved by 5 % of the scene size (the scene box's diagonal) in a random
direction (seed 0, :func:`fieldcraft.render.pose_refinement.perturb_poses`); the perturbed dataset
(``transforms_train.json`` rewritten, images and the other splits symlinked) goes to the work
directory. Two fits from scratch with the same budget, without and with ``--refine-poses``; then
the training poses' mean rotation error (degrees) and centre error (fraction of the scene size),
given (perturbed) and refined, each after the similarity that best aligns its camera centres to
the true ones (:func:`~fieldcraft.render.pose_refinement.pose_errors`); and the test PSNR of both
runs: the refined run's test poses aligned by the similarity from the true to the refined training
poses (``eval nerf --align --data <true dataset>``), the other run's as given.

``fruit``: a real capture (held-out every 8th frame) fitted without and with ``--refine-poses``
for the same budget (``--downscale``); held-out PSNR/SSIM with the given poses and, for the
refined run, also aligned (``--align``).

Results: ``bench/results/nerf_barf_lego.json`` / ``nerf_barf_fruit.json`` (with the thread count
and the 1-minute load average: time budgets depend on the load; prefer ``--steps``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data" / "nerf"


def perturbed_copy(src: Path, dst: Path, degrees: float, fraction: float, seed: int) -> dict:
    """Write ``dst``: ``src`` (Blender layout) with every training pose perturbed; returns the scene size."""
    import torch

    from fieldcraft.data.scene import load_posed_images
    from fieldcraft.io.records import write_json
    from fieldcraft.render.pose_refinement import perturb_poses

    size = float((load_posed_images(src, "train").aabb.diff(dim=0)).norm())
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for entry in src.iterdir():
        if entry.name != "transforms_train.json":
            (dst / entry.name).symlink_to(entry.resolve())
    meta = json.loads((src / "transforms_train.json").read_text())
    c2w = torch.tensor([f["transform_matrix"] for f in meta["frames"]], dtype=torch.float64)
    noisy = perturb_poses(c2w[:, :3], degrees, fraction * size, torch.Generator().manual_seed(seed))
    row = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    for frame, m in zip(meta["frames"], noisy):
        frame["transform_matrix"] = torch.cat([m, row]).tolist()
    write_json(dst / "transforms_train.json", meta)
    return {"scene_size": size, "degrees": degrees, "translation_fraction": fraction, "seed": seed}


def pose_figures(estimate, truth, size: float) -> dict:
    from fieldcraft.render.pose_refinement import pose_errors

    rot, dist = pose_errors(estimate, truth)
    return {"rotation_deg_mean": float(rot.mean()), "rotation_deg_median": float(rot.median()),
            "translation_frac_mean": float(dist.mean() / size), "translation_frac_median": float(dist.median() / size)}


def fit_and_eval(data: Path, out: Path, config, budget, args, true_data: Path | None = None) -> dict:
    from fieldcraft.tasks import nerf

    fit = nerf.fit(config, data, out, budget, progress=not args.quiet, overwrite=True, downscale=args.downscale)
    res = {"steps": fit["steps"], "fit_seconds": fit["fit_seconds"], "train_psnr": fit["train_psnr"]}
    m = nerf.evaluate(out, "test", data_path=true_data, max_images=args.test_views, progress=not args.quiet)
    res.update(test_psnr=m["psnr"], test_ssim=m["ssim"], test_views=m["views"])
    if config.pose_refine:
        a = nerf.evaluate(out, "test", data_path=true_data, max_images=args.test_views, progress=not args.quiet,
                          align=True)
        res.update(test_psnr_aligned=a["psnr"], test_ssim_aligned=a["ssim"])
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scene", choices=["lego", "fruit"])
    ap.add_argument("--data", default=None, help="dataset (default ../shared/data/nerf/lego_100 or fruit)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--preset", default=None, help="default: instant (lego), nerfacto (fruit)")
    ap.add_argument("--pose-lr", type=float, default=None)
    ap.add_argument("--c2f", default=None, metavar="START,END",
                    help="coarse-to-fine window of the refined run, fractions of the budget (default 0.1,0.5; 0,0: off)")
    ap.add_argument("--downscale", type=int, default=None, help="fruit: default 4")
    ap.add_argument("--degrees", type=float, default=3.0)
    ap.add_argument("--fraction", type=float, default=0.05, help="translation noise, fraction of the scene size")
    ap.add_argument("--test-views", type=int, default=None, help="only the first N test views")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fieldcraft_barf"))
    ap.add_argument("--only", choices=["baseline", "refined"], default=None, help="run one of the two fits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="results file (default bench/results/nerf_barf_<scene>.json)")
    args = ap.parse_args(argv)

    import torch

    from fieldcraft.data.scene import forward_facing, load_posed_images
    from fieldcraft.io.records import write_json
    from fieldcraft.runtime import set_threads
    from fieldcraft.tasks import nerf
    from fieldcraft.tasks.nerf.outputs import load_model, refined_poses
    from fieldcraft.train import Budget

    set_threads()
    budget = Budget(steps=args.steps, seconds=args.seconds)
    data = Path(args.data) if args.data else SHARED / ("lego_100" if args.scene == "lego" else "fruit")
    preset = args.preset or ("instant" if args.scene == "lego" else "nerfacto")
    if args.scene == "fruit" and args.downscale is None:
        args.downscale = 4
    config = nerf.nerf_config(preset, ndc=forward_facing(data), seed=args.seed)
    refine = config.replace(pose_refine=True, **({} if args.pose_lr is None else {"pose_lr": args.pose_lr}))
    if args.c2f is not None:
        start, end = (float(v) for v in args.c2f.split(","))
        refine = refine.replace(c2f_start=start, c2f_end=end)
    result: dict = {"scene": args.scene, "data": str(data), "preset": preset, "budget": budget.to_dict(),
                    "downscale": args.downscale, "pose_lr": refine.pose_lr, "c2f": [refine.c2f_start, refine.c2f_end],
                    "threads": torch.get_num_threads(), "test_views": args.test_views}
    t0 = time.time()
    if args.scene == "lego":
        noisy = args.work / "lego_perturbed"
        result["perturbation"] = perturbed_copy(data, noisy, args.degrees, args.fraction, args.seed)
        size = result["perturbation"]["scene_size"]
        truth = load_posed_images(data, "train").cameras.c2w
        given = load_posed_images(noisy, "train").cameras.c2w
        result["given_pose_error"] = pose_figures(given, truth, size)
        runs = {"baseline": config, "refined": refine}
        for name, cfg in runs.items():
            if args.only not in (None, name):
                continue
            out = args.work / f"lego_{name}"
            result[name] = fit_and_eval(noisy, out, cfg, budget, args, true_data=data)
            if name == "refined":
                model, meta = load_model(out)
                _, refined = refined_poses(model, meta)
                result["refined_pose_error"] = pose_figures(refined, truth, size)
    else:
        for name, cfg in {"baseline": config, "refined": refine}.items():
            if args.only not in (None, name):
                continue
            result[name] = fit_and_eval(data, args.work / f"{args.scene}_{name}", cfg, budget, args)
    if "baseline" in result and "refined" in result:
        key = "test_psnr_aligned" if args.scene == "lego" else "test_psnr"
        result["psnr_gain_db"] = result["refined"][key] - result["baseline"]["test_psnr"]
    result["load_average_1min"] = os.getloadavg()[0]
    result["wall_seconds"] = time.time() - t0
    dest = args.json or HERE / "results" / f"nerf_barf_{args.scene}.json"
    write_json(dest, result)
    print(json.dumps(result, indent=1))
    print(f"-> {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
