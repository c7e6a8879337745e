"""One generic training loop for every task: step or time budget, progress, checkpoints."""

from fieldcraft.train.loop import Budget, History, run_loop

__all__ = ["Budget", "History", "run_loop"]
