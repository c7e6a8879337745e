"""``fieldcraft fit ct`` and ``fieldcraft render ct``: sparse-view CT with a neural field."""

from __future__ import annotations

import argparse

from fieldcraft.commands.common import add_budget_arguments


def register(verbs: dict[str, argparse._SubParsersAction]) -> None:
    p = verbs["fit"].add_parser(
        "ct", help="reconstruct a CT slice from a few projections (with FBP and SART baselines)",
        description="Fit a non-negative attenuation field to a sparse-view sinogram. SRC is 'sample:shepp-logan' "
                    "(simulated) or an APS data-exchange HDF5 file (e.g. ../shared/data/ct/tooth.h5). Writes "
                    "reconstruction.png (16-bit), comparison.png, psnr_vs_time.png, metrics.json and a checkpoint.")
    p.add_argument("source", metavar="SRC")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--views", type=int, default=20, help="number of projection angles used (default 20)")
    p.add_argument("--size", type=int, default=256, help="reconstruction size N (N x N pixels, N detector bins)")
    p.add_argument("--noise", type=float, default=None, metavar="PHOTONS",
                   help="Poisson noise with this many incident photons per detector bin (phantom only)")
    p.add_argument("--preset", default="hash", help="field preset: hash (default), dense, fourier")
    p.add_argument("--tv", type=float, default=None, help="total-variation weight (default 3e-4; 0 disables)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 3e-2 for hash and dense, 2e-3 for fourier)")
    p.add_argument("--slice", type=int, default=0, help="detector row of real data (default 0)")
    p.add_argument("--centre", type=float, default=295.5, help="centre of rotation of real data in pixels (295.5)")
    p.add_argument("--sart-iterations", type=int, default=10, help="SART passes of the baseline (default 10)")
    p.add_argument("--seed", type=int, default=0)
    add_budget_arguments(p)  # default: 60 s of fitting time
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_fit)

    r = verbs["render"].add_parser("ct", help="render a fitted CT field at any size",
                                   description="Render the attenuation field of a 'fit ct' checkpoint to a 16-bit PNG.")
    r.add_argument("directory", metavar="DIR")
    r.add_argument("--size", type=int, default=None, help="output size (default: the fitted size)")
    r.add_argument("--out", default=None, help="PNG path (default DIR/render_<size>.png)")
    r.set_defaults(func=_render)


def _fit(args: argparse.Namespace) -> int:
    import json

    from fieldcraft.errors import FieldcraftError
    from fieldcraft.tasks import ct

    if args.size < 8:
        raise FieldcraftError(f"--size must be >= 8, got {args.size}")
    seconds, steps = args.seconds, args.steps
    if seconds is None and steps is None:
        seconds = 60.0
    cfg = ct.CTTaskConfig()
    changes = {"source": args.source, "size": args.size, "views": args.views, "photons": args.noise,
               "row": args.slice, "centre": args.centre, "preset": args.preset,
               "sart_iterations": args.sart_iterations, "seed": args.seed,
               "field": ct.ct_field_config(args.preset, args.size, args.seed)}
    if args.tv is not None:
        changes["tv_weight"] = args.tv
    changes["lr"] = args.lr if args.lr is not None else ct.PRESET_LR.get(args.preset, cfg.lr)
    cfg = cfg.replace(**changes)
    result = ct.fit(cfg, args.out, steps=steps, seconds=seconds, resume=args.resume, progress=not args.quiet)
    m = result.metrics
    print(json.dumps({k: m[k] for k in ("fbp", "sart", "field")}, indent=None))
    return 0


def _render(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fieldcraft.tasks import ct

    field, cfg, scale = ct.load_fitted(args.directory)
    size = args.size or cfg.size
    # the field's values are attenuation per pixel of the fitted grid; per pixel of the new grid
    # they scale by fitted_size / size
    image = ct.render(field, size, scale * cfg.size / size)
    path = Path(args.out) if args.out else Path(args.directory) / f"render_{size}.png"
    ct.write_png16(path, image, float(image.max()) if image.max() > 0 else 1.0)
    print(path)
    return 0
