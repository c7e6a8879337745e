"""``fieldcraft compress``, ``fieldcraft decompress`` (top-level commands) and ``fieldcraft eval codec``."""

from __future__ import annotations

import argparse
from pathlib import Path

from fieldcraft.commands.common import add_budget_arguments, add_device_argument, device_from_args

DEFAULT_RATES = (0.15, 0.3, 0.5, 1.0)


def register(verbs: dict) -> None:
    from fieldcraft.cli import TOP_LEVEL

    top = verbs[TOP_LEVEL]
    c = top.add_parser("compress", help="compress an image into a .fcz file (neural codec)",
                       description="Fit a neural codec to an image and write the compressed file (docs/codec.md).")
    c.add_argument("source", help="image file (PNG/JPEG/TIFF) or sample:NAME")
    c.add_argument("--out", required=True, type=Path, help=".fcz file to write")
    rate = c.add_mutually_exclusive_group(required=True)
    rate.add_argument("--bpp", type=float, default=None, help="target rate in bits per pixel (within 3%%)")
    rate.add_argument("--lambda", dest="lam", type=float, default=None,
                      help="rate-distortion trade-off: minimise MSE + LAMBDA * bpp")
    c.add_argument("--preset", default="latent", help="latent (default, Cool-chic-like) or coin (SIREN, float16)")
    add_budget_arguments(c)
    c.add_argument("--seed", type=int, default=0)
    add_device_argument(c)
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=_compress)

    d = top.add_parser("decompress", help="decode a .fcz file to a PNG",
                       description="Decode a .fcz file to an 8-bit PNG (no PyTorch needed).")
    d.add_argument("source", type=Path, help=".fcz file")
    d.add_argument("--out", required=True, type=Path, help="PNG to write")
    d.set_defaults(func=_decompress, uses_torch=False)

    e = verbs["eval"].add_parser("codec", help="rate-distortion curves of fieldcraft and reference codecs",
                                 description="PSNR against bpp for the fieldcraft codec and JPEG, WebP, JPEG 2000, "
                                             "AVIF (those Pillow provides): table, rd.json and rd.png in --out.")
    e.add_argument("images", nargs="+", help="image files")
    e.add_argument("--out", required=True, type=Path, help="output directory")
    e.add_argument("--rates", default=",".join(str(r) for r in DEFAULT_RATES),
                   help="fieldcraft target rates in bpp, comma-separated (default 0.15,0.3,0.5,1.0)")
    e.add_argument("--codecs", default=None, help="reference codecs, comma-separated (default: all available)")
    e.add_argument("--preset", default="latent")
    add_budget_arguments(e)
    e.add_argument("--seed", type=int, default=0)
    add_device_argument(e)
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=_eval)


def _compress(args: argparse.Namespace) -> int:
    import json

    from fieldcraft.codec import compress
    from fieldcraft.data.images import load_image
    from fieldcraft.io.checkpoint import atomic_write_bytes
    from fieldcraft.io.records import finite

    pixels = load_image(args.source).pixels
    data, figures = compress(pixels, bpp=args.bpp, lam=args.lam, preset=args.preset, seconds=args.seconds,
                             steps=args.steps, seed=args.seed, progress=not args.quiet,
                             device=device_from_args(args))
    atomic_write_bytes(args.out, data)
    print(json.dumps(finite({k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()})))
    print(f"wrote {args.out} ({figures['bytes']} bytes, {figures['bpp']:.4f} bpp)")
    return 130 if figures.get("stopped") else 0


def _decompress(args: argparse.Namespace) -> int:
    import time

    from fieldcraft.codec import decompress
    from fieldcraft.io.checkpoint import atomic_write_bytes
    from fieldcraft.io.images import encode_png

    t0 = time.perf_counter()
    codes = decompress(args.source)
    seconds = time.perf_counter() - t0
    atomic_write_bytes(args.out, encode_png(codes))
    h, w, c = codes.shape
    print(f"wrote {args.out} ({w}x{h}, {c} channels; decoded in {seconds:.2f} s)")
    return 0


def parse_rates(text: str) -> list[float]:
    from fieldcraft.errors import FieldcraftError

    try:
        rates = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise FieldcraftError(f"--rates {text!r}: expected comma-separated numbers") from None
    if not rates or any(not 0 < r <= 24 for r in rates):
        raise FieldcraftError(f"--rates {text!r}: rates must be in (0, 24]")
    return rates


def _eval(args: argparse.Namespace) -> int:
    from fieldcraft.codec.evaluate import evaluate_codecs

    codecs = None if args.codecs is None else [c.strip() for c in args.codecs.split(",") if c.strip()]
    evaluate_codecs(args.images, args.out, rates=parse_rates(args.rates), codecs=codecs, preset=args.preset,
                    seconds=args.seconds, steps=args.steps, seed=args.seed, progress=not args.quiet,
                    device=device_from_args(args))
    return 0
