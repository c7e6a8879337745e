"""The training loop shared by all tasks.

A task supplies ``step(i) -> dict`` (one optimisation step, returning scalars such as
``loss`` and ``psnr``); :func:`run_loop` calls it until the :class:`Budget` is spent,
shows a progress bar (step, loss, PSNR, ETA), records a :class:`History`, and calls the
optional ``checkpoint`` callback every ``checkpoint_seconds`` of wall time and at the end.

Time accounting: ``Budget.seconds`` counts only the time spent inside ``step`` (the
fitting time); evaluation callbacks, checkpoints and the progress bar are excluded. The
elapsed fitting time is carried across resumes.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable

from tqdm.auto import tqdm

from fieldcraft.errors import FieldcraftError


@dataclasses.dataclass(frozen=True)
class Budget:
    """Stop after ``steps`` steps or ``seconds`` of fitting time, whichever comes first
    (at least one of them must be set). Both count from the start of the run, resumes included."""

    steps: int | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.steps is None and self.seconds is None:
            raise FieldcraftError("give a budget: --steps N or --seconds S")
        if self.steps is not None and self.steps < 0:
            raise FieldcraftError(f"--steps must be >= 0, got {self.steps}")
        if self.seconds is not None and not (self.seconds >= 0 and math.isfinite(self.seconds)):
            raise FieldcraftError(f"--seconds must be a finite number >= 0, got {self.seconds}")

    def done(self, step: int, seconds: float) -> bool:
        return (self.steps is not None and step >= self.steps) or (self.seconds is not None and seconds >= self.seconds)


@dataclasses.dataclass
class History:
    """Per-logged-step records: ``step``, fitting ``seconds`` and the step's scalars."""

    steps: list[int] = dataclasses.field(default_factory=list)
    seconds: list[float] = dataclasses.field(default_factory=list)
    values: list[dict[str, float]] = dataclasses.field(default_factory=list)

    def append(self, step: int, seconds: float, values: dict[str, float]) -> None:
        self.steps.append(step)
        self.seconds.append(seconds)
        self.values.append(dict(values))

    def column(self, key: str) -> list[float]:
        return [v.get(key, float("nan")) for v in self.values]

    def to_dict(self) -> dict:
        return {"step": self.steps, "seconds": self.seconds, "values": self.values}

    @staticmethod
    def from_dict(d: dict) -> History:
        return History(list(d.get("step", [])), list(d.get("seconds", [])), list(d.get("values", [])))


def run_loop(
    step: Callable[[int], dict[str, float]],
    budget: Budget,
    *,
    start_step: int = 0,
    start_seconds: float = 0.0,
    history: History | None = None,
    log_every: int = 1,
    evaluate: Callable[[int], dict[str, float]] | None = None,
    evaluate_every_seconds: float | None = None,
    checkpoint: Callable[[int, float, History], None] | None = None,
    checkpoint_seconds: float = 60.0,
    description: str = "fit",
    progress: bool = True,
) -> tuple[int, float, History]:
    """Run ``step`` until ``budget`` is spent. Returns ``(steps done, fitting seconds, history)``.

    ``evaluate(i)`` (optional, excluded from the fitting time) adds scalars to the history
    every ``evaluate_every_seconds`` of fitting time and at the end.
    """
    history = history if history is not None else History()
    i, fit_seconds = start_step, start_seconds
    last_ckpt = time.perf_counter()
    last_eval = -math.inf
    if budget.steps is not None:
        total, unit, initial = budget.steps, "step", start_step
    else:
        total, unit, initial = budget.seconds, "s", start_seconds
    bar = tqdm(total=total, initial=initial, desc=description, unit=unit, disable=not progress,
               file=sys.stderr, dynamic_ncols=True, leave=True,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} {unit} [{elapsed}<{remaining}{postfix}]")
    values: dict[str, float] = {}
    try:
        while not budget.done(i, fit_seconds):
            t0 = time.perf_counter()
            values = step(i)
            dt = time.perf_counter() - t0
            fit_seconds += dt
            i += 1
            if evaluate is not None and evaluate_every_seconds is not None and fit_seconds - last_eval >= evaluate_every_seconds:
                values = {**values, **evaluate(i)}
                last_eval = fit_seconds
            if i % log_every == 0 or budget.done(i, fit_seconds):
                history.append(i, fit_seconds, values)
            # a time budget ends on the step that crosses it: never move the bar past its total
            bar.update(1 if budget.steps is not None else max(0.0, min(dt, total - bar.n)))
            bar.set_postfix(_format(values), refresh=False)
            if checkpoint is not None and time.perf_counter() - last_ckpt >= checkpoint_seconds:
                checkpoint(i, fit_seconds, history)
                last_ckpt = time.perf_counter()
        if evaluate is not None:
            final = evaluate(i)
            if history.steps and history.steps[-1] == i:
                history.values[-1].update(final)
            else:
                history.append(i, fit_seconds, {**values, **final})
            bar.set_postfix(_format({**values, **final}), refresh=True)
    finally:
        bar.close()
    if checkpoint is not None:
        checkpoint(i, fit_seconds, history)
    return i, fit_seconds, history


def _format(values: dict[str, float]) -> dict[str, str]:
    out = {}
    for k, v in values.items():
        if isinstance(v, float):
            out[k] = f"{v:.4g}" if k != "psnr" else f"{v:.2f}"
    return out
