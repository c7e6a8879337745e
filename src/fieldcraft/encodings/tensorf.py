"""TensoRF tensor decompositions (Chen et al. 2022, "TensoRF: Tensorial Radiance Fields"): VM and CP.

A 3-D feature grid is factorised into low-rank components, each sampled at a point ``x`` in
``[-1, 1]^3`` (coordinates ``u = (x + 1) / 2``, clamped to the cube):

- **VM** (vector-matrix): for each mode ``m`` (XY plane with a Z line, XZ with Y, YZ with X) and
  component ``r < C``: ``M^m_r(u_a, u_b) v^m_r(u_c)``, a bilinearly interpolated plane times a
  linearly interpolated line. Output: the ``3 C`` products (``reduce="concat"``, what TensoRF's
  appearance basis matrix ``B`` or density sum reads; a linear layer after it plays both roles) or
  their sum over the three modes (``reduce="sum"``, ``C``).
- **CP** (CANDECOMP/PARAFAC): component ``r``: ``v^X_r(u_x) v^Y_r(u_y) v^Z_r(u_z)``; output ``C``.

Planes and lines are :class:`~fieldcraft.encodings.triplane.FeatureStack` s (texel-major tables,
numba kernels on the CPU, PyTorch reference elsewhere) and train coarse-to-fine like TensoRF
(``upsample_steps``: the resolution doubles at those steps, the function unchanged; see
:mod:`fieldcraft.encodings.triplane`). TensoRF's initialisation: ``N(0, init_scale^2)`` entries
(0.1 for VM, 0.2 for CP). :meth:`TensoRFEncoding.l1` is TensoRF's sparsity term (mean absolute
value of every entry).
"""

from __future__ import annotations

import dataclasses

from jaxtyping import Float
from torch import Tensor

from fieldcraft.encodings.base import Encoding, EncodingConfig
from fieldcraft.encodings.triplane import LINE_AXES, PLANE_AXES, CoarseToFine, FeatureStack, check_upsampling
from fieldcraft.errors import check


@dataclasses.dataclass(frozen=True)
class TensoRFVMConfig(EncodingConfig):
    """Fields:

    - ``resolution``: R, cells per axis of planes and lines (after all upsampling).
    - ``n_components``: C, components per mode (TensoRF lego: 16 density, 48 appearance).
    - ``reduce``: ``concat`` (``out_dim = 3 C``, every component) or ``sum`` (``C``: modes added).
    - ``init_scale``: standard deviation of the normal initialisation (TensoRF: 0.1).
    - ``upsample_steps``: training steps at which the resolution doubles, starting from ``R / 2^k``.
    - ``backend``: ``auto`` (numba kernels when they apply), ``torch`` (PyTorch reference) or ``fast``.
    """

    type_name = "TensoRFVM"
    resolution: int = 128
    n_components: int = 16
    reduce: str = "concat"
    init_scale: float = 0.1
    upsample_steps: tuple[int, ...] = ()
    backend: str = "auto"

    def out_dim(self, in_dim: int) -> int:
        return self.n_components * (3 if self.reduce == "concat" else 1)

    def build(self, in_dim: int) -> TensoRFEncoding:
        check(in_dim == 3, f"TensoRFVM encodes 3-D points, got {in_dim}-D inputs")
        check(self.reduce in ("concat", "sum"), f"TensoRFVM reduce must be concat|sum, got {self.reduce!r}")
        check(self.n_components >= 1, f"TensoRFVM n_components must be >= 1, got {self.n_components}")
        check_upsampling("TensoRFVM", self.resolution, self.upsample_steps, self.backend)
        return TensoRFEncoding(self, in_dim)


@dataclasses.dataclass(frozen=True)
class TensoRFCPConfig(EncodingConfig):
    """Fields:

    - ``resolution``: R, cells of each line (after all upsampling).
    - ``n_components``: C, rank-one components (TensoRF-CP lego: 96 density, 288 appearance); ``out_dim = C``.
    - ``init_scale``: standard deviation of the normal initialisation (TensoRF: 0.2).
    - ``upsample_steps``, ``backend``: as :class:`TensoRFVMConfig`.
    """

    type_name = "TensoRFCP"
    resolution: int = 256
    n_components: int = 48
    init_scale: float = 0.2
    upsample_steps: tuple[int, ...] = ()
    backend: str = "auto"

    def out_dim(self, in_dim: int) -> int:
        return self.n_components

    def build(self, in_dim: int) -> TensoRFEncoding:
        check(in_dim == 3, f"TensoRFCP encodes 3-D points, got {in_dim}-D inputs")
        check(self.n_components >= 1, f"TensoRFCP n_components must be >= 1, got {self.n_components}")
        check_upsampling("TensoRFCP", self.resolution, self.upsample_steps, self.backend)
        return TensoRFEncoding(self, in_dim)


class TensoRFEncoding(CoarseToFine, Encoding):
    """VM or CP decomposition (module docstring). Modules: ``lines`` (3 lines, one per axis: Z, Y, X
    for VM's modes; X, Y, Z for CP) and, for VM, ``planes`` (XY, XZ, YZ)."""

    config: TensoRFVMConfig | TensoRFCPConfig

    def __init__(self, config: TensoRFVMConfig | TensoRFCPConfig, in_dim: int) -> None:
        super().__init__(config, in_dim)
        c = config
        self.upsample_steps = tuple(c.upsample_steps)
        k = len(c.upsample_steps)
        self.vm = isinstance(c, TensoRFVMConfig)
        self.planes = FeatureStack(PLANE_AXES, c.resolution, c.n_components, c.init_scale, k, c.backend) if self.vm else None
        axes = LINE_AXES if self.vm else ((0,), (1,), (2,))
        self.lines = FeatureStack(axes, c.resolution, c.n_components, c.init_scale, k, c.backend)

    def encode(self, x: Float[Tensor, "n 3"]) -> Float[Tensor, "n out_dim"]:
        u = (x + 1.0) * 0.5
        lines = self.lines(u)  # [n, 3, C]
        if not self.vm:
            return lines.prod(1)
        prod = self.planes(u) * lines  # [n, 3, C]
        return prod.reshape(len(u), self.out_dim) if self.config.reduce == "concat" else prod.sum(1)

    def l1(self) -> Tensor:
        """Mean absolute value of all plane and line entries (TensoRF's L1 sparsity term)."""
        tables = [s.table for s in self.stacks()]
        return sum(t.abs().sum() for t in tables) / sum(t.numel() for t in tables)


__all__ = ["TensoRFCPConfig", "TensoRFEncoding", "TensoRFVMConfig"]
