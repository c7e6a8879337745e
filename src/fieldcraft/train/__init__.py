"""The training core used by every task: budgets, the loop, schedules, optimisers, runs on disk."""

from fieldcraft.train.loop import Budget, Diverged, History, Objective, Outcome, Trainer
from fieldcraft.train.optimizers import OptimizerConfig
from fieldcraft.train.schedules import ScheduleConfig
from fieldcraft.train.state import Run

__all__ = ["Budget", "Diverged", "History", "Objective", "OptimizerConfig", "Outcome", "Run", "ScheduleConfig",
           "Trainer"]
