"""Starting, resuming and checkpointing a run: the part of the training core that touches disk.

A task opens a run, builds its model from the run's config, and asks the run for a trainer::

    run = Run.open(out, "image", requested_config, resume=args.resume, given=args.given,
                   budget=budget_or_none, default_budget=Budget(steps=2000), device=device)
    config = run.config                    # the stored config when resuming
    model = build(config).to(device)
    trainer = run.trainer(model, objective, config.optimizer, meta={"image": info})
    outcome = trainer.run()

Rules:

- A fresh run refuses an output directory that already holds a checkpoint unless ``overwrite``
  (nothing already written is lost); ``resume`` needs one, of the same task.
- Resuming keeps the stored config. Settings the user gave (``given``: option names such as
  ``lr``) that differ from the stored ones are reported in one line naming what was kept. The
  budget is the exception: a given ``--steps`` / ``--seconds`` extends (or shortens) the run,
  otherwise the stored budget holds.
- A checkpoint holds the model (``<prefix>.``), the optimiser (``optim.``), the global torch RNG
  and the objective's generators (``rng.``), the objective's state (``extra.``), step, fitting
  seconds, budget and the task's metadata. ``history.jsonl`` beside it is appended as the run
  goes; on resume, records after the checkpoint's step are dropped.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fieldcraft.config import Config
from fieldcraft.errors import FieldcraftError, reading
from fieldcraft.io.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    load_module_tensors,
    module_tensors,
    save_checkpoint,
)
from fieldcraft.train import distributed as dist
from fieldcraft.train.loop import Budget, History, Objective, Trainer
from fieldcraft.train.optimizers import load_optimizer_state, optimizer_state

HISTORY_NAME = "history.jsonl"


def kept_settings(stored: Config, requested: Config, given: Iterable[str]) -> list[str]:
    """``name=stored (given value)`` for every given option that names a field of the config
    and differs from the stored value.

    >>> from fieldcraft.train.optimizers import OptimizerConfig
    >>> kept_settings(OptimizerConfig(lr=0.01), OptimizerConfig(lr=1e6), ["lr", "eps", "quiet"])
    ['lr=0.01 (given 1000000.0)']
    """
    names = {f.name for f in dataclasses.fields(stored)}
    out = []
    for name in given:
        if name in names and getattr(requested, name) != getattr(stored, name):
            out.append(f"{name}={getattr(stored, name)!r} (given {getattr(requested, name)!r})")
    return out


@dataclasses.dataclass
class Run:
    """An output directory being fitted: the config in force, the budget, and the checkpoint
    being resumed (``tensors``, ``meta``; empty for a fresh run)."""

    out: Path
    task: str
    config: Config
    budget: Budget
    device: torch.device
    tensors: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def resumed(self) -> bool:
        return bool(self.meta)

    @staticmethod
    def open(out: str | Path, task: str, requested: Config, *, resume: bool = False, given: Iterable[str] = (),
             budget: Budget | None = None, default_budget: Budget | None = None, device: str | torch.device = "cpu",
             overwrite: bool = False, tasks: tuple[str, ...] | None = None) -> Run:
        """Start or resume the run in ``out`` (rules in the module docstring). ``tasks``: task names
        whose checkpoints this task may resume (default: ``task``)."""
        out = Path(out)
        device = torch.device(device)
        if out.exists() and not out.is_dir():
            raise FieldcraftError(f"{out}: the output path is a file, not a directory")
        has_ckpt = dist.broadcast_flag((out / CHECKPOINT_NAME).exists())  # rank 0's view, before it writes
        if not resume:
            if has_ckpt and not overwrite:
                raise FieldcraftError(f"{out}: already holds a fit's checkpoint; --resume continues it, "
                                      f"--overwrite starts again in its place")
            b = budget or default_budget
            if b is None:
                raise FieldcraftError("give a budget: --steps N or --seconds S")
            if not dist.is_main():  # ranks other than 0 write their copies of the outputs to a scratch directory
                return Run(_scratch_copy(out), task, requested, b, device)
            _writable(out)  # the old run's history.jsonl goes when the trainer starts (inputs read by then)
            return Run(out, task, requested, b, device)
        if not has_ckpt:
            raise FieldcraftError(f"{out}: --resume needs a checkpoint here ({CHECKPOINT_NAME}), found none")
        tensors, meta = load_checkpoint(out, device=device)
        if meta.get("task") not in (tasks or (task,)):
            raise FieldcraftError(f"{out}: the checkpoint is of task {meta.get('task')!r}, not {task!r}")
        path = out / CHECKPOINT_NAME
        if "config" not in meta:
            raise FieldcraftError(f"{path}: the checkpoint holds no run config to resume")
        with reading(path, "checkpoint header"):
            stored = Config.from_dict(meta["config"])
            step, seconds = meta.get("step", 0), meta.get("seconds", 0.0)
            if type(step) is not int or step < 0:
                raise FieldcraftError(f"{path}: malformed checkpoint header: 'step' must be an integer >= 0, got {step!r:.40}")
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
                raise FieldcraftError(f"{path}: malformed checkpoint header: 'seconds' must be a number >= 0, "
                                      f"got {seconds!r:.40}")
            stored_budget = Budget.from_dict(meta["budget"]) if meta.get("budget") else None
        kept = kept_settings(stored, requested, given)
        if kept:
            print(f"fieldcraft: --resume keeps the run's stored settings: {', '.join(kept)}; "
                  f"start a new run (--overwrite) to change them", file=sys.stderr, flush=True)
        b = budget or stored_budget or default_budget
        if b is None:
            raise FieldcraftError("give a budget: --steps N or --seconds S")
        if not dist.is_main():
            out = _scratch_copy(out)
        return Run(out, task, stored, b, device, tensors, meta)

    def trainer(self, model: nn.Module, objective: Objective, optimizer: Any, *, meta: dict[str, Any] | None = None,
                prefix: str = "field", **loop: Any) -> Trainer:
        """A :class:`Trainer` that checkpoints into ``out`` (``meta``: the task's metadata, stored
        at the top level of the header beside ``task``, ``config``, ``step``, ...), restored from
        the checkpoint when resuming. ``loop``: :class:`Trainer` options. ``trainer.meta`` is that
        dict: a task may update it (e.g. with a value known only after training) and call
        ``trainer.save()``."""

        def checkpoint(trainer: Trainer, step: int, seconds: float) -> None:
            if dist.is_main():  # rank 0 alone writes the (rank-independent) checkpoint
                save_checkpoint(self.out, *self.state(trainer, prefix, trainer.meta))

        trainer = Trainer(model, objective, optimizer, self.budget, checkpoint=checkpoint, **loop)
        trainer.meta = dict(meta or {})
        if self.resumed:
            with reading(self.out / CHECKPOINT_NAME, "checkpoint"):
                self.restore(trainer, prefix)
        else:
            (self.out / HISTORY_NAME).unlink(missing_ok=True)
            trainer.history = History(path=self.out / HISTORY_NAME)
        return trainer

    def state(self, trainer: Trainer, prefix: str, static: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Tensors and header of a checkpoint of ``trainer`` (see module docstring)."""
        tensors = module_tensors(trainer.model, prefix)
        opt_t, opt_meta = optimizer_state(trainer.optimizer)
        tensors.update(opt_t)
        tensors["rng.torch"] = torch.random.get_rng_state()
        gens = getattr(trainer.objective, "generators", {})
        tensors.update({f"rng.{k}": g.get_state() for k, g in gens.items()})
        extra_t, extra_meta = trainer.objective.state()
        tensors.update({f"extra.{k}": v for k, v in extra_t.items()})
        header = {"task": self.task, "config": self.config.to_dict(), **static, "step": trainer.step,
                  "seconds": trainer.seconds, "budget": self.budget.to_dict(), "optimizer": opt_meta,
                  "extra": extra_meta}
        if dist.active():  # a record only: resuming works with any number of ranks
            header["world_size"], header["global_batch"] = dist.world()[1], dist.global_batch()
        return tensors, header

    def restore(self, trainer: Trainer, prefix: str) -> None:
        t, m = self.tensors, self.meta
        load_module_tensors(trainer.model, t, prefix)
        if "optimizer" in m:
            load_optimizer_state(trainer.optimizer, t, m["optimizer"])
        if "rng.torch" in t:
            torch.random.set_rng_state(t["rng.torch"].cpu())
        for k, g in getattr(trainer.objective, "generators", {}).items():
            if f"rng.{k}" in t:
                g.set_state(t[f"rng.{k}"].cpu())
        trainer.objective.load_state({k[6:]: v for k, v in t.items() if k.startswith("extra.")}, m.get("extra") or {})
        trainer.step, trainer.seconds = int(m.get("step", 0)), float(m.get("seconds", 0.0))
        trainer.saved_step = trainer.step
        trainer.history = History.load(self.out / HISTORY_NAME, up_to_step=trainer.step)
        if trainer.history.path is not None:
            trainer.history.save()


def _scratch_copy(out: Path) -> Path:
    """A rank's private directory standing in for ``out``, seeded with ``out``'s JSON records (what
    tasks read back when resuming: ``history.jsonl``, finished chunks' ``.json``)."""
    scratch = dist.scratch_dir()
    if out.is_dir():
        for src in out.rglob("*"):
            if src.is_file() and src.suffix in (".json", ".jsonl") and not src.name.startswith("."):
                dst = scratch / src.relative_to(out)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
    return scratch


def _writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".fieldcraft-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise FieldcraftError(f"{out}: cannot write to the output directory ({exc.strerror or exc})") from None
