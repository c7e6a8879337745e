"""Process defaults for fast CPU runs, applied by the command line.

Library users can call :func:`configure_cpu_defaults` *before importing torch* (or set the
same environment variables themselves):

- ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads sleep instead of spinning between parallel
  regions. With the default (active) policy any other load on the machine makes every small
  op cost milliseconds.
- ``THP_MEM_ALLOC_ENABLE=1``: PyTorch's CPU allocator uses transparent huge pages, which cuts
  page faults on large fresh allocations.
- threads: ``torch.set_num_threads`` to the number of usable cores (``os.sched_getaffinity``)
  unless ``OMP_NUM_THREADS`` is set.

Existing environment settings always win.

The numba grid kernels (:mod:`fieldcraft.kernels.grid`) and the row-sparse Adam use
``torch.get_num_threads()`` threads, so :func:`set_threads` / ``torch.set_num_threads``
controls them too. :func:`cpu_autocast` offers bf16 autocast for wide MLPs (see
``docs/performance.md`` for its speed and PSNR cost).
"""

from __future__ import annotations

import os


def configure_cpu_defaults() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    os.environ.setdefault("KMP_BLOCKTIME", "0")


def set_threads() -> int:
    """Set torch's intra-op threads to the usable cores (unless OMP_NUM_THREADS is set)."""
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            n = os.cpu_count() or 1
        torch.set_num_threads(max(1, n))
    return torch.get_num_threads()


def cpu_autocast(enabled: bool = True):
    """Context manager running matmuls in bfloat16 on the CPU (weights stay float32).

    Worth it for wide MLPs (256 units) on CPUs with AMX/AVX512-BF16; no gain for 64-wide
    ones. Cast outputs back with ``.float()`` before the loss. ``enabled=False`` is a no-op.

    >>> import torch
    >>> with cpu_autocast():
    ...     torch.nn.Linear(4, 4)(torch.ones(2, 4)).dtype
    torch.bfloat16
    """
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def fast_kernels_enabled() -> bool:
    """False when the environment sets ``FIELDCRAFT_KERNELS=reference``: grid encodings and the
    row-sparse Adam then run their PyTorch reference code on the CPU too, the code a GPU runs
    (tests use it to cover that path on machines without one). Read at each call."""
    return os.environ.get("FIELDCRAFT_KERNELS", "fast").lower() != "reference"


def default_device() -> str:
    """``"cuda"`` when available, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
