"""Image-fitting benchmark: every preset on sample:camera (256x256 gray) and the
every-other-pixel protocol (Tancik et al. 2020) on astronaut, coffee and chelsea.

Camera figures per preset: seconds of fitting time to 30 dB, PSNR at 500 steps, at 10 s and
at 30 s of fitting time, steps per second. The PSNR at a given step/time is the full-image
training PSNR logged by the loop (all 65,536 pixels are fitted every step, so it is the PSNR
of the float field output on the whole image); the final PSNR is measured on the 16-bit PNGs.

Protocol figures: PSNR on the held-out 3/4 of the 512x512 pixels (the headline), beside the same
pixels predicted by bicubic interpolation of the fitted 1/4, and on all pixels, after a
fitting-time budget per run (--protocol-seconds).

    python bench/image_fit.py [--presets hash siren] [--protocol-seconds 60] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fieldcraft.fields.presets import IMAGE_PRESETS
from fieldcraft.runtime import set_threads
from fieldcraft.tasks.image import ImageFitConfig, fit_image, seconds_to
from fieldcraft.train import Budget, History


def at(history: History, *, step: int | None = None, seconds: float | None = None) -> float | None:
    """Logged PSNR at the last record with step <= ``step`` or fitting time <= ``seconds``."""
    best = None
    for s, t, v in zip(history.steps, history.seconds, history.values):
        if (step is not None and s <= step) or (seconds is not None and t <= seconds):
            best = v.get("psnr")
    return best


def camera_runs(presets: list[str], work: Path, steps: int, seconds: float) -> list[dict]:
    rows = []
    for preset in presets:
        out = work / f"camera_{preset}"
        cfg = ImageFitConfig(source="sample:camera", size=256, preset=preset)
        t0 = time.perf_counter()
        m = fit_image(cfg, out, Budget(seconds=seconds), progress=False)
        if m["steps"] < steps:
            m = fit_image(cfg, out, Budget(steps=steps), resume=True, progress=False)
        hist = History.load(out / "history.jsonl")
        row = {
            "preset": preset,
            "seconds_to_30db": seconds_to(hist, 30.0),
            f"psnr_at_{steps}_steps": at(hist, step=steps),
            "psnr_at_10s": at(hist, seconds=10.0),
            f"psnr_at_{seconds:g}s": at(hist, seconds=seconds),
            "steps_per_second": hist.steps[-1] / hist.seconds[-1],
            "final_steps": m["steps"],
            "final_psnr_png": m["psnr"],
            "wall_seconds": time.perf_counter() - t0,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def protocol_runs(presets: list[str], work: Path, seconds: float) -> list[dict]:
    rows = []
    for image in ("astronaut", "coffee", "chelsea"):
        for color in ("gray", "rgb"):
            for preset in presets:
                src = f"sample:{image}"
                if color == "gray":
                    src = _gray_copy(image, work)
                out = work / f"eop_{image}_{color}_{preset}"
                cfg = ImageFitConfig(source=src, preset=preset, protocol="every-other-pixel")
                m = fit_image(cfg, out, Budget(seconds=seconds), progress=False)
                row = {"image": image, "color": color, "preset": preset, "psnr_heldout": m["psnr_heldout"],
                       "psnr_heldout_cubic": m["psnr_heldout_cubic"], "psnr_all": m["psnr_all"],
                       "psnr_train": m["psnr_train"], "steps": m["steps"], "fit_seconds": m["fit_seconds"]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def _gray_copy(name: str, work: Path) -> str:
    """Write the luminance (skimage rgb2gray: 0.2125 R + 0.7154 G + 0.0721 B) as a 16-bit PNG."""
    import skimage.data
    from skimage.color import rgb2gray

    from fieldcraft.io.images import write_png

    path = work / f"{name}_gray.png"
    if not path.exists():
        write_png(path, rgb2gray(getattr(skimage.data, name)()), bits=16)
    return str(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=list(IMAGE_PRESETS))
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--protocol-seconds", type=float, default=60.0)
    ap.add_argument("--skip-camera", action="store_true")
    ap.add_argument("--skip-protocol", action="store_true")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "image_fit.json")
    args = ap.parse_args()
    threads = set_threads()
    results: dict = {"threads": threads, "camera": [], "every_other_pixel": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_camera:
            results["camera"] = camera_runs(args.presets, work, args.steps, args.seconds)
        if not args.skip_protocol:
            results["every_other_pixel"] = protocol_runs(args.presets, work, args.protocol_seconds)
    print(f"\nthreads: {threads}")
    if results["camera"]:
        print("\nsample:camera 256x256 gray")
        print(f"{'preset':10s} {'s to 30dB':>10s} {'@500 steps':>11s} {'@10s':>7s} {'@30s':>7s} {'steps/s':>8s}")
        for r in results["camera"]:
            print(f"{r['preset']:10s} {_f(r['seconds_to_30db'])} {_f(r[f'psnr_at_{args.steps}_steps'], 11)} "
                  f"{_f(r['psnr_at_10s'], 7)} {_f(r[f'psnr_at_{args.seconds:g}s'], 7)} {r['steps_per_second']:8.2f}")
    if results["every_other_pixel"]:
        print("\nevery-other-pixel protocol (PSNR on the held-out pixels; bicubic from the fitted pixels)")
        for r in results["every_other_pixel"]:
            print(f"{r['image']:10s} {r['color']:5s} {r['preset']:8s} {r['psnr_heldout']:7.2f} "
                  f"(bicubic {r['psnr_heldout_cubic']:.2f}, all pixels {r['psnr_all']:.2f})")
        for preset in args.presets:
            vals = [r["psnr_heldout"] for r in results["every_other_pixel"] if r["preset"] == preset and r["color"] == "gray"]
            if vals:
                print(f"mean gray held-out {preset:8s}: {sum(vals) / len(vals):.2f} dB")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {args.json}")
    return 0


def _f(v, w: int = 10) -> str:
    return f"{v:{w}.2f}" if isinstance(v, (int, float)) and v is not None else f"{'-':>{w}s}"


if __name__ == "__main__":
    sys.exit(main())
