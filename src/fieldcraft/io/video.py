"""Videos: frames (``[H, W, 3]`` floats in ``[0, 1]``) to mp4, or GIF without an encoder.

mp4 needs the ``imageio-ffmpeg`` package (H.264 through its bundled ffmpeg); without it, or for
a ``.gif`` name, the frames are written as a looping GIF (8-bit codes, ``1000 / fps`` ms per
frame). Writes are atomic (temporary file beside the target, then rename).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_video(path: str | Path, frames: list[np.ndarray], fps: int = 30) -> Path:
    """Write ``frames`` to ``path`` (see module docstring); returns the path written, whose suffix
    is ``.gif`` when mp4 could not be encoded."""
    import imageio.v2 as imageio

    from fieldcraft.io.images import quantize

    codes = [quantize(f, 8) for f in frames]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() != ".gif":
        try:
            import imageio_ffmpeg  # noqa: F401

            tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
            imageio.mimwrite(tmp, codes, fps=fps, macro_block_size=1)
            tmp.replace(path)
            return path
        except ImportError:
            path = path.with_suffix(".gif")
    tmp = path.with_name(f".{path.stem}.tmp.gif")
    imageio.mimwrite(tmp, codes, duration=1000 / fps, loop=0)
    tmp.replace(path)
    return path
