"""Optimisers for fields, built in one place from one config, and their checkpoint state.

:class:`OptimizerConfig` describes Adam (:class:`~fieldcraft.train.row_sparse_adam.RowSparseAdam`)
and its learning-rate schedule. Grid tables (the ``table`` of every
:class:`~fieldcraft.encodings.GridEncoding`) always get Instant-NGP's settings: betas (0.9, 0.99),
eps 1e-15, and updates of only the rows a step touched; every other parameter gets ``betas`` and
``eps`` of the config (PyTorch's Adam defaults unless set).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from fieldcraft.config import Config
from fieldcraft.errors import check
from fieldcraft.io.checkpoint import load_optimizer_tensors, optimizer_tensors
from fieldcraft.train.schedules import ScheduleConfig

GRID_BETAS = (0.9, 0.99)
GRID_EPS = 1e-15


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(Config):
    """Fields:

    - ``lr``: base learning rate (Adam).
    - ``betas``, ``eps``, ``weight_decay``: Adam settings of the parameters that are not grid tables.
    - ``schedule``: :class:`~fieldcraft.train.schedules.ScheduleConfig` (factor of ``lr``).
    """

    type_name = "Optimizer"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)

    def __post_init__(self) -> None:
        check(self.lr > 0 and self.lr < float("inf"), f"the learning rate must be a positive number, got {self.lr}")

    def build(self, module: nn.Module) -> torch.optim.Optimizer:
        """Adam over every trainable parameter of ``module`` (grid tables row-sparse, see module docstring)."""
        from fieldcraft.train.row_sparse_adam import grid_param_groups, make_optimizer

        groups = grid_param_groups(module)
        for group in groups:
            if group["sparse_rows"]:
                group.update(betas=GRID_BETAS, eps=GRID_EPS)
            else:
                group.update(betas=tuple(self.betas), eps=self.eps)
        return make_optimizer(groups, lr=self.lr, weight_decay=self.weight_decay)


def instant_ngp(lr: float, schedule: ScheduleConfig | None = None) -> OptimizerConfig:
    """Instant-NGP's Adam for every parameter: betas (0.9, 0.99), eps 1e-15."""
    return OptimizerConfig(lr=lr, betas=GRID_BETAS, eps=GRID_EPS, schedule=schedule or ScheduleConfig())


def build_optimizer(module: nn.Module, lr: float, *, instant_ngp_everywhere: bool = False) -> torch.optim.Optimizer:
    """Shorthand for ``OptimizerConfig(lr).build(module)`` (or :func:`instant_ngp` with ``instant_ngp_everywhere``)."""
    return (instant_ngp(lr) if instant_ngp_everywhere else OptimizerConfig(lr=lr)).build(module)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    return optimizer_tensors(optimizer, "optim")


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    load_optimizer_tensors(optimizer, tensors, meta, "optim")
