"""Data-parallel fitting on ``torch.distributed``: the few mechanics the training core and the tasks share.

Started by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``), ``fieldcraft fit ...`` joins a process group (:func:`init`: gloo on the CPU, NCCL
on CUDA) and every rank runs the same fit on the same data with the same seeds. Started without
it, nothing here does anything: :func:`world` is ``(0, 1)``, :func:`shard` returns the whole batch
and every collective is skipped.

The contract between a task and the core, per step:

- Every rank draws the *same global batch* a single process would draw (same generator, same
  seed) and computes its loss on its part of it, ``shard(n)``: the contiguous slice
  ``[n r / W, n (r + 1) / W)`` of the ``n`` items (ray, image, point indices) for rank ``r`` of ``W``.
- The loss a rank returns is its *share* of the global batch's loss: the global loss is the sum of
  the ranks' losses. For a mean over the batch that is ``mean over the slice * part.fraction``;
  for a sum over items (``fit images``: a sum of per-image MSEs) it is the sum over the slice.
- The core sums the gradients over the ranks (:func:`all_reduce_gradients`, one all-reduce of a
  flat buffer, grid tables included: they are dense tensors whose untouched rows are zero, so the
  summed gradient touches exactly the rows the global batch touches and the row-sparse Adam gives
  the single-process update). Every rank then steps its own optimiser on identical gradients, so
  parameters, optimiser moments and any per-step state computed from them (running averages,
  occupancy grids) stay identical across ranks, up to the round-off of summing in another order.
- An objective that does not call :func:`shard` is run whole on every rank (its batches are drawn
  alike): the core averages the gradients (``1 / W`` of the sum), so the result is still the
  single process's, with no speed-up (rank 0 says so once).
- Scalars: ``loss`` is summed over the ranks (the global loss); every other scalar is averaged
  with the ranks' batch fractions as weights (a mean over the rank's slice becomes the mean over
  the global batch; a value that is the same on every rank stays itself).
- Stopping: rank 0 decides (:func:`agree_stop`): its budget check, its fitting time (which every
  rank adopts, so time-based schedules agree) and a signal received by any rank stop all of them
  after the same step.
- Rank 0 alone writes the checkpoint and the outputs; the others write theirs to a private
  scratch directory that is removed at exit (:func:`scratch_dir`). A checkpoint does not depend on
  the number of ranks, so ``--resume`` works with another one.
- A rank that dies or hangs: the others' next collective fails (at once when the peer's
  connection closes, else after :func:`timeout_seconds`, ``FIELDCRAFT_DIST_TIMEOUT``) and they exit
  with one line (:class:`~fieldcraft.errors.FieldcraftError`, exit status 2).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from fieldcraft.errors import FieldcraftError

DEFAULT_TIMEOUT_SECONDS = 60.0


def timeout_seconds() -> float:
    """How long a collective waits for a silent peer: ``FIELDCRAFT_DIST_TIMEOUT`` (seconds), default 60."""
    raw = os.environ.get("FIELDCRAFT_DIST_TIMEOUT", "")
    if not raw:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise FieldcraftError(f"FIELDCRAFT_DIST_TIMEOUT={raw!r}: give a number of seconds > 0")
    return value
_STOP_CODES = {1: "SIGINT", 2: "SIGTERM"}


@dataclasses.dataclass(frozen=True)
class Shard:
    """This rank's part of a global batch of ``total`` items: ``slice`` of the indices,
    ``fraction = size / total`` (the weight of its mean in the global mean).

    >>> shard(10).slice, shard(10).fraction
    (slice(0, 10, None), 1.0)
    """

    slice: slice
    size: int
    total: int
    ranks: int = 1

    @property
    def fraction(self) -> float:
        return self.size / self.total if self.total else 1.0 / self.ranks


class _State:
    fraction: float | None = None  # of the last shard() of the current step (None: no shard() call)
    global_batch: int | None = None
    scratch: Path | None = None


_state = _State()


def launched() -> bool:
    """Whether this process was started as one rank of several (``WORLD_SIZE`` > 1 in the environment)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        raise FieldcraftError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r}: not an integer") from None


def active() -> bool:
    """Whether a process group of more than one rank is running."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without a process group."""
    if not active():
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def is_main() -> bool:
    """Rank 0 (or a single process): the one that writes checkpoints and outputs."""
    return world()[0] == 0


def init(device: str) -> str:
    """Join the process group torchrun described (gloo for a CPU ``device``, NCCL for CUDA, timeout
    :func:`timeout_seconds`) and return the device this rank uses (``cuda:LOCAL_RANK`` for ``cuda``)."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise FieldcraftError(f"--device {device!r}: not a torch device (use cpu, cuda, cuda:N)") from None
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FieldcraftError(f"--device {device}: CUDA is not available on this machine")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise FieldcraftError(f"WORLD_SIZE is set but {', '.join(missing)} is not: start ranks with torchrun")
    if not active():
        with collective("joining the process group"):
            torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_seconds()))
    return str(dev)


def shutdown() -> None:
    """Leave the process group (if any) and remove this rank's scratch directory."""
    if _state.scratch is not None:
        shutil.rmtree(_state.scratch, ignore_errors=True)
        _state.scratch = None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        with contextlib.suppress(Exception):
            torch.distributed.destroy_process_group()


@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """Turn the failure of a collective (a peer died, closed its connection or timed out) into
    one line (:class:`FieldcraftError`)."""
    try:
        yield
    except FieldcraftError:
        raise
    except (RuntimeError, ValueError) as exc:  # DistBackendError / DistNetworkError are RuntimeErrors
        rank, size = _rank_size_env()
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise FieldcraftError(f"distributed fit: rank {rank} of {size}: {what} failed ({first}); another rank "
                              f"stopped, died or did not answer within {timeout_seconds():g} s "
                              f"(FIELDCRAFT_DIST_TIMEOUT)") from None


def _rank_size_env() -> tuple[str, str]:
    return os.environ.get("RANK", "?"), os.environ.get("WORLD_SIZE", "?")


# --- sharding
def shard(n: int, allow_empty: bool = False) -> Shard:
    """This rank's contiguous part of a global batch of ``n`` items (sizes differ by at most one);
    the whole batch in a single process. ``allow_empty``: a rank may get no item (else fewer items
    than ranks is an error)."""
    rank, size = world()
    if size > 1 and n < size and not allow_empty:
        raise FieldcraftError(f"a batch of {n} items cannot be split across {size} ranks; use fewer ranks "
                              f"or a larger batch")
    lo, hi = n * rank // size, n * (rank + 1) // size
    part = Shard(slice(lo, hi), hi - lo, n, size)
    _state.fraction, _state.global_batch = part.fraction, n
    return part


def begin_step() -> None:
    """Forget the last step's shard (the core calls this before each ``Objective.loss``)."""
    _state.fraction = None


def step_fraction() -> float | None:
    """The batch fraction of this rank's last :func:`shard` in this step (None: the objective did not shard)."""
    return _state.fraction


def global_batch() -> int | None:
    """Items of the last sharded global batch (rays, images, points), for the run's records."""
    return _state.global_batch


# --- collectives
def all_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sums over the ranks of a few numbers (float64); the values themselves in a single process."""
    if not active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    with collective("summing scalars"):
        torch.distributed.all_reduce(t)
    return t.tolist()


def all_reduce_gradients(model: nn.Module, scale: float = 1.0) -> None:
    """Sum every trainable parameter's gradient over the ranks, in one all-reduce per dtype and device
    (times ``scale``: ``1 / world_size`` averages the gradients of ranks that computed the same batch).

    A gradient that is None on a rank counts as zero there; it stays None only if it is None on
    every rank (so the optimiser skips the parameter exactly as a single process would). Sparse
    gradients are made dense first (the optimisers of fieldcraft take dense ones)."""
    if not active():
        return
    params = [p for p in model.parameters() if p.requires_grad]
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float64)
    with collective("all-reducing gradients"):
        torch.distributed.all_reduce(present)
    groups: dict[tuple[torch.dtype, torch.device], list[nn.Parameter]] = {}
    for p, flag in zip(params, present.tolist()):
        if flag == 0:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        elif p.grad.is_sparse:
            p.grad = p.grad.to_dense()
        groups.setdefault((p.dtype, p.device), []).append(p)
    for ps in groups.values():
        flat = torch.cat([p.grad.reshape(-1) for p in ps])
        with collective("all-reducing gradients"):
            torch.distributed.all_reduce(flat)
        if scale != 1.0:
            flat.mul_(scale)
        offset = 0
        for p in ps:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n


def reduce_scalars(values: dict[str, float], fraction: float | None) -> dict[str, float]:
    """The global step's scalars from each rank's (module docstring): ``loss`` summed, the others
    weighted by ``fraction`` (this rank's share of the batch; ranks without a share count 0)."""
    if not active():
        return values
    keys = sorted(k for k, v in values.items() if isinstance(v, (int, float)))
    w = fraction or 0.0
    local = [float(values[k]) if k == "loss" else (w * float(values[k]) if w > 0 else 0.0) for k in keys]
    local.append(1.0 if "loss" in values else 0.0)
    total = all_sum(local)
    out = dict(values)
    out.update(zip(keys, total[:-1]))
    return out


def agree_stop(done: bool, signal: str | None, seconds: float) -> tuple[bool, str | None, float]:
    """Whether every rank stops now, why, and the fitting time all ranks adopt: rank 0's budget
    check and seconds; a signal received by any rank (SIGINT before SIGTERM)."""
    if not active():
        return done, signal, seconds
    rank, _ = world()
    code = {v: k for k, v in _STOP_CODES.items()}.get(signal or "", 0)
    t = torch.tensor([float(done) if rank == 0 else 0.0, seconds if rank == 0 else 0.0,
                      float(code == 1), float(code == 2)], dtype=torch.float64)
    with collective("agreeing on the stop"):
        torch.distributed.all_reduce(t)
    d, s, sigint, sigterm = t.tolist()
    sig = "SIGINT" if sigint > 0 else "SIGTERM" if sigterm > 0 else None
    return d > 0, sig, s


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's value of ``flag`` on every rank (e.g. whether a checkpoint exists)."""
    if not active():
        return flag
    t = torch.tensor([float(flag)], dtype=torch.float64)
    with collective("agreeing with rank 0"):
        torch.distributed.broadcast(t, 0)
    return bool(t.item() > 0)


def broadcast_module(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (one broadcast per tensor)."""
    if not active():
        return
    with collective("broadcasting the model"), torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            torch.distributed.broadcast(t.data, 0)


def barrier() -> None:
    if active():
        with collective("waiting for the other ranks"):
            torch.distributed.barrier()


def scratch_dir() -> Path:
    """A private directory where a rank other than 0 writes what rank 0 writes to the run directory
    (removed by :func:`shutdown`)."""
    if _state.scratch is None:
        rank, _ = world()
        _state.scratch = Path(tempfile.mkdtemp(prefix=f"fieldcraft-rank{rank}-"))
    return _state.scratch


def max_abs_difference(tensors: Sequence[Tensor]) -> float:
    """Largest difference between this rank's ``tensors`` and rank 0's (0 in a single process):
    a check that the ranks hold the same state."""
    if not active():
        return 0.0
    worst = 0.0
    with collective("comparing states"):
        for t in tensors:
            ref = t.detach().clone()
            torch.distributed.broadcast(ref, 0)
            worst = max(worst, float((ref - t.detach()).abs().max()) if t.numel() else 0.0)
    return _all_max(worst)


def _all_max(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    with collective("comparing states"):
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t.item())
