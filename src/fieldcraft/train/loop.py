"""The training core shared by every task.

A task hands the core a model (an ``nn.Module`` holding everything trainable), an
:class:`Objective` (its data, forward model and loss: ``loss(model, step)``), an
:class:`~fieldcraft.train.optimizers.OptimizerConfig` and a :class:`Budget`. The core owns the rest:

- the optimiser and the learning-rate schedule (a pure function of step, fitting time and budget);
- the loop: progress bar (step, loss, PSNR, ETA), a :class:`History` appended to
  ``history.jsonl``, optional periodic evaluation;
- checkpoints: one at the start, then every ``checkpoint_seconds`` of wall time, at the end and
  on SIGINT / SIGTERM (the loop stops after the current step, saves, and reports
  ``Outcome.stopped``, so the task still writes its outputs). A checkpoint holds the model, the
  optimiser, the RNG states, the budget, the step and the fitting time, so ``--resume`` continues
  the same run (:func:`fieldcraft.train.state.start`);
- a NaN guard: a non-finite loss, or non-finite weights when a checkpoint is due, stops the run
  with :class:`Diverged` (one line) and never overwrites the last good checkpoint;
- JIT warm-up: one step of a throwaway copy of the model, so compiling kernels is not charged to
  the time budget.

Time accounting: ``Budget.seconds`` counts only the time inside training steps (the fitting
time); evaluation, checkpoints and the progress bar are excluded. Steps and fitting time are
carried across resumes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from fieldcraft.errors import FieldcraftError
from fieldcraft.train import distributed as dist


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

    def progress(self, step: int, seconds: float) -> float:
        """Fraction of the budget spent, in ``[0, 1]`` (the larger of the step and time fractions)."""
        p = 0.0
        if self.steps:
            p = max(p, step / self.steps)
        if self.seconds:
            p = max(p, seconds / self.seconds)
        return min(p, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "seconds": self.seconds}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Budget:
        return Budget(steps=d.get("steps"), seconds=d.get("seconds"))


@dataclasses.dataclass
class History:
    """Per-logged-step records: ``step``, fitting ``seconds`` and the step's scalars.

    With a ``path`` every record is also appended to that JSON-lines file (one object per line,
    ``{"step": .., "seconds": .., <scalars>}``, non-finite numbers as ``null``)."""

    steps: list[int] = dataclasses.field(default_factory=list)
    seconds: list[float] = dataclasses.field(default_factory=list)
    values: list[dict[str, float]] = dataclasses.field(default_factory=list)
    path: Path | None = None

    def append(self, step: int, seconds: float, values: dict[str, float]) -> None:
        self.steps.append(step)
        self.seconds.append(seconds)
        self.values.append(dict(values))
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(_json_line({"step": step, "seconds": seconds, **values}) + "\n")

    def update_last(self, values: dict[str, float]) -> None:
        """Add scalars to the last record (in memory and, rewritten once, in the file)."""
        self.values[-1].update(values)
        if self.path is not None:
            self.save()

    def column(self, key: str) -> list[float]:
        return [v.get(key, float("nan")) for v in self.values]

    def to_dict(self) -> dict:
        return {"step": self.steps, "seconds": self.seconds, "values": self.values}

    def save(self) -> None:
        """Rewrite the whole file atomically (after a resume truncates it, or :meth:`update_last`)."""
        from fieldcraft.io.checkpoint import atomic_write_bytes

        lines = [_json_line({"step": s, "seconds": t, **v}) + "\n" for s, t, v in zip(self.steps, self.seconds, self.values)]
        atomic_write_bytes(self.path, "".join(lines).encode())

    @staticmethod
    def load(path: Path, up_to_step: int | None = None) -> History:
        """Read ``history.jsonl`` (a missing file is an empty history), keeping records up to
        ``up_to_step`` (those written after the checkpoint a run resumes from are dropped)."""
        hist = History(path=Path(path))
        if not hist.path.exists():
            return hist
        for line in hist.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut short by a kill: the rest is not trusted
            step, secs = rec.pop("step"), rec.pop("seconds")
            if up_to_step is not None and step > up_to_step:
                break
            hist.steps.append(step)
            hist.seconds.append(secs)
            hist.values.append({k: (math.nan if v is None else v) for k, v in rec.items()})
        return hist


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps({k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in record.items()},
                      allow_nan=False)


class Diverged(FieldcraftError):
    """The loss or the weights became non-finite; the last good checkpoint was kept."""


class Objective:
    """What a task hands the core besides its model. Subclasses implement :meth:`loss`;
    the other methods are optional hooks.

    The random generators a task draws batches from are registered in ``generators`` so that
    checkpoints save their states and a resumed run draws the same batches."""

    generators: dict[str, torch.Generator]

    def loss(self, model: nn.Module, step: int) -> tuple[Tensor | None, dict[str, float]]:
        """The training loss of ``step`` evaluated with ``model`` (the trained model, or a throwaway
        copy during warm-up: use the argument, not a stored reference) and scalars to log
        (``loss`` at least; ``psnr`` when meaningful). Return ``None`` as the loss after calling
        ``backward`` yourself (e.g. micro-batches); the scalars' ``loss`` is then checked."""
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Called after the optimiser step (e.g. a moving average of the weights)."""

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Extra tensors and JSON to checkpoint (e.g. an averaged copy of the weights)."""
        return {}, {}

    def load_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        """Restore :meth:`state` on resume."""


@dataclasses.dataclass
class Outcome:
    """How a run ended: ``step`` and fitting ``seconds`` reached, the ``history``, and
    ``stopped``: ``None`` when the budget was spent, else the signal name (``SIGINT``, ``SIGTERM``)."""

    step: int
    seconds: float
    history: History
    stopped: str | None = None


class Trainer:
    """Runs an :class:`Objective` on a model under a budget (see module docstring).

    ``save(step, seconds)`` writes a checkpoint; it is called by the loop and is also what a task
    calls (through :func:`fieldcraft.train.state.save_run`) to checkpoint by hand."""

    def __init__(self, model: nn.Module, objective: Objective, optimizer: Any, budget: Budget, *,
                 checkpoint: Callable[[Trainer, int, float], None] | None = None,
                 checkpoint_seconds: float = 60.0, log_every: int = 1,
                 evaluate: Callable[[int], dict[str, float]] | None = None, evaluate_every_seconds: float | None = None,
                 description: str = "fit", progress: bool = True, warm_up: bool = True) -> None:
        from fieldcraft.train.optimizers import OptimizerConfig

        self.model, self.objective, self.budget = model, objective, budget
        self.optimizer_config: OptimizerConfig = optimizer
        self.optimizer = optimizer.build(model)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.checkpoint_fn, self.checkpoint_seconds = checkpoint, checkpoint_seconds
        self.log_every, self.evaluate, self.evaluate_every_seconds = log_every, evaluate, evaluate_every_seconds
        self.description, self.progress, self.do_warm_up = description, progress and dist.is_main(), warm_up
        self.step, self.seconds = 0, 0.0
        self.history = History()
        self.saved_step: int | None = None  # step of the last checkpoint written by this process
        self._warned_replicated = False
        self.meta: dict[str, Any] = {}  # the task's metadata stored in each checkpoint (see Run.trainer)

    # --- learning rate
    def learning_rate_factor(self, step: int, seconds: float) -> float:
        return self.optimizer_config.schedule.factor(step, self.budget.progress(step, seconds))

    def _set_lr(self, step: int) -> float:
        f = self.learning_rate_factor(step, self.seconds)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * f
        return self.base_lrs[0] * f if self.base_lrs else 0.0

    # --- one step
    def _train_step(self, i: int) -> dict[str, float]:
        self._set_lr(i)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        if dist.active():
            return self._train_step_distributed(i)
        loss, values = self.objective.loss(self.model, i)
        if loss is not None:
            value = float(loss.detach())
            if not math.isfinite(value):
                raise _NonFinite(i, value)
            loss.backward()
            values = {"loss": value, **values}
        elif not math.isfinite(float(values.get("loss", 0.0))):
            raise _NonFinite(i, float(values["loss"]))
        self.optimizer.step()
        self.objective.after_step(i)
        return values

    def _train_step_distributed(self, i: int) -> dict[str, float]:
        """One step as one rank of several (:mod:`fieldcraft.train.distributed`): the objective's loss
        on this rank's shard, gradients summed over the ranks, the global loss checked by every rank."""
        dist.begin_step()
        loss, values = self.objective.loss(self.model, i)
        if loss is not None:
            values = {"loss": float(loss.detach()), **values}
            loss.backward()
        fraction = dist.step_fraction()
        replicated = fraction is None  # the objective does not shard: every rank computed the whole batch
        if replicated and not self._warned_replicated:
            self._warned_replicated = True
            if dist.is_main():
                print(f"fieldcraft: {self.description}: this task does not split its batches across ranks; every "
                      f"rank computes the whole batch (same result, no speed-up)", file=sys.stderr, flush=True)
        world_size = dist.world()[1]
        values = dist.reduce_scalars({k: (v / world_size if k == "loss" else v) for k, v in values.items()}
                                     if replicated else values, 1.0 / world_size if replicated else fraction)
        if not math.isfinite(float(values.get("loss", 0.0))):
            raise _NonFinite(i, float(values["loss"]))
        dist.all_reduce_gradients(self.model, scale=1.0 / world_size if replicated else 1.0)
        self.optimizer.step()
        self.objective.after_step(i)
        return values

    def warm_up(self) -> None:
        """One step on a throwaway copy of the model and optimiser, so JIT compilation (numba grid
        kernels, row-sparse Adam) is not charged to the budget. Model, optimiser and RNG states are untouched."""
        rng = torch.random.get_rng_state()
        gens = {k: g.get_state() for k, g in getattr(self.objective, "generators", {}).items()}
        clone = copy.deepcopy(self.model)
        opt = self.optimizer_config.build(clone)
        try:
            loss, _ = self.objective.loss(clone, self.step)
            if loss is not None:
                loss.backward()
            opt.step()
        finally:
            torch.random.set_rng_state(rng)
            for k, g in getattr(self.objective, "generators", {}).items():
                g.set_state(gens[k])

    # --- checkpoints
    def weights_finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in self.model.state_dict().values() if t.is_floating_point())

    def save(self) -> None:
        """Checkpoint the current state (if the weights are finite; else :class:`Diverged`)."""
        if self.checkpoint_fn is None:
            return
        if not self.weights_finite():
            raise self._diverged(f"the weights became non-finite by step {self.step}")
        self.checkpoint_fn(self, self.step, self.seconds)
        self.saved_step = self.step

    def _diverged(self, what: str) -> Diverged:
        kept = (f"the checkpoint of step {self.saved_step} was kept" if self.saved_step is not None
                else "no checkpoint was written")
        return Diverged(f"the fit diverged: {what}; {kept}; lower the learning rate "
                        f"(--lr, now {self.base_lrs[0] if self.base_lrs else 'n/a':g})")

    # --- the loop
    def run(self) -> Outcome:
        budget, history = self.budget, self.history
        dist.broadcast_module(self.model)  # ranks start from rank 0's weights (identical already when seeded alike)
        if self.do_warm_up and not budget.done(self.step, self.seconds):
            self.warm_up()
        if self.saved_step is None:
            self.save()  # a run always has a checkpoint on disk, even if killed in its first step
        last_ckpt, last_eval = time.perf_counter(), -math.inf
        if budget.steps is not None:
            total, unit, initial = budget.steps, "step", self.step
        else:
            total, unit, initial = budget.seconds, "s", self.seconds
        bar = tqdm(total=total, initial=min(initial, total), desc=self.description, unit=unit, disable=not self.progress,
                   file=sys.stderr, dynamic_ncols=True, leave=True,
                   bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} {unit} [{elapsed}<{remaining}{postfix}]")
        values: dict[str, float] = {}
        with _StopSignals() as stop:
            try:
                while True:
                    done, stop.signal, self.seconds = dist.agree_stop(budget.done(self.step, self.seconds), stop.signal,
                                                                      self.seconds)  # rank 0 decides for all ranks
                    if done or stop.signal is not None:
                        break
                    t0 = time.perf_counter()
                    try:
                        values = self._train_step(self.step)
                    except _NonFinite as exc:
                        raise self._diverged(f"loss {exc.value} at step {exc.step}") from None
                    dt = time.perf_counter() - t0
                    self.seconds += dt
                    self.step += 1
                    if (self.evaluate is not None and self.evaluate_every_seconds is not None
                            and self.seconds - last_eval >= self.evaluate_every_seconds):
                        values = {**values, **self.evaluate(self.step)}
                        last_eval = self.seconds
                    if self.step % self.log_every == 0 or budget.done(self.step, self.seconds):
                        history.append(self.step, self.seconds, values)
                    # a time budget ends on the step that crosses it: never move the bar past its total
                    bar.update(1 if budget.steps is not None else max(0.0, min(dt, total - bar.n)))
                    bar.set_postfix(_format(values), refresh=False)
                    if time.perf_counter() - last_ckpt >= self.checkpoint_seconds:
                        self.save()
                        last_ckpt = time.perf_counter()
                if self.evaluate is not None and stop.signal is None:
                    final = self.evaluate(self.step)
                    if history.steps and history.steps[-1] == self.step:
                        history.update_last(final)
                    else:
                        history.append(self.step, self.seconds, {**values, **final})
                    bar.set_postfix(_format({**values, **final}), refresh=True)
            finally:
                bar.close()
            if self.saved_step != self.step:
                self.save()
        if stop.signal is not None and dist.is_main():
            print(f"fieldcraft: {stop.signal} received: stopped at step {self.step}, checkpoint saved",
                  file=sys.stderr, flush=True)
        return Outcome(self.step, self.seconds, history, stop.signal)


class _NonFinite(Exception):
    def __init__(self, step: int, value: float) -> None:
        super().__init__(step, value)
        self.step, self.value = step, value


class _StopSignals:
    """While active, SIGINT and SIGTERM ask the loop to stop after the current step (a second
    SIGINT interrupts at once). Only in the main thread; elsewhere it does nothing."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


def _format(values: dict[str, float]) -> dict[str, str]:
    out = {}
    for k, v in values.items():
        if isinstance(v, float):
            out[k] = f"{v:.4g}" if k != "psnr" else f"{v:.2f}"
    return out
