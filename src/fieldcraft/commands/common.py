"""Arguments shared by the sub-commands, and how a fit's ending becomes an exit status."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_STOPPED = 130  # a fit stopped by SIGINT / SIGTERM (outputs and checkpoint written)


def add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    """``--steps N | --seconds S`` (mutually exclusive)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--steps", type=int, default=None, help="number of optimisation steps (counted from the "
                       "start of the run, resumes included)")
    group.add_argument("--seconds", type=float, default=None, help="fitting-time budget in seconds")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="torch device: cpu, cuda, cuda:1, ... "
                        "(default: cuda when available, else cpu)")


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    """Budget, ``--resume``, ``--overwrite``, ``--checkpoint-every``, ``--device``, ``--quiet``: every ``fit``
    command has them."""
    add_budget_arguments(parser)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint "
                        "(its stored settings are kept; --steps/--seconds set the new budget)")
    parser.add_argument("--overwrite", action="store_true", help="start a new run in an --out that holds one")
    parser.add_argument("--checkpoint-every", type=float, default=60.0, metavar="SECONDS",
                        help="write a checkpoint every SECONDS of wall time (default 60; also at the start, at the "
                             "end and on Ctrl-C / SIGTERM)")
    add_device_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def budget_from_args(args: argparse.Namespace):
    """The :class:`~fieldcraft.train.Budget` the user gave, or None (the run's default, or the stored one on resume)."""
    from fieldcraft.train import Budget

    if args.steps is None and args.seconds is None:
        return None
    return Budget(steps=args.steps, seconds=args.seconds)


def device_from_args(args: argparse.Namespace) -> str:
    """``--device`` checked against what this machine has (one line if it is not there)."""
    import torch

    from fieldcraft.errors import FieldcraftError
    from fieldcraft.runtime import default_device

    name = getattr(args, "device", None) or default_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FieldcraftError(f"--device {name!r}: not a torch device (use cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FieldcraftError(f"--device {name}: CUDA is not available on this machine")
    return str(device)


def given_options(argv: Sequence[str]) -> set[str]:
    """Destination names of the long options present in ``argv`` (``--train-fraction 0.5`` ->
    ``train_fraction``); parsers disallow abbreviations, so the names are exact."""
    return {tok[2:].split("=", 1)[0].replace("-", "_") for tok in argv if tok.startswith("--") and len(tok) > 2}


def report(out: Path, metrics: dict[str, Any]) -> int:
    """Print a fit's metrics (one JSON line) and where its outputs are; the exit status: 0, or
    130 when a signal stopped it (outputs and checkpoint are written either way)."""
    from fieldcraft.io.records import finite

    recorded = _record_ranks(Path(out), metrics)
    if recorded is None:  # a rank other than 0: rank 0 reports
        return EXIT_STOPPED if metrics.get("stopped") else 0
    metrics = recorded
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()
             if not isinstance(v, (list, dict))}
    print(json.dumps(finite(shown)))
    stopped = metrics.get("stopped")
    if stopped:
        print(f"stopped by {stopped}: outputs and checkpoint in {out}; continue with --resume")
        return EXIT_STOPPED
    print(f"outputs in {out}")
    return 0


def _record_ranks(out: Path, metrics: dict[str, Any]) -> dict[str, Any] | None:
    """For a fit run as several ranks (torchrun): ``world_size`` and ``global_batch`` added to the
    metrics and to ``out/metrics.json`` (written from the metrics when the task writes none), by
    rank 0; None on the other ranks (they report nothing). Unchanged in a single process."""
    import sys

    dist = sys.modules.get("fieldcraft.train.distributed")
    if dist is None or not dist.active():
        return metrics
    if not dist.is_main():
        return None
    from fieldcraft.io.records import write_json

    extra = {"world_size": dist.world()[1], "global_batch": dist.global_batch()}
    path = out / "metrics.json"
    stored = json.loads(path.read_text()) if path.exists() else dict(metrics)
    write_json(path, {**stored, **extra})
    return {**metrics, **extra}
