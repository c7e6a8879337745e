"""The ``latent`` preset's body: architecture, quantised synthesis weights, entropy-model
coefficients and the range-coded latents (torch-free: the decoder imports numpy and constriction only).

Body layout (after the common header of :mod:`fieldcraft.codec.format`)::

    uint8  levels L, hidden width, hidden layers, flags (bit 0: residual 3x3 layer; bit 1: bicubic
           upsampling, else bilinear), max symbol M
    per synthesis tensor (1x1 layers' weight, bias in order, then the 3x3 layer's weight, bias):
        uint8 exponent e (values are int * 2^-e), uint8 table index of its integers
    int16  5 context coefficients per level, finest level first: (a0, a1) anchors, (b0, b1, b2) others
    rest   one range-coded stream (constriction RangeEncoder, uint32 words, little endian):
           the synthesis integers tensor by tensor (alphabet -255..255), then the latents, level by
           level from the coarsest, anchors then the other half of the checkerboard.

Each latent's table index (a Laplace scale, :mod:`fieldcraft.codec.entropy`) comes from integer
features of what is already decoded: ``LA = floor(4 log2(1 + A))`` with ``A`` the 3x3 sum of
``|y|`` of the coarser level around its parent, and ``LB`` likewise for ``B``, the sum of ``|y|``
of its 4 neighbours (anchors, already decoded) for the second half of the checkerboard:
``k = clip(floor((a0 + a1 LA + 32) / 64), 0, 63)`` for anchors and
``k = clip(floor((b0 + b1 LA + b2 LB + 32) / 64), 0, 63)`` for the others.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fieldcraft.codec import entropy, grids
from fieldcraft.codec.format import Reader
from fieldcraft.errors import FieldcraftError

WEIGHT_MAX = 255  # synthesis integers lie in -WEIGHT_MAX..WEIGHT_MAX
CONTEXT_TERMS = 5


@dataclasses.dataclass(frozen=True)
class Architecture:
    """The decoder's shape: ``levels`` latent grids, a 1x1 MLP ``levels -> hidden_width x
    hidden_layers -> channels`` (ReLU) and, with ``refine``, a residual 3x3 layer ``channels -> channels``;
    ``cubic``: the latents are upsampled bicubically (else bilinearly)."""

    levels: int
    hidden_width: int
    hidden_layers: int
    refine: bool
    max_symbol: int
    channels: int
    cubic: bool = False

    def tensor_shapes(self) -> list[tuple[int, ...]]:
        widths = [self.levels] + [self.hidden_width] * self.hidden_layers + [self.channels]
        shapes: list[tuple[int, ...]] = []
        for a, b in zip(widths[:-1], widths[1:]):
            shapes += [(b, a), (b,)]
        if self.refine:
            shapes += [(self.channels, self.channels, 3, 3), (self.channels,)]
        return shapes


@dataclasses.dataclass
class LatentStream:
    """Everything the body holds, decoded: integers and the dyadic exponents."""

    arch: Architecture
    height: int
    width: int
    exponents: list[int]
    weights: list[np.ndarray]              # integer tensors (int64), shapes arch.tensor_shapes()
    context: np.ndarray                    # int64 [levels, 5]
    latents: list[np.ndarray]              # integer grids (int64), level 0 = full resolution

    def dyadic_weights(self) -> list[np.ndarray]:
        return [w.astype(np.float64) * 2.0**-e for w, e in zip(self.weights, self.exponents)]

    def synthesis_args(self):
        ws = self.dyadic_weights()
        n = 2 * (self.arch.hidden_layers + 1)
        layers = [(ws[i], ws[i + 1]) for i in range(0, n, 2)]
        refine = (ws[n], ws[n + 1]) if self.arch.refine else None
        return self.latents, layers, refine, self.height, self.width, self.arch.cubic

    def image(self) -> np.ndarray:
        """Decoded samples ``[H, W, C]`` as ``uint8`` (exact synthesis, clipped, rounded)."""
        img = grids.synthesize(*self.synthesis_args())
        return np.floor(np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def latent_tables(context_row: np.ndarray, la: np.ndarray, lb: np.ndarray | None) -> np.ndarray:
    """Table indices of one level's anchors (``lb`` None) or other half from integer features."""
    c = np.asarray(context_row, np.int64)
    if lb is None:
        num = c[0] + c[1] * la
    else:
        num = c[2] + c[3] * la + c[4] * lb
    return np.clip(np.floor_divide(num + 32, 64), 0, entropy.N_TABLES - 1)


def level_features(latents: list[np.ndarray | None], i: int, shape: tuple[int, int]) -> np.ndarray:
    """``LA`` of level ``i`` (needs level ``i + 1`` decoded)."""
    coarser = latents[i + 1] if i + 1 < len(latents) else None
    return entropy.log_feature(grids.parent_feature(coarser, *shape))


def code_latents(stream: LatentStream, encoder=None, decoder=None) -> list[np.ndarray]:
    """Encode (``encoder``) or decode (``decoder``) the latents in the stream's order; returns them."""
    arch = stream.arch
    shapes = grids.level_shapes(stream.height, stream.width, arch.levels)
    out: list[np.ndarray | None] = [None] * arch.levels
    m = arch.max_symbol
    for i in reversed(range(arch.levels)):
        h, w = shapes[i]
        anchor = grids.anchor_mask(h, w)
        la = level_features(out, i, (h, w))
        grid = np.zeros((h, w), np.int64) if decoder is not None else stream.latents[i]
        k_a = latent_tables(stream.context[i], la[anchor], None)
        if decoder is not None:
            grid[anchor] = entropy.decode_grouped(decoder, k_a, m)
        else:
            entropy.encode_grouped(encoder, grid[anchor], k_a, m)
        lb = entropy.log_feature(grids.cross4(np.abs(np.where(anchor, grid, 0))))
        k_b = latent_tables(stream.context[i], la[~anchor], lb[~anchor])
        if decoder is not None:
            grid[~anchor] = entropy.decode_grouped(decoder, k_b, m)
        else:
            entropy.encode_grouped(encoder, grid[~anchor], k_b, m)
        out[i] = grid
    return out  # type: ignore[return-value]


def latent_bits(stream: LatentStream) -> float:
    """Ideal cost of the latents in bits under the stream's context coefficients (encoder decisions)."""
    arch = stream.arch
    shapes = grids.level_shapes(stream.height, stream.width, arch.levels)
    return sum(level_bits(stream.latents, i, shapes[i], stream.context[i], arch.max_symbol)
               for i in range(arch.levels))


def level_bits(latents: list[np.ndarray], i: int, shape: tuple[int, int], context_row: np.ndarray, m: int) -> float:
    return LevelCost(latents, i, shape, m)(context_row)


class LevelCost:
    """Ideal bits of one level as a function of its context coefficients (features computed once)."""

    def __init__(self, latents: list[np.ndarray], i: int, shape: tuple[int, int], m: int) -> None:
        grid = latents[i]
        anchor = grids.anchor_mask(*shape)
        la = level_features(latents, i, shape)
        lb = entropy.log_feature(grids.cross4(np.abs(np.where(anchor, grid, 0))))
        self.la_a, self.la_b, self.lb_b = la[anchor], la[~anchor], lb[~anchor]
        self.sym_a, self.sym_b = grid[anchor] + m, grid[~anchor] + m
        self.bits = entropy.bits_matrix(m)

    def __call__(self, row: np.ndarray) -> float:
        ka = latent_tables(row, self.la_a, None)
        kb = latent_tables(row, self.la_b, self.lb_b)
        return float(self.bits[ka, self.sym_a].sum() + self.bits[kb, self.sym_b].sum())


def encode_body(stream: LatentStream) -> bytes:
    import constriction

    arch = stream.arch
    tables = [entropy.best_table(w, WEIGHT_MAX) for w in stream.weights]
    head = bytes([arch.levels, arch.hidden_width, arch.hidden_layers, int(arch.refine) | 2 * int(arch.cubic),
                  arch.max_symbol])
    head += bytes(v for e, k in zip(stream.exponents, tables) for v in (e, k))
    head += np.asarray(stream.context, "<i2").tobytes()
    encoder = constriction.stream.queue.RangeEncoder()
    for w, k in zip(stream.weights, tables):
        entropy.encode_grouped(encoder, w.reshape(-1), np.full(w.size, k), WEIGHT_MAX)
    code_latents(stream, encoder=encoder)
    return head + np.asarray(encoder.get_compressed(), "<u4").tobytes()


def decode_body(body: bytes, height: int, width: int, channels: int, label: str) -> LatentStream:
    import constriction

    r = Reader(body, label)
    levels, hidden_width, hidden_layers, flags, m = r.read("5B")
    if not (1 <= levels <= 15 and hidden_width >= 1 and flags <= 3 and m >= 1):
        raise FieldcraftError(f"{label}: invalid latent-preset configuration")
    arch = Architecture(levels, hidden_width, hidden_layers, bool(flags & 1), m, channels, bool(flags & 2))
    shapes = arch.tensor_shapes()
    ek = r.read(f"{2 * len(shapes)}B")
    exponents, tables = list(ek[0::2]), list(ek[1::2])
    if max(tables) >= entropy.N_TABLES:
        raise FieldcraftError(f"{label}: invalid table index in the synthesis header")
    context = np.asarray(r.read(f"{CONTEXT_TERMS * levels}h"), np.int64).reshape(levels, CONTEXT_TERMS)
    payload = r.rest()
    if len(payload) % 4:
        raise FieldcraftError(f"{label}: truncated file (range-coded payload of {len(payload)} bytes)")
    words = np.frombuffer(payload, "<u4").astype(np.uint32)
    decoder = constriction.stream.queue.RangeDecoder(words)
    weights = []
    for shape, k in zip(shapes, tables):
        n = int(np.prod(shape))
        weights.append(entropy.decode_grouped(decoder, np.full(n, k), WEIGHT_MAX).reshape(shape))
    stream = LatentStream(arch, height, width, exponents, weights, context, [])
    stream.latents = code_latents(stream, decoder=decoder)
    return stream
