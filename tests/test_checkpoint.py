"""Checkpoints: safetensors + JSON metadata, atomic replacement, optimiser state round trip;
the training loop's budgets."""

import json

import pytest
import torch

import fieldcraft
from fieldcraft.errors import FieldcraftError
from fieldcraft.io import checkpoint as ckpt
from fieldcraft.train.optimizers import build_optimizer, load_optimizer_state, optimizer_state


def test_roundtrip_with_optimizer_state(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model, 1e-2)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    t, m = optimizer_state(opt)
    ckpt.save_checkpoint(tmp_path, {**ckpt.module_tensors(model, "field"), **t}, {"task": "x", "optimizer": m})
    tensors, meta = ckpt.load_checkpoint(tmp_path)
    assert meta["fieldcraft_version"] == fieldcraft.__version__ and meta["task"] == "x"
    assert json.loads((tmp_path / "config.json").read_text())["task"] == "x"
    model2 = torch.nn.Linear(3, 2)
    opt2 = build_optimizer(model2, 1e-2)
    ckpt.load_module_tensors(model2, tensors, "field")
    load_optimizer_state(opt2, tensors, meta["optimizer"])
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    # identical next step from the restored optimiser
    x = torch.randn(4, 3)
    for mod, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        mod(x).sum().backward()
        o.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, {"a": torch.ones(3)}, {"step": 1})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path, {"a": torch.zeros(3)}, {"step": 2})
    tensors, meta = ckpt.load_checkpoint(tmp_path)
    assert meta["step"] == 1 and torch.equal(tensors["a"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors", "config.json"]


def test_corrupt_or_missing_checkpoint_is_one_line(tmp_path):
    with pytest.raises(FieldcraftError, match="no checkpoint"):
        ckpt.load_checkpoint(tmp_path)
    (tmp_path / "checkpoint.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(FieldcraftError, match="unreadable checkpoint"):
        ckpt.load_checkpoint(tmp_path)


@pytest.mark.parametrize("encoding", ["hash", "frequency"])
def test_build_loaded_equals_build_then_load(encoding):
    """Building on the meta device and assigning the checkpoint's tensors gives the same module as
    an ordinary build + load, including when a non-persistent buffer forces the fallback."""
    from fieldcraft.encodings import FrequencyEncodingConfig, HashGridConfig
    from fieldcraft.fields import FieldConfig
    from fieldcraft.networks import MLPConfig

    enc = HashGridConfig(n_levels=4, log2_table_size=10) if encoding == "hash" else FrequencyEncodingConfig(n_frequencies=4)
    config = FieldConfig(in_dim=3, out_dim=1, encoding=enc, network=MLPConfig(hidden_width=16, hidden_layers=1))
    trained = config.build()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    tensors = ckpt.module_tensors(trained, "field")
    loaded = ckpt.build_loaded(config.build, tensors, "field")
    assert not any(t.is_meta for t in (*loaded.parameters(), *loaded.buffers()))
    x = torch.rand(32, 3) * 2 - 1
    torch.testing.assert_close(loaded(x), trained(x), rtol=0, atol=0)
