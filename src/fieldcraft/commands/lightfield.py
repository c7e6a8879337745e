"""``fieldcraft fit lightfield``, ``eval lightfield`` and ``render lightfield`` (see :mod:`fieldcraft.tasks.lightfield`)."""

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

PRESETS = ("relu", "pe", "fourier", "siren")  # fieldcraft.tasks.lightfield.PRESETS (registering imports no torch)


def register(verbs: dict[str, argparse._SubParsersAction]) -> None:
    p = verbs["fit"].add_parser(
        "lightfield", help="fit a light field network (ray -> colour) to posed images",
        description="Fit a light field network: the Plücker coordinates of a ray -> its colour, one network "
                    "evaluation per ray. Reads the datasets 'fit nerf' reads (Blender, nerfstudio, LLFF, COLMAP). "
                    "Writes checkpoint.safetensors (+ config.json) and history.jsonl to --out.")
    p.add_argument("data", help="dataset directory")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--preset", default="relu", choices=PRESETS,
                   help="encoding of the ray: relu (raw Plücker coordinates into a ReLU MLP, default), pe "
                        "(positional encoding), fourier (random Fourier features), siren (sine MLP)")
    add_fit_arguments(p)
    p.add_argument("--width", type=int, default=128, help="neurons per hidden layer (default 128)")
    p.add_argument("--layers", type=int, default=4, help="hidden layers (default 4)")
    p.add_argument("--frequencies", type=int, default=3, help="pe: octaves of the positional encoding (default 3)")
    p.add_argument("--rays", type=int, default=4096, help="rays per step (default 4096)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the preset's)")
    p.add_argument("--background", default="white", choices=["white", "black"],
                   help="colour RGBA images are composited on (default white)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--downscale", type=int, default=None, metavar="N",
                   help="shrink the images N times on load; eval and render read them the same way")
    p.add_argument("--skip-missing", action="store_true", help="drop frames whose image file is missing")
    p.set_defaults(func=_fit)

    e = verbs["eval"].add_parser("lightfield", help="render a split of the dataset with a light field and score it",
                                 description="Renders every view of --split to DIR/eval/<split>/ (dataset file names) "
                                             "and writes metrics.json (PSNR, SSIM, milliseconds per view and means).")
    e.add_argument("directory", type=Path, help="output directory of 'fit lightfield'")
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--data", default=None, help="dataset directory (default: the one fitted)")
    e.add_argument("--limit", type=int, default=None, help="only the first N views")
    add_device_argument(e)
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_eval)

    r = verbs["render"].add_parser("lightfield", help="render a fitted light field (orbit video)")
    r.add_argument("directory", type=Path, help="output directory of 'fit lightfield'")
    r.add_argument("--orbit", action="store_true", help="camera orbit around the scene (object scenes)")
    r.add_argument("--frames", type=int, default=60)
    r.add_argument("--fps", type=int, default=30)
    r.add_argument("--out", required=True, type=Path, help="video file: .mp4 (needs imageio-ffmpeg, else GIF) or .gif")
    r.add_argument("--data", default=None, help="dataset directory (default: the one fitted)")
    add_device_argument(r)
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_render)


def _fit(args: argparse.Namespace) -> int:
    from fieldcraft.tasks.lightfield import LightFieldConfig, fit

    config = LightFieldConfig(preset=args.preset, hidden_width=args.width, hidden_layers=args.layers,
                              n_frequencies=args.frequencies, rays=args.rays, lr=args.lr, background=args.background,
                              seed=args.seed)
    renamed = {"width": "hidden_width", "layers": "hidden_layers", "frequencies": "n_frequencies"}
    given = tuple(renamed.get(g, g) for g in args.given)
    metrics = fit(config, args.data, args.out, budget_from_args(args), resume=args.resume, progress=not args.quiet,
                  device=device_from_args(args), given=given, overwrite=args.overwrite,
                  checkpoint_seconds=args.checkpoint_every, downscale=args.downscale, skip_missing=args.skip_missing)
    return report(args.out, metrics)


def _eval(args: argparse.Namespace) -> int:
    from fieldcraft.tasks.lightfield import evaluate

    m = evaluate(args.directory, args.split, data_path=args.data, max_images=args.limit, progress=not args.quiet,
                 device=device_from_args(args))
    print(f"{args.split}: {m['views']} views, PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, "
          f"{m['ms_per_view']:.1f} ms a view -> {m['directory']}")
    return 0


def _render(args: argparse.Namespace) -> int:
    from fieldcraft.errors import FieldcraftError
    from fieldcraft.tasks.lightfield import render_orbit

    if not args.orbit:
        raise FieldcraftError("render lightfield: choose a camera path (--orbit)")
    path = render_orbit(args.directory, args.out, frames=args.frames, fps=args.fps, data_path=args.data,
                        progress=not args.quiet, device=device_from_args(args))
    print(f"wrote {path}")
    return 0
