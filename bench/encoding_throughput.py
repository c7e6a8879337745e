"""Grid-encoding throughput: forward, forward+backward, forward+backward+optimizer step.

Usage: ``python bench/encoding_throughput.py [--json PATH] [--threads N] [--reps R]``

Configurations (issue 3): 3-D hash grid L=16, F=2, T=2^19, N_min=16, N_max=2048 and a 2-D
hash grid L=16, F=2, T=2^16, at 2^16 and 2^18 uniform random points, for every backend
available: ``torch`` (the pure-PyTorch reference, stepped with ``torch.optim.Adam``) and
``fast`` (numba kernels, stepped with the row-sparse Adam of ``fieldcraft.train.row_sparse_adam``).
Figures are millions of points per second of wall time (best of ``--reps``). The last line
printed is the fast backend's 3-D fwd+bwd+step figure at 2^18 points.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from fieldcraft.runtime import configure_cpu_defaults

configure_cpu_defaults()

import torch

from fieldcraft.encodings.dispatch import grid_encode
from fieldcraft.encodings.hashgrid import HashGridConfig
from fieldcraft.runtime import set_threads
from fieldcraft.train.row_sparse_adam import RowSparseAdam

CONFIGS = {
    "3d": (3, HashGridConfig(n_levels=16, n_features=2, log2_table_size=19, base_resolution=16, max_resolution=2048)),
    "2d": (2, HashGridConfig(n_levels=16, n_features=2, log2_table_size=16, base_resolution=16, max_resolution=2048)),
}
SIZES = (2**16, 2**18)


def available_backends() -> list[str]:
    out = ["torch"]
    try:
        from fieldcraft.encodings.grid_autograd import _fallback_reason

        if _fallback_reason(3, 2) is None:
            out.append("fast")
    except ImportError:
        pass
    return out


def best_time(fn, reps: int) -> tuple[float, float]:
    """Best wall time and best process CPU time (all threads) of ``reps`` calls, in seconds."""
    fn()  # warm-up (compilation, first-touch of buffers)
    best, best_cpu = float("inf"), float("inf")
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best, best_cpu


def measure(backend: str, dim: int, cfg: HashGridConfig, n: int, reps: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    layout = cfg.layout(dim)
    table = torch.nn.Parameter(torch.empty(layout.n_rows, cfg.n_features).uniform_(-1e-4, 1e-4, generator=gen))
    u = torch.rand(n, dim, generator=gen)
    g = torch.randn(n, layout.n_levels * cfg.n_features, generator=gen)
    if backend == "fast":
        opt = RowSparseAdam([{"params": [table], "sparse_rows": True}], lr=1e-2, betas=(0.9, 0.99), eps=1e-15)
    else:
        opt = torch.optim.Adam([table], lr=1e-2, betas=(0.9, 0.99), eps=1e-15)

    def fwd():
        with torch.no_grad():
            grid_encode(u, table, layout, backend)

    def fwd_bwd():
        opt.zero_grad(set_to_none=True)
        grid_encode(u, table, layout, backend).backward(g)

    def fwd_bwd_step():
        fwd_bwd()
        opt.step()

    r = reps if backend == "fast" else 1
    times = {name: best_time(fn, r) for name, fn in
             (("fwd", fwd), ("fwd_bwd", fwd_bwd), ("fwd_bwd_step", fwd_bwd_step))}
    return {"backend": backend, "dim": dim, "n_points": n, "threads": torch.get_num_threads(),
            "levels": layout.n_levels, "features": cfg.n_features, "log2_table_size": cfg.log2_table_size,
            **{f"{k}_mpts": n / t[0] / 1e6 for k, t in times.items()},
            **{f"{k}_ms": t[0] * 1e3 for k, t in times.items()},
            # CPU seconds of all threads: under load, n / (cpu / threads) estimates a quiet machine
            **{f"{k}_cpu_ms": t[1] * 1e3 for k, t in times.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--json", default=os.path.join(here, "results", "encoding_throughput.json"))
    ap.add_argument("--threads", type=int, default=None, help="threads (default: usable cores)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions of the fast backend (best kept)")
    ap.add_argument("--backends", default=None, help="comma list, default: all available")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    else:
        set_threads()
    backends = args.backends.split(",") if args.backends else available_backends()
    rows = []
    print(f"threads={torch.get_num_threads()}  (M points/s, best of {args.reps}; torch: 1 timed run)")
    print(f"{'backend':8} {'grid':4} {'points':>8} {'fwd':>8} {'fwd+bwd':>8} {'+step':>8}   CPU ms fwd/+bwd/+step")
    for name, (dim, cfg) in CONFIGS.items():
        for n in SIZES:
            for backend in backends:
                rec = measure(backend, dim, cfg, n, args.reps)
                rows.append(rec)
                print(f"{backend:8} {name:4} {n:8d} {rec['fwd_mpts']:8.3f} {rec['fwd_bwd_mpts']:8.3f} "
                      f"{rec['fwd_bwd_step_mpts']:8.3f}   {rec['fwd_cpu_ms']:.0f}/{rec['fwd_bwd_cpu_ms']:.0f}/"
                      f"{rec['fwd_bwd_step_cpu_ms']:.0f}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump({"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                   "load_average": os.getloadavg(), "torch": torch.__version__, "results": rows}, fh, indent=2)
    key = [r for r in rows if r["backend"] == "fast" and r["dim"] == 3 and r["n_points"] == 2**18]
    if not key:
        print("fast backend unavailable", file=sys.stderr)
        return 1
    print(f"fwd+bwd+step Mpts/s: {key[0]['fwd_bwd_step_mpts']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
