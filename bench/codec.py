"""Rate-distortion of the fieldcraft codec against JPEG, WebP, JPEG 2000 and AVIF on Kodak.

Usage::

    python bench/codec.py [--images kodim04,kodim01] [--rates 0.15,0.3,0.5,1.0] [--seconds 140 | --steps N]
                          [--preset latent] [--json bench/results/codec_kodak.json]

Reads the twelve Kodak PNGs in ``../shared/data/images/kodak`` (checked against its ``SHA256SUMS``),
encodes each at each target rate with ``fieldcraft.codec.compress`` and decodes the file, sweeps the
reference codecs through Pillow (:mod:`fieldcraft.codec.baselines`), and reports per rate the mean
achieved bpp and PSNR, each reference codec's PSNR at the bpp fieldcraft achieved on the same image
(linear interpolation in log-bpp between the bracketing sweep points), the gain over JPEG, the mean
encode and decode seconds, and BD-rates against JPEG. A full run is 12 images x 4 rates x the
encode budget; ``--images`` / ``--rates`` / ``--seconds`` / ``--steps`` make shorter ones.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import tempfile
from pathlib import Path

from fieldcraft.runtime import configure_cpu_defaults

configure_cpu_defaults()

HERE = Path(__file__).resolve().parent
KODAK = Path(os.environ.get("FIELDCRAFT_SHARED_DATA", HERE.parent.parent / "shared" / "data")) / "images" / "kodak"


def kodak_images(names: list[str] | None) -> list[Path]:
    sums = KODAK / "SHA256SUMS"
    if not sums.exists():
        sys.exit(f"bench/codec.py: {sums} not found (the Kodak images live in ../shared/data/images/kodak)")
    expected = dict(reversed(line.split()) for line in sums.read_text().splitlines() if line.strip())
    chosen = sorted(expected) if not names else [n if n.endswith(".png") else f"{n}.png" for n in names]
    paths = []
    for name in chosen:
        path = KODAK / name
        if name not in expected or not path.exists():
            sys.exit(f"bench/codec.py: {path}: not one of the checked Kodak images")
        if hashlib.sha256(path.read_bytes()).hexdigest() != expected[name]:
            sys.exit(f"bench/codec.py: {path}: SHA256 mismatch")
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=None, help="comma-separated names (default: all twelve)")
    parser.add_argument("--rates", default="0.15,0.3,0.5,1.0")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--seconds", type=float, default=None, help="encode budget per image and rate "
                        "(default: the codec's, 160 s)")
    budget.add_argument("--steps", type=int, default=None)
    parser.add_argument("--preset", default="latent")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "codec_kodak.json")
    parser.add_argument("--out", type=Path, default=None, help="directory to keep the .fcz files, rd.json and "
                        "rd.png in (default: a temporary directory, removed at the end)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()

    import torch

    from fieldcraft.codec.evaluate import evaluate_codecs
    from fieldcraft.commands.codec import parse_rates
    from fieldcraft.io.records import write_json
    from fieldcraft.runtime import set_threads

    threads = set_threads()
    images = kodak_images(None if args.images is None else args.images.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        result = evaluate_codecs([str(p) for p in images], args.out or Path(tmp), rates=parse_rates(args.rates),
                                 preset=args.preset, seconds=args.seconds, steps=args.steps,
                                 progress=not args.quiet)
    result["machine"] = {"threads": threads, "torch": torch.__version__, "processor": platform.processor(),
                         "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg())}
    result["command"] = " ".join(["python", *sys.argv])
    write_json(args.json, result)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
