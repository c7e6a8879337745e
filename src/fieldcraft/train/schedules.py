"""Learning-rate schedules, as a factor of the base learning rate.

The factor at a step is ``warm-up(step) * decay(progress, step)``, where ``progress`` in
``[0, 1]`` is the fraction of the run's :class:`~fieldcraft.train.loop.Budget` spent (the larger
of steps done / budget steps and fitting seconds / budget seconds). The factor is a pure function
of the step, the fitting time and the budget, so a resumed run continues exactly where it was.

| ``kind`` | decay | used by |
|---|---|---|
| ``constant`` | 1 | SIREN / Fourier-feature image fits |
| ``exp`` | ``final_factor ** progress`` | NeRF (vanilla, tiny), CT |
| ``cosine`` | ``final + (1 - final) (1 + cos(pi progress)) / 2`` | SDF |
| ``steps`` | ``gamma ** (number of milestones <= progress)`` | Instant-NGP NeRF |
| ``per_step`` | ``decay_per_step ** step`` (independent of the budget) | hash-grid image fits |

>>> s = ScheduleConfig(kind="steps", warmup_steps=100, milestones=(0.5, 0.75), gamma=0.1)
>>> round(s.factor(step=49, progress=0.2), 3), round(s.factor(step=600, progress=0.8), 3)
(0.5, 0.01)
>>> ScheduleConfig(kind="cosine", final_factor=0.0).factor(step=5, progress=0.5)
0.5
"""

from __future__ import annotations

import dataclasses
import math

from fieldcraft.config import Config
from fieldcraft.errors import check

SCHEDULES = ("constant", "exp", "cosine", "steps", "per_step")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig(Config):
    """Fields:

    - ``kind``: one of ``constant``, ``exp``, ``cosine``, ``steps``, ``per_step`` (table above).
    - ``warmup_steps``: linear warm-up ``min(1, (step + 1) / warmup_steps)`` (0: none).
    - ``final_factor``: factor reached at the end of the budget (``exp``, ``cosine``).
    - ``milestones``, ``gamma``: budget fractions at which ``steps`` multiplies by ``gamma``.
    - ``decay_per_step``: per-step factor of ``per_step``.
    """

    type_name = "Schedule"
    kind: str = "constant"
    warmup_steps: int = 0
    final_factor: float = 0.1
    milestones: tuple[float, ...] = (0.5, 0.75, 0.9)
    gamma: float = 0.33
    decay_per_step: float = 1.0

    def __post_init__(self) -> None:
        check(self.kind in SCHEDULES, f"unknown learning-rate schedule {self.kind!r} (use {'|'.join(SCHEDULES)})")
        check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")

    def factor(self, step: int, progress: float) -> float:
        """The learning-rate factor at ``step`` (0-based) with ``progress`` of the budget spent."""
        p = min(max(float(progress), 0.0), 1.0)
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        if self.kind == "exp":
            decay = self.final_factor**p
        elif self.kind == "cosine":
            decay = self.final_factor + (1 - self.final_factor) * 0.5 * (1 + math.cos(math.pi * p))
        elif self.kind == "steps":
            decay = self.gamma ** sum(p >= q for q in self.milestones)
        elif self.kind == "per_step":
            decay = self.decay_per_step**step
        else:
            decay = 1.0
        return warm * decay
