"""Depth maps as pictures: expected depth coloured with a perceptual colour map.

>>> import numpy as np
>>> pic = depth_picture(np.array([[2.0, 3.0, 9.0]]), np.array([[1.0, 1.0, 0.0]]))
>>> pic.shape, pic[0, 2].tolist()                      # transparent pixels are black
((1, 3, 3), [0.0, 0.0, 0.0])
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float


def depth_picture(depth: Float[np.ndarray, "H W"], opacity: Float[np.ndarray, "H W"]) -> Float[np.ndarray, "H W 3"]:
    """RGB ``[H, W, 3]`` in ``[0, 1]``: the turbo colour map of ``depth``, near red and far blue,
    normalised to the 1st-99th percentile of the depth of pixels with ``opacity > 0.5``; pixels
    with ``opacity <= 0.5`` are black (all black when there are none)."""
    import matplotlib

    mask = opacity > 0.5
    if not mask.any():
        return np.zeros(depth.shape + (3,), np.float32)
    lo, hi = np.percentile(depth[mask], [1, 99])
    x = np.clip((depth - lo) / max(hi - lo, 1e-8), 0, 1)
    rgb = matplotlib.colormaps["turbo"](1.0 - x)[..., :3]
    return (rgb * mask[..., None]).astype(np.float32)
