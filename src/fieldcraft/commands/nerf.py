"""``fieldcraft fit nerf``, ``eval nerf`` and ``render nerf`` (see :mod:`fieldcraft.tasks.nerf`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fieldcraft.commands.common import (
    add_device_argument,
    add_fit_arguments,
    budget_from_args,
    device_from_args,
    report,
)

PRESETS = ("instant", "vanilla", "tiny", "tensorf", "nerfacto", "plenoxels")  # fieldcraft.tasks.nerf.PRESETS (not imported: registering needs no torch)


def register(verbs: dict[str, argparse._SubParsersAction]) -> None:
    p = verbs["fit"].add_parser(
        "nerf", help="fit a radiance field to posed images",
        description="Fit a NeRF to a Blender (transforms_*.json), nerfstudio/instant-ngp (transforms.json), "
                    "LLFF (poses_bounds.npy) or COLMAP (sparse model: cameras/images/points3D .bin/.txt) dataset. Writes checkpoint.safetensors (+ config.json, a readable copy "
                    "of its header) and history.jsonl to --out, every --checkpoint-every seconds and at the end.")
    p.add_argument("data", help="dataset directory")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--preset", default=None, choices=PRESETS,
                   help="instant, vanilla, tiny, tensorf, nerfacto or plenoxels (default: nerfacto for unbounded real captures "
                        "(COLMAP, transforms.json with aabb_scale > 1 or, without aabb_scale, a camera_model or lens "
                        "distortion), instant otherwise; the choice is printed)")
    add_fit_arguments(p)
    p.add_argument("--background", default=None, choices=["white", "black", "random"],
                   help="background RGBA images are composited on (default: the preset's; random = random colour "
                        "per ray while training, white for evaluation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--downscale", type=int, default=None, metavar="N",
                   help="shrink the images N times on load (anti-aliased; nerfstudio's images_N/ when present); "
                        "evaluation and rendering read them the same way (default 1, or the stored factor on --resume)")
    p.add_argument("--skip-missing", action="store_true",
                   help="drop frames whose image file is missing (says how many) instead of stopping")
    p.add_argument("--refine-poses", action="store_true",
                   help="camera refinement (BARF): optimise a pose correction per training image with the field, "
                        "opening the position encoding's levels coarse to fine; writes the refined poses to "
                        "--out/poses.json (docs/nerf.md)")
    p.add_argument("--pose-lr", type=float, default=None, metavar="LR",
                   help="with --refine-poses: the corrections' learning rate (radians, and scene-box diagonals, "
                        "a step; default 1e-3)")
    p.add_argument("--sampler", default=None, choices=["occupancy", "proposal", "stratified"],
                   help="how samples are placed along rays (default: the preset's; proposal = Mip-NeRF 360 / "
                        "nerfacto proposal networks, docs/nerf.md)")
    p.add_argument("--distortion-weight", type=float, default=None, metavar="W",
                   help="weight of Mip-NeRF 360's distortion loss (default: the preset's, 0 = off)")
    p.add_argument("--blocks", type=int, default=None, metavar="N",
                   help="split the scene into N overlapping blocks of cameras (Block-NeRF) and fit one field per "
                        "block in --out/block_<k>/ (layout in --out/blocks.json); the budget is for all blocks "
                        "together; eval/render composite the blocks (docs/scaling.md)")
    p.add_argument("--block", type=int, default=None, metavar="K",
                   help="with --blocks: fit only block K (0-based), with the whole budget (blocks as separate jobs)")
    p.add_argument("--block-overlap", type=float, default=None, metavar="F",
                   help="with --blocks: a camera also joins every block whose centre is at most (1 + F) times as far "
                        "as its nearest block's (default 0.5)")
    p.add_argument("--match-colours", action="store_true",
                   help="with --blocks: composite the blocks through their colour transforms (fitted on shared "
                        "training views either way; stored in blocks.json)")
    p.set_defaults(func=_fit)

    e = verbs["eval"].add_parser("nerf", help="render a split of the dataset and score it",
                                 description="Renders every view of --split to DIR/eval/<split>/ (dataset file names, "
                                             "depth pictures in depth/) and writes metrics.json (PSNR, SSIM per view "
                                             "and mean).")
    e.add_argument("directory", type=Path, help="output directory of 'fit nerf'")
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--data", default=None, help="dataset directory (default: the one fitted)")
    e.add_argument("--limit", type=int, default=None, help="only the first N views")
    e.add_argument("--last-weights", action="store_true",
                   help="evaluate the last step's weights, not their running average (runs with ema_decay > 0)")
    e.add_argument("--align", action="store_true",
                   help="runs fitted with --refine-poses: move the views' poses by the similarity from the given to "
                        "the refined training poses (held-out poses are not refined), into DIR/eval/<split>-aligned/")
    e.add_argument("--octree", type=Path, default=None, metavar="FILE",
                   help="evaluate this baked octree ('export nerf --format octree') instead of the field, "
                        "into DIR/eval/<split>-octree/ (adds milliseconds per view)")
    add_device_argument(e)
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_eval)

    r = verbs["render"].add_parser("nerf", help="render a fitted radiance field (orbit video)")
    r.add_argument("directory", type=Path, help="output directory of 'fit nerf'")
    r.add_argument("--orbit", action="store_true", help="camera orbit around the scene")
    r.add_argument("--path", nargs="?", const=True, default=False, metavar="FILE",
                   help="alone: along the captured camera path (training poses in the dataset's order, smoothed); "
                        "with FILE: the frames of that camera path file ('fieldcraft view' export, nerfstudio's "
                        "camera_path.json layout; its size and fps; --out may then be .png: one PNG per frame)")
    r.add_argument("--frames", type=int, default=60)
    r.add_argument("--fps", type=int, default=30)
    r.add_argument("--out", required=True, type=Path,
                   help="video file: .mp4 (needs imageio-ffmpeg, else GIF) or .gif; with --path FILE also .png")
    r.add_argument("--data", default=None, help="dataset directory (default: the one fitted)")
    r.add_argument("--octree", type=Path, default=None, metavar="FILE",
                   help="render this baked octree ('export nerf --format octree') instead of the field")
    add_device_argument(r)
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_render)

    x = verbs["export"].add_parser("nerf", help="bake a fitted radiance field (sparse voxel octree)",
                                   description="Bakes density and spherical-harmonic colour into a sparse voxel grid "
                                               "(PlenOctrees) that 'eval nerf --octree' and 'render nerf --octree' "
                                               "render fast; format in docs/octree.md.")
    x.add_argument("directory", type=Path, help="output directory of 'fit nerf'")
    x.add_argument("--format", required=True, choices=["octree", "ply"],
                   help="octree: sparse voxel grid (.octree file); ply: coloured point cloud of the surface the "
                        "training views see (every --stride-th pixel where opacity >= 0.95)")
    x.add_argument("--stride", type=int, default=4, help="ply: every N-th pixel of each training view (default 4)")
    x.add_argument("--out", required=True, type=Path, help="file to write")
    x.add_argument("--resolution", type=int, default=256, help="voxels along each axis of the box (default 256)")
    x.add_argument("--sh-degree", type=int, default=1, help="highest SH band of the colour, 0-3 (default 1)")
    x.add_argument("--prune-weight", type=float, default=1e-2,
                   help="empty voxels whose largest weight over the training rays is below this (default 1e-2)")
    x.add_argument("--finetune-steps", type=int, default=0, metavar="N",
                   help="octree: then optimise the voxels' densities and SH colours on the training images for N "
                        "steps (PlenOctrees fine-tuning; default 0: none); Ctrl-C keeps what is done")
    x.add_argument("--finetune-seconds", type=float, default=None, metavar="S",
                   help="octree: fine-tune for S seconds (with --finetune-steps: whichever ends first)")
    x.add_argument("--finetune-batch", type=int, default=4096, metavar="RAYS",
                   help="octree: training rays per fine-tuning step (default 4096)")
    x.add_argument("--octree", type=Path, default=None, metavar="FILE",
                   help="fine-tune this baked octree instead of baking the field again")
    x.add_argument("--data", default=None, help="fine-tuning: dataset directory (default: the one fitted)")
    add_device_argument(x)
    x.add_argument("--quiet", action="store_true", help="no progress bar")
    x.set_defaults(func=_export)


def _fit(args: argparse.Namespace) -> int:
    from fieldcraft.data.scene import dataset_scene, forward_facing
    from fieldcraft.tasks.nerf import fit, nerf_config

    preset = args.preset
    if preset is None:
        scene, why = dataset_scene(args.data)
        preset = "nerfacto" if scene == "unbounded" else "instant"
        if not args.resume:
            print(f"fit nerf: preset {preset} ({why}: {scene} scene; --preset chooses another)")
    config = nerf_config(preset, args.background, ndc=forward_facing(args.data), seed=args.seed)
    if args.pose_lr is not None and not args.refine_poses:
        from fieldcraft.errors import FieldcraftError

        raise FieldcraftError("--pose-lr needs --refine-poses")
    if args.sampler is not None:
        config = config.replace(sampler=args.sampler)
    if args.distortion_weight is not None:
        config = config.replace(distortion_weight=args.distortion_weight)
    if args.refine_poses:
        config = config.replace(pose_refine=True, **({} if args.pose_lr is None else {"pose_lr": args.pose_lr}))
    if args.blocks is not None or args.block is not None or args.block_overlap is not None or args.match_colours:
        return _fit_blocks(args, config)
    metrics = fit(config, args.data, args.out, budget_from_args(args), resume=args.resume, progress=not args.quiet,
                  device=device_from_args(args), given=tuple(args.given), overwrite=args.overwrite,
                  checkpoint_seconds=args.checkpoint_every, downscale=args.downscale, skip_missing=args.skip_missing)
    return report(args.out, metrics)


def _fit_blocks(args: argparse.Namespace, config) -> int:
    from fieldcraft.errors import FieldcraftError
    from fieldcraft.tasks.nerf.blocks import fit_blocks

    if args.blocks is None:
        raise FieldcraftError("--block, --block-overlap and --match-colours need --blocks N")
    metrics = fit_blocks(config, args.data, args.out, budget_from_args(args), args.blocks, block=args.block,
                         overlap=args.block_overlap, match_colours=args.match_colours, seed=args.seed,
                         resume=args.resume, progress=not args.quiet,
                         device=device_from_args(args), given=tuple(args.given), overwrite=args.overwrite,
                         checkpoint_seconds=args.checkpoint_every, downscale=args.downscale,
                         skip_missing=args.skip_missing)
    return report(args.out, metrics)


def _eval(args: argparse.Namespace) -> int:
    from fieldcraft.errors import FieldcraftError
    from fieldcraft.tasks.nerf import evaluate
    from fieldcraft.tasks.nerf.blocks import evaluate_blocks, is_blocks_dir

    if is_blocks_dir(args.directory):  # the output of 'fit nerf --blocks': the blocks composited
        if args.octree is not None or getattr(args, "align", False):
            raise FieldcraftError(f"{args.directory}: --octree and --align are not supported for a blocks directory")
        m = evaluate_blocks(args.directory, args.split, data_path=args.data, max_images=args.limit,
                            progress=not args.quiet, averaged=not args.last_weights, device=device_from_args(args))
        print(f"{args.split}: {m['views']} views composited from {m['blocks']} blocks, PSNR {m['psnr']:.2f} dB, "
              f"SSIM {m['ssim']:.4f} -> {m['directory']}")
        return 0
    if args.octree is not None:
        from fieldcraft.tasks.nerf.baked import evaluate_octree

        m = evaluate_octree(args.directory, args.octree, args.split, data_path=args.data, max_images=args.limit,
                            progress=not args.quiet, device=args.device)
        print(f"{args.split} (octree): {m['views']} views, PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, "
              f"{m['ms_per_view']:.1f} ms a view -> {m['directory']}")
        return 0
    if args.align and (args.octree is not None or is_blocks_dir(args.directory)):
        raise FieldcraftError(f"{args.directory}: --align applies to a single field, not to --octree or blocks")
    m = evaluate(args.directory, args.split, data_path=args.data, max_images=args.limit, progress=not args.quiet,
                 averaged=not args.last_weights, device=device_from_args(args), align=args.align)
    print(f"{args.split}: {m['views']} views, PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f} -> {m['directory']}")
    return 0


def _render(args: argparse.Namespace) -> int:
    from fieldcraft.errors import FieldcraftError
    from fieldcraft.tasks.nerf import render_orbit

    if args.orbit == bool(args.path):
        raise FieldcraftError("render nerf: choose one camera path (--orbit or --path)")
    if isinstance(args.path, str):  # a camera path file (docs/viewer.md)
        from fieldcraft.tasks.nerf.outputs import render_camera_path

        written = render_camera_path(args.directory, args.path, args.out, octree=args.octree, data_path=args.data,
                                     progress=not args.quiet, device=device_from_args(args))
        print(f"wrote {written[0]}" + (f" ... {written[-1]} ({len(written)} files)" if len(written) > 1 else ""))
        return 0
    from fieldcraft.tasks.nerf.blocks import is_blocks_dir, render_blocks

    if is_blocks_dir(args.directory):  # the output of 'fit nerf --blocks': every frame composited from the blocks
        if args.octree is not None:
            raise FieldcraftError(f"{args.directory}: --octree is not supported for a blocks directory")
        path = render_blocks(args.directory, args.out, frames=args.frames, fps=args.fps, data_path=args.data,
                             progress=not args.quiet, device=device_from_args(args), path=args.path)
        print(f"wrote {path}")
        return 0
    if args.octree is not None:
        if args.path:
            raise FieldcraftError("render nerf --octree: renders the orbit or a camera path file (--orbit or "
                                  "--path FILE), not the captured path")
        from fieldcraft.tasks.nerf.baked import render_orbit_octree

        path = render_orbit_octree(args.directory, args.octree, args.out, frames=args.frames, fps=args.fps,
                                   data_path=args.data, progress=not args.quiet, device=args.device)
        print(f"wrote {path}")
        return 0
    path = render_orbit(args.directory, args.out, frames=args.frames, fps=args.fps, data_path=args.data,
                        progress=not args.quiet, device=device_from_args(args), path=args.path)
    print(f"wrote {path}")
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.format == "ply" or args.finetune_steps < 0:
        from fieldcraft.errors import check

        check(args.finetune_steps >= 0, f"--finetune-steps must be >= 0, got {args.finetune_steps}")
        check(not (args.finetune_steps or args.finetune_seconds is not None or args.octree or args.data),
              "--finetune-*, --octree and --data apply to --format octree")
    if args.format == "ply":
        from fieldcraft.tasks.nerf.pointcloud import point_cloud

        cloud = point_cloud(args.directory, args.out, stride=args.stride, progress=not args.quiet,
                            device=device_from_args(args))
        print(f"{cloud['points']} points -> {cloud['path']}")
        return 0
    from fieldcraft.tasks.nerf.bake import BakeConfig, FinetuneConfig, export_octree
    from fieldcraft.train import Budget

    config = BakeConfig(resolution=args.resolution, sh_degree=args.sh_degree, prune_weight=args.prune_weight)
    budget = None
    if args.finetune_steps or args.finetune_seconds is not None:
        budget = Budget(steps=args.finetune_steps or None, seconds=args.finetune_seconds)
    stats = export_octree(args.directory, args.out, config, FinetuneConfig(batch_rays=args.finetune_batch), budget,
                          start=args.octree, data_path=args.data, device=device_from_args(args),
                          progress=not args.quiet)
    path = stats["path"]
    from fieldcraft.render.octree import use_fast_kernels

    if use_fast_kernels():  # compile the renderer now (cached on disk), not in the first 'eval --octree'
        from fieldcraft.kernels.octree import warm_up

        warm_up()
    tuned = stats.get("finetune")
    if tuned:
        print(f"fine-tuned {tuned['steps']} steps ({tuned['seconds']:.1f} s): training PSNR {tuned['train_psnr_first']:.2f} "
              f"-> {tuned['train_psnr_last']:.2f} dB" + (f", stopped by {tuned['stopped']}" if tuned["stopped"] else ""))
    print(f"{stats['bricks']} bricks, {stats['voxels']} voxels ({path.stat().st_size / 1e6:.1f} MB) -> {path}")
    return 130 if tuned and tuned["stopped"] else 0
