"""kill -9 in the middle of ``fit sdf``: the directory keeps a loadable checkpoint, ``--resume``
finishes the run, and the result matches a run that was never killed."""

import json
import os
import subprocess
import sys
import time

import pytest

from fieldcraft.io import checkpoint as ckpt

STEPS = 120
LOG_EVERY = 10  # fit sdf logs every 10 steps (one history.jsonl line each)


def _cli(*args):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen([sys.executable, "-m", "fieldcraft", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _finish(p, timeout=600):
    stdout, stderr = p.communicate(timeout=timeout)
    assert p.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr


def _wait_for_lines(path, lines, p, timeout=300.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists() and len(path.read_text().splitlines()) >= lines:
            return
        if p.poll() is not None:
            raise AssertionError(f"the fit ended before it was killed: {p.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"{path}: fewer than {lines} lines after {timeout} s")


@pytest.mark.slow
def test_sigkill_fit_sdf_then_resume_matches_an_uninterrupted_run(tmp_path):
    import trimesh

    mesh = tmp_path / "sphere.obj"
    trimesh.creation.icosphere(subdivisions=3).export(mesh)
    fixed = ["--resolution", "64", "--no-render", "--quiet", "--device", "cpu"]
    base = ["fit", "sdf", str(mesh), "--steps", str(STEPS), "--batch-size", "2048", *fixed]

    killed = tmp_path / "killed"
    p = _cli(*base, "--out", str(killed), "--checkpoint-every", "0.2")
    _wait_for_lines(killed / "history.jsonl", 4, p)  # 40 steps in
    p.kill()
    p.wait()
    step = ckpt.load_checkpoint(killed)[1]["step"]
    assert 0 <= step < STEPS
    assert not (killed / "metrics.json").exists()

    _finish(_cli("fit", "sdf", str(mesh), "--resume", "--out", str(killed), *fixed))
    _finish(_cli(*base, "--out", str(tmp_path / "straight")))

    a = json.loads((killed / "metrics.json").read_text())
    b = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert a["steps"] == b["steps"] == STEPS
    assert ckpt.load_checkpoint(killed)[1]["step"] == STEPS
    assert "mesh_error" not in a and "mesh_error" not in b
    assert abs(a["chamfer_l1"] - b["chamfer_l1"]) <= 0.05 * b["chamfer_l1"], (a["chamfer_l1"], b["chamfer_l1"])
    assert abs(a["final_loss"] - b["final_loss"]) <= 0.05 * b["final_loss"] + 1e-6, (a["final_loss"], b["final_loss"])
    history = [json.loads(line)["step"] for line in (killed / "history.jsonl").read_text().splitlines()]
    assert history == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))  # records past the checkpoint were dropped
