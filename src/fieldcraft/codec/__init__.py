"""A neural image codec: ``fieldcraft compress`` / ``decompress`` (docs/codec.md).

- ``latent`` (default, Cool-chic-like): multi-resolution integer latent grids, bilinear
  upsampling, a small synthesis MLP, a context-conditioned Laplace entropy model with integer
  tables, range coding (``constriction``), exact fixed-point synthesis.
- ``coin``: a SIREN with float16 weights, no entropy coding (the reference).

Decoding imports no PyTorch. :func:`compress` fits (PyTorch, the training core), writes the file
atomically and returns its figures; :func:`decode` turns a file's bytes into 8-bit pixels.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from fieldcraft.codec import format as fmt
from fieldcraft.errors import FieldcraftError, check

PRESETS = ("latent", "coin")
DEFAULT_PRESET = "latent"
DEFAULT_SECONDS = 160.0  # fitting budget: the whole `compress` of a 768x512 image stays within 180 s


def decode(data: bytes, label: str = "input") -> np.ndarray:
    """The decoded ``uint8`` pixels ``[H, W, C]`` of a ``.fcz`` file's bytes (FieldcraftError on bad input)."""
    header, body = fmt.unpack(data, label)
    try:
        if header.preset == fmt.PRESET_IDS["coin"]:
            from fieldcraft.codec.coin import decode_body

            return decode_body(body, header.channels, label).image(header.height, header.width)
        from fieldcraft.codec.latent_stream import decode_body as decode_latent

        return decode_latent(body, header.height, header.width, header.channels, label).image()
    except FieldcraftError:
        raise
    except Exception as exc:  # noqa: BLE001 (a body that passed the checksum but does not parse)
        raise FieldcraftError(f"{label}: corrupt file ({type(exc).__name__}: {exc})") from None


def read_file(path: str | Path) -> bytes:
    path = Path(path)
    if not path.exists():
        raise FieldcraftError(f"{path}: no such file")
    if path.is_dir():
        raise FieldcraftError(f"{path}: is a directory, expected a .fcz file")
    return path.read_bytes()


def decompress(path: str | Path) -> np.ndarray:
    """Read and decode a ``.fcz`` file: ``uint8 [H, W, C]``."""
    return decode(read_file(path), str(path))


def compress(pixels: np.ndarray, *, bpp: float | None = None, lam: float | None = None,
             preset: str = DEFAULT_PRESET, seconds: float | None = None, steps: int | None = None,
             seed: int = 0, progress: bool = True, device: str = "cpu", config=None) -> tuple[bytes, dict]:
    """Encode ``[H, W, C]`` pixels in ``[0, 1]`` (C = 1, 3 or 4): the file's bytes and figures
    (``bpp``, ``bytes``, ``psnr`` of the decoded file against the 8-bit original, ``seconds``,
    ``steps``, ``lambda``, ``stopped``). Give ``bpp`` (a target) or ``lam`` (a trade-off)."""
    from fieldcraft.metrics import psnr
    from fieldcraft.train import Budget

    check(preset in PRESETS, f"--preset {preset!r}: unknown preset (use {' or '.join(PRESETS)})")
    check((bpp is None) != (lam is None), "give exactly one of --bpp and --lambda")
    check(bpp is None or 0 < bpp <= 24, f"--bpp must be in (0, 24], got {bpp}")
    check(lam is None or lam > 0, f"--lambda must be > 0, got {lam}")
    height, width, channels = pixels.shape
    check(channels in (1, 3, 4), f"images with {channels} channels are not supported (use gray, RGB or RGBA)")
    budget = Budget(steps=steps, seconds=seconds if (seconds is not None or steps is not None) else DEFAULT_SECONDS)
    header = fmt.Header(fmt.PRESET_IDS[preset], height, width, channels)
    t0 = time.perf_counter()
    if preset == "coin":
        check(lam is None, "the coin preset has no rate-distortion trade-off (its rate is its size): give --bpp")
        from fieldcraft.codec.coin import encode_body, fit_coin

        stream, fit_seconds, done, stopped = fit_coin(pixels, bpp, budget, progress=progress, device=device,
                                                      seed=seed)
        data, used_lambda = fmt.pack(header, encode_body(stream)), None
    else:
        from fieldcraft.codec.latent_fit import LatentCodecConfig, fit_latent
        from fieldcraft.codec.latent_stream import encode_body as encode_latent

        config = config or LatentCodecConfig(seed=seed)
        result = fit_latent(pixels, config, budget, bpp=bpp, lam=lam, progress=progress, device=device,
                            size_of=lambda s: len(fmt.pack(header, encode_latent(s))))
        data = fmt.pack(header, encode_latent(result.stream))
        fit_seconds, done, stopped, used_lambda = result.train_seconds, result.steps, result.stopped, result.lam
    seconds_total = time.perf_counter() - t0
    decoded = decode(data, "encoded stream")
    reference = np.rint(np.clip(pixels, 0, 1) * 255.0) / 255.0
    figures = {"preset": preset, "width": width, "height": height, "bytes": len(data),
               "bpp": 8.0 * len(data) / (height * width), "psnr": psnr(decoded / 255.0, reference),
               "encode_seconds": seconds_total, "fit_seconds": fit_seconds, "steps": done,
               "lambda": used_lambda, "target_bpp": bpp, "stopped": stopped}
    return data, figures
