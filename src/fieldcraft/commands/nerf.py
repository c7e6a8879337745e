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

PRESETS = ("instant", "vanilla", "tiny")  # fieldcraft.tasks.nerf.PRESETS (not imported: registering needs no torch)


def register(verbs: dict[str, argparse._SubParsersAction]) -> None:
    p = verbs["fit"].add_parser(
        "nerf", help="fit a radiance field to posed images",
        description="Fit a NeRF to a Blender (transforms_*.json), nerfstudio/instant-ngp (transforms.json) or "
                    "LLFF (poses_bounds.npy) dataset. Writes checkpoint.safetensors (+ config.json, a readable copy "
                    "of its header) and history.jsonl to --out, every --checkpoint-every seconds and at the end.")
    p.add_argument("data", help="dataset directory")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--preset", default="instant", choices=PRESETS, help="instant (default), vanilla or tiny")
    add_fit_arguments(p)
    p.add_argument("--background", default=None, choices=["white", "black", "random"],
                   help="background RGBA images are composited on (default: the preset's; random = random colour "
                        "per ray while training, white for evaluation)")
    p.add_argument("--seed", type=int, default=0)
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
    add_device_argument(e)
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_eval)

    r = verbs["render"].add_parser("nerf", help="render a fitted radiance field (orbit video)")
    r.add_argument("directory", type=Path, help="output directory of 'fit nerf'")
    r.add_argument("--orbit", action="store_true", help="camera orbit around the scene (the only camera path)")
    r.add_argument("--frames", type=int, default=60)
    r.add_argument("--fps", type=int, default=30)
    r.add_argument("--out", required=True, type=Path, help="video file: .mp4 (needs imageio-ffmpeg, else GIF) or .gif")
    r.add_argument("--data", default=None, help="dataset directory (default: the one fitted)")
    add_device_argument(r)
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_render)


def _fit(args: argparse.Namespace) -> int:
    from fieldcraft.data.scene import forward_facing
    from fieldcraft.tasks.nerf import fit, nerf_config

    config = nerf_config(args.preset, args.background, ndc=forward_facing(args.data), seed=args.seed)
    metrics = fit(config, args.data, args.out, budget_from_args(args), resume=args.resume, progress=not args.quiet,
                  device=device_from_args(args), given=tuple(args.given), overwrite=args.overwrite,
                  checkpoint_seconds=args.checkpoint_every)
    return report(args.out, metrics)


def _eval(args: argparse.Namespace) -> int:
    from fieldcraft.tasks.nerf import evaluate

    m = evaluate(args.directory, args.split, data_path=args.data, max_images=args.limit, progress=not args.quiet,
                 averaged=not args.last_weights, device=device_from_args(args))
    print(f"{args.split}: {m['views']} views, PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f} -> {m['directory']}")
    return 0


def _render(args: argparse.Namespace) -> int:
    from fieldcraft.errors import FieldcraftError
    from fieldcraft.tasks.nerf import render_orbit

    if not args.orbit:
        raise FieldcraftError("render nerf: choose a camera path (--orbit)")
    path = render_orbit(args.directory, args.out, frames=args.frames, fps=args.fps, data_path=args.data,
                        progress=not args.quiet, device=device_from_args(args))
    print(f"wrote {path}")
    return 0
