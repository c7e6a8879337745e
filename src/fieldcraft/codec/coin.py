"""The ``coin`` preset (Dupont et al. 2021, "COIN: COmpression with Implicit Neural representations"):
a SIREN ``(x, y) -> colour`` fitted to the image, its weights stored as float16, no entropy coding.

The rate is fixed by the architecture: ``bits = 16 * parameters``. :func:`coin_architecture` picks
the hidden width and depth (depth 4..10, the deepest first among equally close ones) whose
size is closest to the target. The network is ``fieldcraft.networks.MLP`` with sine activations
(``omega_0 = 30``, SIREN initialisation); the colour is its output plus 1/2. Body layout::

    uint16 hidden width, uint8 hidden layers, uint8 omega_0
    float16 (little endian) weights and biases, layer by layer (weight [out, in] then bias)

Decoding evaluates the network in float32 numpy; ``sin`` comes from the platform's math library,
so on rare pixels another machine can differ by one code value (the bits read do not depend on it).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fieldcraft.codec.format import Reader
from fieldcraft.errors import FieldcraftError, check

HEADER_BYTES = 16 + 4 + 4  # common header + coin body head + CRC


def coin_parameters(width: int, layers: int, channels: int) -> int:
    """Parameters of the SIREN ``2 -> width x layers -> channels``.

    >>> coin_parameters(28, 10, 3)
    7479
    """
    return (2 + 1) * width + (layers - 1) * (width + 1) * width + (width + 1) * channels


def coin_architecture(bpp: float, pixels: int, channels: int) -> tuple[int, int]:
    """``(hidden_width, hidden_layers)`` whose file size is closest to ``bpp`` (see module docstring)."""
    budget = bpp * pixels / 8.0 - HEADER_BYTES
    check(budget > 2 * coin_parameters(2, 1, channels), f"--bpp {bpp}: too small for the coin preset on "
          f"{pixels} pixels")
    best = None
    for layers in range(10, 3, -1):
        for width in range(2, 1024):
            size = 2 * coin_parameters(width, layers, channels)
            err = abs(size - budget)
            if best is None or err < best[0] - 1e-9:
                best = (err, width, layers)
            if size > budget:
                break
    return best[1], best[2]


@dataclasses.dataclass
class CoinStream:
    width: int
    layers: int
    omega: int
    params: list[np.ndarray]   # float16 arrays: w0, b0, w1, b1, ...

    def image(self, height: int, width: int) -> np.ndarray:
        """``[H, W, C]`` uint8."""
        xs = (2 * np.arange(width, dtype=np.float32) + 1) / width - 1
        ys = (2 * np.arange(height, dtype=np.float32) + 1) / height - 1
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        h = np.stack([xx, yy], -1).reshape(-1, 2)
        n = len(self.params) // 2
        for i in range(n):
            w, b = self.params[2 * i].astype(np.float32), self.params[2 * i + 1].astype(np.float32)
            h = h @ w.T + b
            if i < n - 1:
                h = np.sin(np.float32(self.omega) * h)
        img = (h + 0.5).reshape(height, width, -1)
        return np.floor(np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def shapes(width: int, layers: int, channels: int) -> list[tuple[int, ...]]:
    dims = [2] + [width] * layers + [channels]
    out: list[tuple[int, ...]] = []
    for a, b in zip(dims[:-1], dims[1:]):
        out += [(b, a), (b,)]
    return out


def encode_body(stream: CoinStream) -> bytes:
    head = np.array([stream.width], "<u2").tobytes() + bytes([stream.layers, stream.omega])
    return head + b"".join(np.asarray(p, "<f2").tobytes() for p in stream.params)


def decode_body(body: bytes, channels: int, label: str) -> CoinStream:
    r = Reader(body, label)
    width, layers, omega = r.read("HBB")
    if width < 1 or layers < 1:
        raise FieldcraftError(f"{label}: invalid coin configuration")
    rest = r.rest()
    sizes = [int(np.prod(s)) for s in shapes(width, layers, channels)]
    if len(rest) != 2 * sum(sizes):
        raise FieldcraftError(f"{label}: truncated or corrupt coin body ({len(rest)} bytes of weights, "
                              f"expected {2 * sum(sizes)})")
    flat = np.frombuffer(rest, "<f2")
    params, pos = [], 0
    for s, n in zip(shapes(width, layers, channels), sizes):
        params.append(flat[pos:pos + n].reshape(s).copy())
        pos += n
    return CoinStream(width, layers, omega, params)


def fit_coin(pixels: np.ndarray, bpp: float, budget, *, progress: bool, device: str = "cpu", seed: int = 0,
             lr: float = 1e-3) -> tuple[CoinStream, float, int, str | None]:
    """Fit the SIREN on the training core (full-batch MSE, Adam, cosine decay); returns the stream,
    fitting seconds, steps and the stopping signal (or None)."""
    import torch

    from fieldcraft.coords import pixel_centres
    from fieldcraft.metrics import psnr_from_mse
    from fieldcraft.networks.mlp import MLPConfig
    from fieldcraft.train import Objective, OptimizerConfig, ScheduleConfig, Trainer

    height, width, channels = pixels.shape
    hidden, layers = coin_architecture(bpp, height * width, channels)
    torch.manual_seed(seed)
    model = MLPConfig(hidden_width=hidden, hidden_layers=layers, activation="sine").build(2, channels).to(device)
    x = pixel_centres(height, width, device=device)
    y = torch.from_numpy(np.ascontiguousarray(pixels, np.float32)).reshape(-1, channels).to(device)

    class Fit(Objective):
        generators: dict = {}

        def loss(self, net, step):
            mse = torch.mean((net(x) + 0.5 - y) ** 2)
            return mse, {"psnr": psnr_from_mse(float(mse.detach()))}

    optimizer = OptimizerConfig(lr=lr, schedule=ScheduleConfig(kind="cosine", final_factor=0.05))
    outcome = Trainer(model, Fit(), optimizer, budget, description="compress (coin)", progress=progress).run()
    params = [p.detach().cpu().numpy().astype(np.float16) for lin in model.linears for p in (lin.weight, lin.bias)]
    return CoinStream(hidden, layers, 30, params), outcome.seconds, outcome.step, outcome.stopped
