"""Rate-distortion evaluation: the fieldcraft codec at a few target rates against the reference codecs'
sweeps (:mod:`fieldcraft.codec.baselines`), per image and on average.

Outputs in the chosen directory: ``rd.json`` (every point, per image and codec, plus the summary),
``rd.png`` (mean PSNR against bpp), ``files/<image>_<rate>.fcz``, and a table on stdout.
Summary per target rate: mean achieved bpp and PSNR of fieldcraft, mean PSNR of each reference codec
*at the bpp fieldcraft achieved on that image* (log-rate interpolation, :func:`baselines.psnr_at`),
and fieldcraft's mean gain over JPEG; per codec its mean BD-rate against JPEG.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from fieldcraft.codec import baselines
from fieldcraft.errors import FieldcraftError


def _mean(values) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


def evaluate_codecs(images: list[str], out: Path, *, rates: list[float], codecs: list[str] | None = None,
                    preset: str = "latent", seconds: float | None = None, steps: int | None = None, seed: int = 0,
                    progress: bool = True, device: str = "cpu", printer=print) -> dict:
    from fieldcraft.codec import compress, decode
    from fieldcraft.data.images import load_image
    from fieldcraft.io.checkpoint import atomic_write_bytes
    from fieldcraft.io.plots import plot_curve
    from fieldcraft.io.records import write_json

    have = baselines.available()
    codecs = have if codecs is None else codecs
    for c in codecs:
        if c not in have:
            raise FieldcraftError(f"--codecs: {c!r} is not available (this Pillow provides {', '.join(have)})")
    if "jpeg" not in codecs:
        codecs = ["jpeg", *codecs]
    out = Path(out)
    (out / "files").mkdir(parents=True, exist_ok=True)
    per_image = []
    for path in images:
        loaded = load_image(path)
        pixels = loaded.pixels
        if pixels.shape[2] not in (1, 3):
            raise FieldcraftError(f"{path}: eval codec takes gray or RGB images (the reference codecs do not "
                                  f"code alpha)")
        codes = np.rint(pixels * 255.0).astype(np.uint8)
        entry = {"image": str(path), "width": pixels.shape[1], "height": pixels.shape[0],
                 "codecs": {c: baselines.sweep(c, codes) for c in codecs}, "fieldcraft": []}
        for rate in rates:
            data, fig = compress(pixels, bpp=rate, preset=preset, seconds=seconds, steps=steps, seed=seed,
                                 progress=progress, device=device)
            if fig["stopped"]:  # SIGINT / SIGTERM: no partial figures passed off as results
                raise KeyboardInterrupt
            t0 = time.perf_counter()
            decode(data)
            fig["decode_seconds"] = time.perf_counter() - t0
            atomic_write_bytes(out / "files" / f"{Path(path).stem}_{rate:g}.fcz", data)
            fig["at_same_bpp"] = {c: baselines.psnr_at(entry["codecs"][c], fig["bpp"]) for c in codecs}
            entry["fieldcraft"].append(fig)
            if progress:
                printer(f"{Path(path).name} @ {rate:g} bpp: {fig['bpp']:.4f} bpp, {fig['psnr']:.2f} dB "
                        f"(JPEG {fig['at_same_bpp']['jpeg']:.2f} dB), encode {fig['encode_seconds']:.1f} s, "
                        f"decode {fig['decode_seconds']:.2f} s")
        fc_points = [(f["bpp"], f["psnr"]) for f in entry["fieldcraft"]]
        entry["bd_rate_vs_jpeg"] = {c: baselines.bd_rate(entry["codecs"]["jpeg"], entry["codecs"][c])
                                    for c in codecs if c != "jpeg"}
        entry["bd_rate_vs_jpeg"]["fieldcraft"] = baselines.bd_rate(entry["codecs"]["jpeg"], fc_points)
        per_image.append(entry)
    summary = summarise(per_image, rates, codecs)
    result = {"preset": preset, "rates": rates, "codecs": codecs, "budget": {"seconds": seconds, "steps": steps},
              "interpolation": "PSNR linear in log(bpp) between the bracketing points of each sweep",
              "images": per_image, "summary": summary}
    write_json(out / "rd.json", result)
    grid = np.exp(np.linspace(np.log(0.08), np.log(2.0), 40))
    series = {}
    for c in codecs:
        ys = [_mean(baselines.psnr_at(e["codecs"][c], r) for e in per_image) for r in grid]
        series[c] = (list(grid), ys)
    series["fieldcraft"] = ([s["bpp"] for s in summary["rates"]], [s["psnr"] for s in summary["rates"]])
    plot_curve(out / "rd.png", [], [], xlabel="bits per pixel", ylabel="PSNR (dB)",
               title=f"rate-distortion, mean of {len(per_image)} image(s)", series=series)
    printer(format_table(summary, codecs))
    return result


def summarise(per_image: list[dict], rates: list[float], codecs: list[str]) -> dict:
    rows = []
    for i, rate in enumerate(rates):
        figs = [e["fieldcraft"][i] for e in per_image]
        row = {"target_bpp": rate, "bpp": _mean(f["bpp"] for f in figs), "psnr": _mean(f["psnr"] for f in figs),
               "encode_seconds": _mean(f["encode_seconds"] for f in figs),
               "decode_seconds": _mean(f["decode_seconds"] for f in figs),
               "max_rate_error": max(abs(f["bpp"] / rate - 1) for f in figs)}
        for c in codecs:
            row[c] = _mean(f["at_same_bpp"][c] for f in figs)
        row["gain_over_jpeg"] = _mean(f["psnr"] - f["at_same_bpp"]["jpeg"] for f in figs)
        rows.append(row)
    bd = {c: _mean(e["bd_rate_vs_jpeg"][c] for e in per_image) for c in [*codecs[1:], "fieldcraft"]}
    return {"rates": rows, "bd_rate_vs_jpeg": bd}


def format_table(summary: dict, codecs: list[str]) -> str:
    head = ["target", "bpp", "fieldcraft", *codecs, "gain/JPEG", "enc s", "dec s"]
    lines = [" | ".join(f"{h:>10}" for h in head)]
    for r in summary["rates"]:
        vals = [r["target_bpp"], r["bpp"], r["psnr"], *[r[c] for c in codecs], r["gain_over_jpeg"],
                r["encode_seconds"], r["decode_seconds"]]
        lines.append(" | ".join(f"{v:>10.3f}" if isinstance(v, float) else f"{v:>10}" for v in vals))
    lines.append("BD-rate vs JPEG (%): " + ", ".join(f"{k} {v:.1f}" for k, v in summary["bd_rate_vs_jpeg"].items()))
    return "\n".join(lines)
