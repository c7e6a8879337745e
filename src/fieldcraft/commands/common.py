"""Arguments shared by several sub-commands."""

from __future__ import annotations

import argparse


def add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    """``--steps N | --seconds S`` (mutually exclusive)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--steps", type=int, default=None, help="number of optimisation steps")
    group.add_argument("--seconds", type=float, default=None, help="fitting-time budget in seconds")


def budget_from_args(args: argparse.Namespace, *, default_steps: int | None = None,
                     default_seconds: float | None = None):
    """The :class:`~fieldcraft.train.Budget` the user gave, else the command's default."""
    from fieldcraft.train import Budget

    if args.steps is None and args.seconds is None:
        return Budget(steps=default_steps, seconds=default_seconds)
    return Budget(steps=args.steps, seconds=args.seconds)
