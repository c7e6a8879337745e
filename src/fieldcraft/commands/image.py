"""``fieldcraft fit image``, ``fit image-gradients``, ``fit blend`` and ``render image``."""

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
    from fieldcraft.fields.presets import DEFAULT_IMAGE_PRESET, IMAGE_PRESETS

    p = verbs["fit"].add_parser("image", help="fit a field to an image",
                                description="Fit an image field; writes checkpoint, target.png, reconstruction.png "
                                            "(16-bit), metrics.json and psnr_curve.png to --out.")
    p.add_argument("source", help="image file (PNG/JPEG/TIFF) or sample:NAME (scikit-image: camera, astronaut, ...)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--preset", default=DEFAULT_IMAGE_PRESET, help=f"field preset: {', '.join(IMAGE_PRESETS)}")
    add_fit_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=None, help="resize the longer side to N pixels (anti-aliased)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the preset's)")
    p.add_argument("--train-fraction", type=float, default=1.0, help="fit a random fraction of pixels, test on the rest")
    p.add_argument("--mask", default=None, help="PNG: non-zero pixels are fitted, zero pixels held out")
    p.add_argument("--protocol", default="all", choices=["all", "every-other-pixel"],
                   help="every-other-pixel: 512x512 image, fit the 256x256 even pixels, test on all")
    p.add_argument("--batch-size", type=int, default=1 << 18, help="pixels per step (default 262144)")
    p.set_defaults(func=_fit)

    g = verbs["fit"].add_parser("image-gradients", help="fit an image from its gradients only (Poisson)",
                                description="Fit a field whose spatial gradient matches the image's (SIREN, sec. 4.1).")
    g.add_argument("source")
    g.add_argument("--out", required=True, type=Path)
    g.add_argument("--preset", default="siren")
    add_fit_arguments(g)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--size", type=int, default=None)
    g.add_argument("--lr", type=float, default=None)
    g.set_defaults(func=_fit_gradients)

    b = verbs["fit"].add_parser("blend", help="blend two images in the gradient domain",
                                description="Fit a field to the weighted composite of two images' gradients "
                                            "(w * grad A + (1 - w) * grad B), SIREN-style Poisson blending.")
    b.add_argument("source_a")
    b.add_argument("source_b")
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--weight", type=float, default=0.5, help="constant weight w of image A")
    b.add_argument("--mask", default=None, help="PNG weight map for A (white = A, black = B); overrides --weight")
    b.add_argument("--preset", default="siren")
    add_fit_arguments(b)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--size", type=int, default=256)
    b.add_argument("--lr", type=float, default=None)
    b.set_defaults(func=_fit_blend)

    r = verbs["render"].add_parser("image", help="render a fitted image field at any resolution")
    r.add_argument("directory", type=Path, help="output directory of 'fit image'")
    r.add_argument("--width", type=int, default=None)
    r.add_argument("--height", type=int, default=None)
    r.add_argument("--out", required=True, type=Path, help="PNG to write")
    r.add_argument("--derivative", choices=["grad", "laplace"], default=None,
                   help="render |grad f| or the Laplacian (autograd) instead of the values")
    r.add_argument("--bits", type=int, choices=[8, 16], default=16)
    add_device_argument(r)
    r.set_defaults(func=_render)


def _fit(args: argparse.Namespace) -> int:
    from fieldcraft.tasks.image import ImageFitConfig, fit_image

    config = ImageFitConfig(source=args.source, preset=args.preset, size=args.size, seed=args.seed, lr=args.lr,
                            train_fraction=args.train_fraction, mask=args.mask, protocol=args.protocol,
                            batch_size=args.batch_size)
    metrics = fit_image(config, args.out, budget_from_args(args), resume=args.resume, progress=not args.quiet,
                        device=device_from_args(args), given=tuple(args.given), overwrite=args.overwrite,
                        checkpoint_seconds=args.checkpoint_every)
    return report(args.out, metrics)


def _fit_gradients(args: argparse.Namespace) -> int:
    from fieldcraft.tasks.gradient_domain import GradientFitConfig, fit_gradients

    config = GradientFitConfig(sources=(args.source,), preset=args.preset, size=args.size, seed=args.seed, lr=args.lr)
    metrics = fit_gradients(config, args.out, budget_from_args(args), resume=args.resume, progress=not args.quiet,
                            device=device_from_args(args), given=tuple(args.given), overwrite=args.overwrite,
                            checkpoint_seconds=args.checkpoint_every)
    return report(args.out, metrics)


def _fit_blend(args: argparse.Namespace) -> int:
    from fieldcraft.tasks.gradient_domain import GradientFitConfig, fit_gradients

    config = GradientFitConfig(sources=(args.source_a, args.source_b), weight=args.weight, mask=args.mask,
                               preset=args.preset, size=args.size, seed=args.seed, lr=args.lr)
    metrics = fit_gradients(config, args.out, budget_from_args(args), resume=args.resume, progress=not args.quiet,
                            device=device_from_args(args), given=tuple(args.given), overwrite=args.overwrite,
                            checkpoint_seconds=args.checkpoint_every)
    return report(args.out, metrics)


def _render(args: argparse.Namespace) -> int:
    import numpy as np

    from fieldcraft.errors import check
    from fieldcraft.io.images import write_png
    from fieldcraft.tasks.image import load_image_field, render_derivative, render_field

    field, meta = load_image_field(args.directory, device_from_args(args))
    h0, w0 = meta["image"]["height"], meta["image"]["width"]
    width = args.width or (round(w0 * args.height / h0) if args.height else w0)
    height = args.height or round(h0 * width / w0)
    check(width > 0 and height > 0, f"--width and --height must be positive, got {width}x{height}")
    if args.derivative is None:
        img = render_field(field, height, width)
        offset = meta.get("offset")
        if offset is not None:  # gradient-domain fits are defined up to a constant
            img = img + np.asarray(offset, np.float32)
    else:
        d = render_derivative(field, height, width, args.derivative)
        if args.derivative == "grad":
            img = d / max(float(d.max()), 1e-12)
        else:
            img = 0.5 + 0.5 * d / max(float(np.abs(d).max()), 1e-12)
    write_png(args.out, img, bits=args.bits)
    print(f"wrote {args.out} ({width}x{height})")
    return 0
