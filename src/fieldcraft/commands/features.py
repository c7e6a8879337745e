"""``fieldcraft extract features``, ``fit features``, ``render features`` and ``eval features``:
feature fields distilled into a fitted NeRF run (see :mod:`fieldcraft.tasks.nerf.features`)."""

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

EXTRACTORS = ("patch-pca", "daisy")  # fieldcraft.tasks.nerf.features.EXTRACTORS (registering imports no torch)


def register(verbs: dict[str, argparse._SubParsersAction]) -> None:
    x = verbs["extract"].add_parser(
        "features", help="write demo feature maps (.npy) for a dataset's images",
        description="Writes one feature map per image of --split, OUT/<image name>.npy (float16 [height, width, "
                    "dim]): descriptors of the images composited on white (patch-pca: the CIELAB colour patch around "
                    "each pixel; daisy: scikit-image's DAISY) projected on their first --dim principal directions, "
                    "fitted on the dataset's training images (their objects' pixels when they have alpha; every "
                    "split shares one basis). Also "
                    "OUT/features.json.")
    x.add_argument("data", help="dataset directory")
    x.add_argument("--out", required=True, type=Path, help="directory for the .npy files")
    x.add_argument("--method", default="patch-pca", choices=EXTRACTORS)
    x.add_argument("--dim", type=int, default=16, help="channels of the maps (default 16)")
    x.add_argument("--split", default="train", choices=["train", "val", "test"])
    x.add_argument("--patch", type=int, default=5, help="patch-pca: odd patch size in pixels (default 5)")
    x.add_argument("--radius", type=int, default=8, help="daisy: radius in pixels (default 8)")
    x.add_argument("--seed", type=int, default=0, help="seeds the pixels the PCA is fitted on")
    x.add_argument("--overwrite", action="store_true", help="replace the maps in an --out that holds some")
    x.add_argument("--quiet", action="store_true", help="no progress bar")
    x.set_defaults(func=_extract, uses_torch=True)

    p = verbs["fit"].add_parser(
        "features", help="distil 2-D feature maps into a 3-D feature field of a fitted NeRF",
        description="Fits a feature field (its own hash grid + MLP) rendered with the frozen NeRF's sample weights "
                    "to the feature maps DIR/<image name>.npy of the run's training images ([h, w, C] .npy, any "
                    "size and C; resized to the image). Writes RUN/features/ (checkpoint.safetensors, "
                    "config.json, history.jsonl). The NeRF must use the occupancy sampler (presets instant, tensorf, "
                    "nerfacto, plenoxels).")
    p.add_argument("run", type=Path, help="output directory of 'fit nerf'")
    p.add_argument("--features", type=Path, default=None, metavar="DIR",
                   help="directory of the feature maps (with --resume: default the stored one)")
    add_fit_arguments(p)
    p.add_argument("--rays", type=int, default=2048, help="training pixels a step (default 2048)")
    p.add_argument("--lr", type=float, default=1e-2, help="learning rate (default 1e-2, decaying to 0.1x)")
    p.add_argument("--width", type=int, default=64, help="neurons per hidden layer (default 64)")
    p.add_argument("--layers", type=int, default=1, help="hidden layers (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_fit)

    r = verbs["render"].add_parser(
        "features", help="render a NeRF with its feature field: feature pictures, 3-D selection, edits",
        description="Renders views (--orbit or a dataset --split) to OUT/rgb/, the feature maps as RGB (PCA of the "
                    "training maps) to OUT/features/, and with a query the selection's opacity to OUT/selection/; "
                    "--edit removes or recolours the selection. The selection: every point whose feature has "
                    "cosine similarity >= --threshold with the query.")
    r.add_argument("run", type=Path, help="output directory of 'fit nerf' holding 'fit features' output")
    r.add_argument("--out", required=True, type=Path, help="output directory")
    views = r.add_mutually_exclusive_group(required=True)
    views.add_argument("--orbit", action="store_true", help="a camera orbit around the scene (also OUT/orbit.mp4)")
    views.add_argument("--split", choices=["train", "val", "test"], default=None, help="the views of a dataset split")
    r.add_argument("--frames", type=int, default=30, help="orbit frames (default 30)")
    r.add_argument("--fps", type=int, default=15, help="orbit video frames a second (default 15)")
    r.add_argument("--limit", type=int, default=None, help="with --split: only the first N views")
    query = r.add_mutually_exclusive_group()
    query.add_argument("--select-pixel", default=None, metavar="VIEW,X,Y",
                       help="query by the rendered feature of pixel column X, row Y of training view VIEW "
                            "(0-based index or image name)")
    query.add_argument("--select-feature", type=Path, default=None, metavar="FILE.npy",
                       help="query by feature vectors: [C] or [k, C] in a .npy file")
    r.add_argument("--threshold", type=float, default=0.9,
                   help="cosine similarity a point's feature needs to be selected (default 0.9)")
    r.add_argument("--edit", default=None, metavar="remove|recolour:R,G,B",
                   help="remove the selection (density 0) or recolour it (R, G, B in [0, 1])")
    r.add_argument("--data", default=None, help="dataset directory (default: the one fitted)")
    add_device_argument(r)
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_render)

    e = verbs["eval"].add_parser(
        "features", help="score a feature field's rendered maps against held-out feature maps",
        description="Renders the feature maps of --split's views and compares them with DIR/<image name>.npy: "
                    "MSE, MSE relative to the maps' variance, cosine similarity. Writes "
                    "RUN/features/eval/<split>/ (target | rendered pictures, metrics.json).")
    e.add_argument("run", type=Path, help="output directory of 'fit nerf' holding 'fit features' output")
    e.add_argument("--features", type=Path, required=True, metavar="DIR", help="feature maps of the split's images")
    e.add_argument("--split", default="val", choices=["train", "val", "test"])
    e.add_argument("--data", default=None, help="dataset directory (default: the one fitted)")
    e.add_argument("--limit", type=int, default=None, help="only the first N views")
    add_device_argument(e)
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_eval)


def _extract(args: argparse.Namespace) -> int:
    from fieldcraft.tasks.nerf.features import extract_features

    record = extract_features(args.data, args.out, args.method, args.dim, split=args.split, patch=args.patch,
                              radius=args.radius, seed=args.seed, overwrite=args.overwrite, progress=not args.quiet)
    print(f"{record['views']} {args.split} feature maps ({args.method}, {record['dim']} channels, "
          f"{100 * record['explained_variance']:.1f}% of the descriptors' variance) -> {args.out}")
    return 0


def _fit(args: argparse.Namespace) -> int:
    from fieldcraft.tasks.nerf.features import FeatureFieldConfig, fit_features

    config = FeatureFieldConfig(rays=args.rays, lr=args.lr, hidden_width=args.width, hidden_layers=args.layers,
                                seed=args.seed)
    renamed = {"width": "hidden_width", "layers": "hidden_layers"}
    summary = fit_features(args.run, args.features, budget_from_args(args), config, resume=args.resume,
                           progress=not args.quiet, device=device_from_args(args),
                           given=tuple(renamed.get(g, g) for g in args.given), overwrite=args.overwrite,
                           checkpoint_seconds=args.checkpoint_every)
    return report(Path(summary["out"]), summary)


def _render(args: argparse.Namespace) -> int:
    from fieldcraft.tasks.nerf.features import render_features

    record = render_features(args.run, args.out, frames=args.frames if args.orbit else None, split=args.split,
                             limit=args.limit, pixel=args.select_pixel, feature=args.select_feature,
                             threshold=args.threshold, edit=args.edit, data_path=args.data, fps=args.fps,
                             progress=not args.quiet, device=device_from_args(args))
    print(f"{record['views']} views -> {record['directory']}" + (f" (video {record['video']})"
                                                                   if "video" in record else ""))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from fieldcraft.tasks.nerf.features import evaluate_features

    m = evaluate_features(args.run, args.features, args.split, data_path=args.data, limit=args.limit,
                          progress=not args.quiet, device=device_from_args(args))
    print(f"{args.split}: {m['views']} views, feature MSE {m['mse']:.4g} ({m['relative_mse']:.3f} of the maps' "
          f"variance), cosine {m['cosine']:.3f} -> {m['directory']}")
    return 0
