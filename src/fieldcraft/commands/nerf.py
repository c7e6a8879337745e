"""``fieldcraft fit nerf``, ``eval nerf`` and ``render nerf`` (see :mod:`fieldcraft.tasks.nerf`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fieldcraft.commands.common import add_budget_arguments

PRESETS = ("instant", "vanilla", "tiny")


def register(verbs: dict[str, argparse._SubParsersAction]) -> None:
    p = verbs["fit"].add_parser(
        "nerf", help="fit a radiance field to posed images",
        description="Fit a NeRF to a Blender (transforms_*.json), nerfstudio/instant-ngp (transforms.json) or "
                    "LLFF (poses_bounds.npy) dataset. Writes checkpoint.safetensors + config.json to --out "
                    "(atomically, every --checkpoint-seconds and at the end).")
    p.add_argument("data", help="dataset directory")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--preset", default="instant", choices=PRESETS, help="instant (default), vanilla or tiny")
    add_budget_arguments(p)
    p.add_argument("--background", default=None, choices=["white", "black", "random"],
                   help="background RGBA images are composited on (default: the preset's; random = random colour "
                        "per ray while training, white for evaluation)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-seconds", type=float, default=60.0, help="wall seconds between checkpoints")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_fit)

    e = verbs["eval"].add_parser("nerf", help="render a split of the dataset and score it",
                                 description="Renders every view of --split to DIR/eval/<split>/ (dataset file names, "
                                             "depth maps in depth/) and writes metrics.json (PSNR, SSIM).")
    e.add_argument("directory", type=Path, help="output directory of 'fit nerf'")
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--data", default=None, help="dataset directory (default: the one fitted)")
    e.add_argument("--limit", type=int, default=None, help="only the first N views")
    e.add_argument("--last-weights", action="store_true",
                   help="evaluate the last step's weights, not their running average (runs with ema_decay > 0)")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=_eval)

    r = verbs["render"].add_parser("nerf", help="render a fitted radiance field (orbit video)")
    r.add_argument("directory", type=Path, help="output directory of 'fit nerf'")
    r.add_argument("--orbit", action="store_true", help="camera orbit around the scene (the only path so far)")
    r.add_argument("--frames", type=int, default=60)
    r.add_argument("--fps", type=int, default=30)
    r.add_argument("--out", required=True, type=Path, help="video file: .mp4 (needs imageio-ffmpeg, else GIF) or .gif")
    r.add_argument("--data", default=None, help="dataset directory (default: the one fitted)")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=_render)


def _fit(args: argparse.Namespace) -> int:
    from fieldcraft.errors import FieldcraftError
    from fieldcraft.tasks import nerf

    steps, seconds = args.steps, args.seconds
    if steps is None and seconds is None and not args.resume:
        raise FieldcraftError("give a budget: --steps N or --seconds S")
    if args.resume and steps is None and seconds is None:
        from fieldcraft.io.checkpoint import load_checkpoint

        budget = load_checkpoint(args.out)[1].get("budget", {})
        steps, seconds = budget.get("steps"), budget.get("seconds")
    summary = nerf.fit(args.data, args.out, args.preset, steps=steps, seconds=seconds, background=args.background,
                       resume=args.resume, seed=args.seed, checkpoint_seconds=args.checkpoint_seconds,
                       progress=not args.quiet)
    print(json.dumps(summary))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from fieldcraft.tasks import nerf

    m = nerf.evaluate(args.directory, args.split, data_path=args.data, max_images=args.limit, progress=not args.quiet,
                      averaged=not args.last_weights)
    print(f"{args.split}: {m['views']} views, PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f} "
          f"-> {m['directory']}")
    return 0


def _render(args: argparse.Namespace) -> int:
    from fieldcraft.errors import FieldcraftError
    from fieldcraft.tasks import nerf

    if not args.orbit:
        raise FieldcraftError("render nerf: choose a camera path (--orbit)")
    path = nerf.render_orbit(args.directory, args.out, frames=args.frames, fps=args.fps, data_path=args.data,
                             progress=not args.quiet)
    print(f"wrote {path}")
    return 0
