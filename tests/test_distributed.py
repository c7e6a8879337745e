"""Data-parallel fitting (fieldcraft.train.distributed): 2 CPU ranks on gloo against one process.

The ranks are separate processes started as torchrun starts them (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT in the environment). The multi-rank fits run this file as a script
(``python tests/test_distributed.py worker ...``); the single-process references run in the test
process. After N steps with the same global batch, the checkpoints (weights, optimiser moments,
running averages, occupancy grid) agree to float tolerance."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fieldcraft.io.checkpoint import load_checkpoint

LEGO_MINI = Path(__file__).parent / "data" / "nerf" / "lego_mini"
HERE = Path(__file__).resolve()
SRC = HERE.parents[1] / "src"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_env(rank: int, size: int, port: int) -> dict[str, str]:
    env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size), LOCAL_WORLD_SIZE=str(size),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
               OMP_WAIT_POLICY="PASSIVE", FIELDCRAFT_DIST_TIMEOUT="30")
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    return env


def _launch(args: list[str], size: int = 2) -> list[subprocess.Popen]:
    port = _free_port()
    return [subprocess.Popen([sys.executable, *args], env=_rank_env(r, size, port), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for r in range(size)]


def _wait(procs: list[subprocess.Popen], timeout: float = 120) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        o, e = p.communicate(timeout=timeout)
        out.append((p.returncode, o, e))
    return out


# ------------------------------------------------------------------------------ the fits compared

COMMANDS = {
    "images": ["fit", "images", "sample:digits", "--limit", "5", "--batch-images", "5", "--seed", "2"],
    # meta-learning shards its signals; the latent prior fitted at the end does not (run whole on every rank)
    "functa": ["fit", "functa", "sample:digits", "--limit", "32", "--batch-size", "8", "--width", "32", "--layers",
               "2", "--latent", "16", "--prior-steps", "5", "--encode-steps", "2"],
}


def _nerf_config():
    from fieldcraft.tasks import nerf

    # instant preset, small: occupancy grid updated every 2 steps (random cells after 4), running average;
    # lr 1e-2: at 2e-2 the ranks' differently summed gradients drift past float tolerance within 8 steps
    return nerf.nerf_config("instant", rays=192, target_samples=3000, grid_resolution=16, grid_update_every=2,
                            grid_warmup=4, ema_decay=0.9, seed=3, lr=1e-2)


def _fit(kind: str, out: Path, steps: int) -> None:
    from fieldcraft.train import Budget

    if kind in COMMANDS:  # through the command's handler (as `fieldcraft fit ...` runs it)
        from fieldcraft.cli import build_parser

        args = build_parser().parse_args([*COMMANDS[kind], "--steps", str(steps), "--out", str(out), "--quiet",
                                          "--device", "cpu"])
        args.given = set()
        args.func(args)
    elif kind == "nerf":
        from fieldcraft.tasks import nerf

        nerf.fit(_nerf_config(), LEGO_MINI, out, Budget(steps=steps), progress=False, device="cpu",
                 max_images=4)
    else:
        raise ValueError(kind)


def _worker(kinds: list[str], root: Path, steps: int) -> None:
    """One rank: join the group, run each fit into ``root/<kind>``, report how far this rank's
    state is from rank 0's (printed as JSON)."""
    from fieldcraft.train import distributed

    torch.set_num_threads(1)
    distributed.init("cpu")
    try:
        for kind in kinds:
            _fit(kind, root / kind, steps)
    finally:
        distributed.shutdown()


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> None:
    keys = [k for k in a if k.startswith(prefixes)]
    assert keys and set(keys) == {k for k in b if k.startswith(prefixes)}
    for k in keys:
        if a[k].is_floating_point():
            torch.testing.assert_close(b[k], a[k], rtol=2e-4, atol=2e-5, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_ranks_equal_one_process(tmp_path):
    """fit images, fit functa (and its latent prior) and fit nerf (instant: hash grid with the row-sparse Adam, occupancy grid, running
    average of the weights, adaptive ray count) on 2 gloo ranks end where one process ends with the
    same global batches: weights, Adam moments, averaged weights and occupancy grid to float
    tolerance. Rank 0 alone writes the run; its header records world_size and the global batch; the
    2-rank checkpoint resumes as one process."""
    steps, kinds = 8, ["images", "functa", "nerf"]
    procs = _launch([str(HERE), "worker", str(tmp_path / "two"), str(steps), *kinds])
    torch.set_num_threads(1)
    for kind in kinds:
        _fit(kind, tmp_path / "one" / kind, steps)
    results = _wait(procs)
    for code, _, err in results:
        assert code == 0, err[-2000:]
    for kind, prefix in (("images", "field."), ("functa", "model."), ("functa/prior", "model."), ("nerf", "model.")):
        one, meta1 = load_checkpoint(tmp_path / "one" / kind)
        two, meta2 = load_checkpoint(tmp_path / "two" / kind)
        assert meta1["step"] == meta2["step"] == (5 if kind == "functa/prior" else steps)
        assert "world_size" not in meta1 and meta2["world_size"] == 2 and meta2["global_batch"] > 0
        assert not list((tmp_path / "two" / kind).glob(".*"))  # no temporary file left by a second writer
        _assert_same_state(one, two, (prefix, "optim.", "extra."))
        if kind == "nerf":  # the grid changed over the run, so equality says something
            assert two["model.grid.density"].abs().sum() > 0
            assert meta1["extra"] == meta2["extra"]  # adaptive ray count, rays seen
    metrics = json.loads((tmp_path / "two" / "images" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_batch"] == 5 and metrics["steps"] == steps
    assert "world_size" not in json.loads((tmp_path / "one" / "images" / "metrics.json").read_text())
    assert '"world_size": 2' in results[0][1] and results[1][1] == ""  # rank 0 alone reports
    # the 2-rank checkpoint resumes as one process, and ends where the one-process run resumed ends
    from fieldcraft.tasks import nerf
    from fieldcraft.train import Budget

    for run in ("one", "two"):
        nerf.fit(None, LEGO_MINI, tmp_path / run / "nerf", Budget(steps=steps + 3), resume=True, progress=False,
                 device="cpu", max_images=4)
    one, two = load_checkpoint(tmp_path / "one" / "nerf")[0], load_checkpoint(tmp_path / "two" / "nerf")[0]
    _assert_same_state(one, two, ("model.", "optim."))
    hist = [json.loads(line) for line in (tmp_path / "two" / "nerf" / "history.jsonl").read_text().splitlines()]
    assert hist[-1]["step"] == steps + 3 and hist[-1]["rays"] > 0


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_a_killed_rank_ends_the_job_with_one_line(tmp_path):
    """``python -m fieldcraft fit images`` as 2 ranks (the torchrun environment): killing rank 1
    once training runs ends rank 0 with one error line and exit status 2 within seconds (its peer's
    connection closes; a hung peer would take FIELDCRAFT_DIST_TIMEOUT, 30 s here)."""
    fit = ["-m", "fieldcraft", "fit", "images", "sample:digits", "--limit", "4", "--quiet", "--device", "cpu"]
    # a long fit; rank 1 is killed once training runs (rank 0 has written its first checkpoint)
    procs = _launch([*fit, "--out", str(tmp_path / "killed"), "--steps", "1000000"])
    ckpt = tmp_path / "killed" / "checkpoint.safetensors"
    deadline = time.monotonic() + 60
    while not ckpt.exists() and time.monotonic() < deadline and procs[0].poll() is None:
        time.sleep(0.2)
    assert ckpt.exists(), procs[0].communicate()[1][-2000:]
    time.sleep(0.5)
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    code, _, err = _wait(procs[:1], timeout=60)[0]
    procs[1].wait()
    assert time.monotonic() - t0 < 35
    assert code == 2, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1].startswith("fieldcraft: error: distributed fit: rank 0 of 2") and "Traceback" not in err, err
    assert load_checkpoint(tmp_path / "killed")[1]["step"] >= 0  # the last checkpoint on disk stays valid


def test_shard_splits_a_batch_contiguously_and_single_process_is_unchanged():
    """Outside a process group: the whole batch, weight 1, no collectives."""
    from fieldcraft.train import distributed

    assert distributed.world() == (0, 1) and not distributed.active()
    part = distributed.shard(10)
    assert part.slice == slice(0, 10) and part.fraction == 1.0
    assert distributed.all_sum([1.5, 2.0]) == [1.5, 2.0]
    assert distributed.agree_stop(False, "SIGINT", 3.0) == (False, "SIGINT", 3.0)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":
    _worker(sys.argv[4:], Path(sys.argv[2]), int(sys.argv[3]))
