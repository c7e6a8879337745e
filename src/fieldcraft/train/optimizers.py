"""Optimiser construction for fields, in one place, and its checkpoint state.

:func:`build_optimizer` gives Adam with Instant-NGP's settings for grid tables (betas
0.9/0.99, eps 1e-15, only touched rows updated; :mod:`fieldcraft.train.row_sparse_adam`) and PyTorch's
defaults elsewhere.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fieldcraft.io.checkpoint import load_optimizer_tensors, optimizer_tensors


def build_optimizer(module: nn.Module, lr: float, *, instant_ngp_everywhere: bool = False) -> torch.optim.Optimizer:
    """Adam over all parameters of ``module`` (:class:`~fieldcraft.train.row_sparse_adam.RowSparseAdam`):
    grid tables with betas (0.9, 0.99), eps 1e-15 and row-lazy updates (Instant-NGP), every
    other parameter with PyTorch's Adam defaults, or, with ``instant_ngp_everywhere``, with
    Instant-NGP's betas and eps too (its radiance-field setting)."""
    from fieldcraft.train.row_sparse_adam import grid_param_groups, make_optimizer

    groups = grid_param_groups(module)
    for group in groups:
        if group["sparse_rows"] or instant_ngp_everywhere:
            group.update(betas=(0.9, 0.99), eps=1e-15)
    return make_optimizer(groups, lr=lr)


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    return optimizer_tensors(optimizer, "optim")


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    load_optimizer_tensors(optimizer, tensors, meta, "optim")
