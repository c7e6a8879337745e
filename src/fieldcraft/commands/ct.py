"""``fieldcraft fit ct`` and ``fieldcraft render ct``: sparse-view CT with a neural field."""

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


def register(verbs: dict[str, argparse._SubParsersAction]) -> None:
    p = verbs["fit"].add_parser(
        "ct", help="reconstruct a CT slice from a few projections (with FBP and SART baselines)",
        description="Fit a non-negative attenuation field to a sparse-view sinogram. SRC is 'sample:shepp-logan' "
                    "(simulated) or an APS data-exchange HDF5 file (e.g. ../shared/data/ct/tooth.h5). Writes "
                    "reconstruction.png (16-bit), reconstruction.npy, comparison.png, psnr_vs_time.png, "
                    "metrics.json and a checkpoint to --out. Default budget: 60 s of fitting time.")
    p.add_argument("source", metavar="SRC")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--views", type=int, default=20, help="number of projection angles used (default 20)")
    p.add_argument("--size", type=int, default=256, help="reconstruction size N (N x N pixels, N detector bins)")
    p.add_argument("--noise", type=float, default=None, metavar="PHOTONS",
                   help="Poisson noise with this many incident photons per detector bin (phantom only)")
    p.add_argument("--preset", default="hash", help="field preset: hash (default), dense, fourier")
    p.add_argument("--tv", type=float, default=None, help="total-variation weight (default 3e-4; 0 disables)")
    p.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate (default 3e-2 for hash and dense, 2e-3 for fourier)")
    p.add_argument("--slice", type=int, default=0, help="detector row of real data (default 0)")
    p.add_argument("--centre", type=float, default=None,
                   help="centre of rotation of real data in detector pixels, 0 = centre of the first pixel "
                        "(default: the one the file records, else estimated from opposite projections)")
    p.add_argument("--sart-iterations", type=int, default=10, help="SART passes of the baseline (default 10)")
    p.add_argument("--seed", type=int, default=0)
    add_fit_arguments(p)
    p.set_defaults(func=_fit)

    r = verbs["render"].add_parser("ct", help="render a fitted CT field at any size",
                                   description="Render the attenuation field of a 'fit ct' checkpoint to a 16-bit PNG "
                                               "(65535 = the image's maximum).")
    r.add_argument("directory", metavar="DIR", type=Path)
    r.add_argument("--size", type=int, default=None, help="output size (default: the fitted size)")
    r.add_argument("--out", default=None, type=Path, help="PNG path (default DIR/render_<size>.png)")
    add_device_argument(r)
    r.set_defaults(func=_render)


def _fit(args: argparse.Namespace) -> int:
    from fieldcraft.tasks import ct

    config = ct.CTTaskConfig(source=args.source, size=args.size, views=args.views, photons=args.noise,
                             row=args.slice, centre=args.centre, preset=args.preset, lr=args.lr,
                             field=ct.ct_field_config(args.preset, args.size, args.seed),
                             sart_iterations=args.sart_iterations, seed=args.seed)
    if args.tv is not None:
        config = config.replace(tv_weight=args.tv)
    metrics = ct.fit_ct(config, args.out, budget_from_args(args), resume=args.resume, progress=not args.quiet,
                        device=device_from_args(args), given=tuple(args.given), overwrite=args.overwrite,
                        checkpoint_seconds=args.checkpoint_every)
    return report(args.out, metrics)


def _render(args: argparse.Namespace) -> int:
    from fieldcraft.errors import check
    from fieldcraft.io.images import write_png
    from fieldcraft.tasks import ct

    field, cfg, scale = ct.load_fitted(args.directory, device_from_args(args))
    size = args.size or cfg.size
    check(size >= 1, f"--size must be positive, got {size}")
    # the field's values are attenuation per pixel of the fitted grid; per pixel of the new grid
    # they scale by fitted_size / size
    image = ct.render(field, size, scale * cfg.size / size)
    path = args.out or args.directory / f"render_{size}.png"
    vmax = float(image.max())
    write_png(path, image / (vmax if vmax > 0 else 1.0), bits=16)
    print(path)
    return 0
