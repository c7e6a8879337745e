"""``fieldcraft fit images``: one field per image of a dataset, fitted in batches."""

from __future__ import annotations

import argparse
from pathlib import Path

from fieldcraft.commands.common import add_fit_arguments, budget_from_args, device_from_args, report

PRESETS = ("siren", "siren-small", "siren-wide")  # fieldcraft.tasks.images.PRESETS (kept torch-free here)


def register(verbs: dict[str, argparse._SubParsersAction]) -> None:
    p = verbs["fit"].add_parser(
        "images", help="fit one small field per image of a dataset, all at once",
        description="Fit one field per image (batched weights, chunks of --batch-images images); writes "
                    "reconstructions/<name>.png (16-bit), metrics.json (per-image and mean PSNR), mosaic.png, "
                    "chunks/NNNNN.weights.safetensors and the checkpoint to --out.")
    p.add_argument("source", help="directory of images, .npy/.npz [N,H,W(,C)], IDX file (*-images-idx3-ubyte[.gz]) "
                                  "or sample:digits|mnist-5k|lfw")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--preset", default="siren", choices=PRESETS,
                   help="per-image field: siren (3x32 sine layers, default), siren-small (2x24), siren-wide (3x64)")
    add_fit_arguments(p)
    p.add_argument("--limit", type=int, default=None, help="fit only the first K images")
    p.add_argument("--batch-images", type=int, default=None, metavar="B",
                   help="images fitted at once (a chunk; memory grows with it); default: about 2^20 pixels' worth")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 5e-3, cosine-decayed to 0.1x)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_fit)


def _fit(args: argparse.Namespace) -> int:
    from fieldcraft.tasks.images import DEFAULT_LR, ImagesFitConfig, fit_images

    config = ImagesFitConfig(source=args.source, limit=args.limit, preset=args.preset, batch_images=args.batch_images,
                             lr=args.lr if args.lr is not None else DEFAULT_LR, seed=args.seed)
    metrics = fit_images(config, args.out, budget_from_args(args), resume=args.resume, progress=not args.quiet,
                         device=device_from_args(args), given=tuple(args.given), overwrite=args.overwrite,
                         checkpoint_seconds=args.checkpoint_every)
    return report(args.out, metrics)
