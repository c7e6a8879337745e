"""The training core: budgets, schedules, the loop, checkpoints, resume, the NaN guard, signals."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from fieldcraft.config import Config
from fieldcraft.errors import FieldcraftError
from fieldcraft.io import checkpoint as ckpt
from fieldcraft.io.images import read_png
from fieldcraft.metrics import psnr
from fieldcraft.train import Budget, Diverged, History, Objective, OptimizerConfig, Run, ScheduleConfig
from fieldcraft.train.optimizers import OptimizerConfig as _Opt  # noqa: F401  (registered config type)


class Regression(Objective):
    """Fit ``y = x @ w_true`` with random mini-batches: exercises generators, resume and the guard."""

    def __init__(self, seed=0, nan_at=None):
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(512, 4, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        self.generators = {"batches": torch.Generator().manual_seed(seed)}
        self.nan_at = nan_at

    def loss(self, model, step):
        idx = torch.randint(0, 512, (32,), generator=self.generators["batches"])
        loss = torch.mean((model(self.x[idx]) - self.y[idx]) ** 2)
        if self.nan_at is not None and step >= self.nan_at:
            loss = loss * float("nan")
        return loss, {}


def _model():
    torch.manual_seed(0)
    return nn.Linear(4, 1)


def _fit(out, steps, *, resume=False, overwrite=False, objective=None, lr=0.05, given=()):
    requested = OptimizerConfig(lr=lr, schedule=ScheduleConfig(kind="exp", final_factor=0.1))
    run = Run.open(out, "toy", requested, resume=resume, given=given, budget=Budget(steps=steps), overwrite=overwrite)
    model = _model()
    trainer = run.trainer(model, objective or Regression(), run.config, progress=False, warm_up=False)
    return trainer.run(), model


def test_budget_steps_and_seconds():
    assert Budget(steps=10).progress(5, 100.0) == 0.5
    assert Budget(steps=10, seconds=2.0).progress(1, 1.5) == 0.75
    assert Budget(steps=10).done(10, 0.0) and not Budget(seconds=1.0).done(99, 0.5)
    with pytest.raises(FieldcraftError):
        Budget()
    with pytest.raises(FieldcraftError):
        Budget(seconds=float("nan"))
    with pytest.raises(FieldcraftError):
        Budget(steps=-1)


def test_time_budget_counts_fitting_time_only(tmp_path):
    class Slow(Regression):
        def loss(self, model, step):
            time.sleep(0.01)
            return super().loss(model, step)

    run = Run.open(tmp_path, "toy", OptimizerConfig(lr=0.01), budget=Budget(seconds=0.1))
    outcome = run.trainer(_model(), Slow(), run.config, progress=False).run()
    assert 0.1 <= outcome.seconds < 0.25 and 5 <= outcome.step <= 11 and outcome.stopped is None


def test_schedules_are_functions_of_step_and_budget():
    assert ScheduleConfig().factor(7, 0.3) == 1.0
    assert math.isclose(ScheduleConfig(kind="exp", final_factor=0.1).factor(0, 1.0), 0.1)
    assert math.isclose(ScheduleConfig(kind="per_step", decay_per_step=0.5).factor(3, 0.0), 0.125)
    assert ScheduleConfig(kind="steps", milestones=(0.5,), gamma=0.1).factor(0, 0.5) == pytest.approx(0.1)
    assert ScheduleConfig(warmup_steps=4).factor(1, 0.0) == 0.5
    with pytest.raises(FieldcraftError, match="unknown learning-rate schedule"):
        ScheduleConfig(kind="linear")
    cfg = OptimizerConfig(lr=0.1, schedule=ScheduleConfig(kind="steps", milestones=(0.25, 0.5)))
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_loop_writes_history_and_checkpoints(tmp_path):
    outcome, model = _fit(tmp_path, 40)
    assert outcome.step == 40 and outcome.history.steps == list(range(1, 41))
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert len(lines) == 40 and json.loads(lines[-1])["step"] == 40
    tensors, meta = ckpt.load_checkpoint(tmp_path)
    assert meta["format"] == ckpt.FORMAT_VERSION and meta["step"] == 40 and meta["budget"] == {"steps": 40, "seconds": None}
    assert {"rng.torch", "rng.batches", "field.weight", "optim.0.exp_avg"} <= set(tensors)
    assert outcome.history.values[-1]["loss"] < outcome.history.values[0]["loss"]


def test_resume_continues_exactly(tmp_path):
    """Stopping at step 15 and resuming to 40 gives the same weights as 40 steps straight: model,
    optimiser, schedule position and the batch generator all come back."""
    class StopAt15(Regression):
        def after_step(self, step):
            if step == 14:
                os.kill(os.getpid(), signal.SIGINT)  # the loop finishes the step, saves and returns

    straight, m1 = _fit(tmp_path / "a", 40)
    stopped, _ = _fit(tmp_path / "b", 40, objective=StopAt15())
    assert stopped.stopped == "SIGINT" and stopped.step == 15
    resumed, m2 = _fit(tmp_path / "b", 40, resume=True)
    assert resumed.step == 40
    torch.testing.assert_close(m2.weight, m1.weight, rtol=0, atol=0)
    assert resumed.history.steps == list(range(1, 41))


def test_resume_keeps_stored_settings_and_says_so(tmp_path, capsys):
    _fit(tmp_path, 10, lr=0.05)
    _, model = _fit(tmp_path, 12, resume=True, lr=1e6, given=("lr", "quiet"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "keeps the run's stored settings: lr=0.05 (given 1000000.0)" in err[0]
    assert torch.isfinite(model.weight).all()
    assert ckpt.load_checkpoint(tmp_path)[1]["config"]["lr"] == 0.05


def test_run_refuses_what_it_cannot_do(tmp_path):
    _fit(tmp_path / "r", 3)
    with pytest.raises(FieldcraftError, match="already holds a fit's checkpoint"):
        _fit(tmp_path / "r", 3)
    _fit(tmp_path / "r", 3, overwrite=True)
    with pytest.raises(FieldcraftError, match="--resume needs a checkpoint"):
        _fit(tmp_path / "empty", 3, resume=True)
    with pytest.raises(FieldcraftError, match="of task 'toy', not 'other'"):
        Run.open(tmp_path / "r", "other", OptimizerConfig(), resume=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FieldcraftError, match="is a file"):
        _fit(tmp_path / "file", 3)


def test_nan_loss_stops_and_keeps_the_good_checkpoint(tmp_path):
    _fit(tmp_path, 10)
    before = ckpt.load_checkpoint(tmp_path)[0]["field.weight"].clone()
    with pytest.raises(Diverged, match=r"loss nan at step 10; the checkpoint of step 10 was kept"):
        _fit(tmp_path, 20, resume=True, objective=Regression(nan_at=10))
    tensors, meta = ckpt.load_checkpoint(tmp_path)
    assert meta["step"] == 10 and torch.equal(tensors["field.weight"], before)


def test_non_finite_weights_are_never_saved(tmp_path):
    class Explode(Regression):
        def after_step(self, step):
            self.model.weight.data.fill_(float("inf"))

    run = Run.open(tmp_path, "toy", OptimizerConfig(lr=0.01), budget=Budget(steps=5))
    obj = Explode()
    obj.model = _model()
    with pytest.raises(Diverged, match="weights became non-finite"):
        run.trainer(obj.model, obj, run.config, progress=False, warm_up=False, checkpoint_seconds=0.0).run()
    assert torch.isfinite(ckpt.load_checkpoint(tmp_path)[0]["field.weight"]).all()


def test_warm_up_leaves_model_and_generators_untouched(tmp_path):
    run = Run.open(tmp_path, "toy", OptimizerConfig(lr=0.1), budget=Budget(steps=1))
    model, obj = _model(), Regression()
    trainer = run.trainer(model, obj, run.config, progress=False)
    w, state = model.weight.detach().clone(), obj.generators["batches"].get_state()
    trainer.warm_up()
    assert torch.equal(model.weight, w) and torch.equal(obj.generators["batches"].get_state(), state)


def test_history_file_drops_records_after_the_checkpoint(tmp_path):
    h = History(path=tmp_path / "h.jsonl")
    for s in range(1, 6):
        h.append(s, s * 0.1, {"loss": 1.0 / s, "psnr": float("inf") if s == 5 else 10.0})
    with open(tmp_path / "h.jsonl", "a") as f:
        f.write('{"step": 6, "seco')  # a line cut short by a kill
    back = History.load(tmp_path / "h.jsonl", up_to_step=3)
    assert back.steps == [1, 2, 3]
    assert History.load(tmp_path / "h.jsonl").steps == [1, 2, 3, 4, 5]
    assert "Infinity" not in (tmp_path / "h.jsonl").read_text()


def test_newer_checkpoint_format_is_refused(tmp_path):
    ckpt.save_checkpoint(tmp_path, {"a": torch.ones(1)}, {"task": "x", "format": ckpt.FORMAT_VERSION + 1})
    with pytest.raises(FieldcraftError, match="newer than this fieldcraft"):
        ckpt.load_checkpoint(tmp_path)


def test_checkpoint_header_is_strict_json(tmp_path):
    ckpt.save_checkpoint(tmp_path, {"a": torch.ones(1)}, {"task": "x", "best": float("inf"), "bad": float("nan")})
    text = (tmp_path / "config.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert ckpt.load_checkpoint(tmp_path)[1]["best"] == "inf"


def _cli(*args, **kw):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen([sys.executable, "-m", "fieldcraft", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **kw)


def _wait_for_steps(path, steps, timeout=120.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists() and len(path.read_text().splitlines()) >= steps:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path}: fewer than {steps} steps logged after {timeout} s")


@pytest.mark.slow
def test_sigint_saves_checkpoint_and_outputs_then_resume_continues(tmp_path):
    out = tmp_path / "run"
    p = _cli("fit", "image", "sample:camera", "--size", "64", "--steps", "1000000", "--out", str(out), "--quiet")
    _wait_for_steps(out / "history.jsonl", 20)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr
    assert "Traceback" not in stderr and "SIGINT" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped"] == "SIGINT" and metrics["psnr"] > 20
    assert read_png(out / "reconstruction.png").shape == (64, 64, 1)
    stopped_at = ckpt.load_checkpoint(out)[1]["step"]
    assert stopped_at == metrics["steps"] >= 20
    q = _cli("fit", "image", "sample:camera", "--resume", "--steps", str(stopped_at + 5), "--out", str(out), "--quiet")
    stdout, stderr = q.communicate(timeout=120)
    assert q.returncode == 0, stderr
    assert json.loads((out / "metrics.json").read_text())["steps"] == stopped_at + 5


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    """kill -9 at an arbitrary moment (checkpoints every 0.2 s): the directory keeps a loadable
    checkpoint, --resume completes, and the result equals a run that was never killed."""
    steps = "300"
    base = ["fit", "image", "sample:camera", "--size", "64", "--steps", steps, "--quiet"]
    killed = tmp_path / "killed"
    p = _cli(*base, "--out", str(killed), "--checkpoint-every", "0.2")
    _wait_for_steps(killed / "history.jsonl", 120)
    p.kill()
    p.wait()
    meta = ckpt.load_checkpoint(killed)[1]
    assert 0 <= meta["step"] < 300
    r = _cli("fit", "image", "sample:camera", "--resume", "--out", str(killed), "--quiet")
    assert r.wait(timeout=300) == 0, r.stderr.read()
    s = _cli(*base, "--out", str(tmp_path / "straight"))
    assert s.wait(timeout=300) == 0, s.stderr.read()
    a = json.loads((killed / "metrics.json").read_text())
    b = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert a["steps"] == b["steps"] == 300
    assert abs(a["psnr"] - b["psnr"]) < 0.05
    ra, rb = read_png(killed / "reconstruction.png"), read_png(tmp_path / "straight" / "reconstruction.png")
    assert psnr(ra, rb) > 50  # same image up to float round-off of multi-threaded sums


def test_divergent_learning_rate_ends_in_one_line(tmp_path, capsys):
    from fieldcraft.cli import main

    code = main(["fit", "image", "sample:camera", "--size", "32", "--lr", "1e6", "--steps", "50", "--out",
                 str(tmp_path / "x"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "diverged" in err[0] and "Traceback" not in err[0]
    assert np.isfinite(ckpt.load_checkpoint(tmp_path / "x")[0]["field.network.linears.0.weight"].numpy()).all()
