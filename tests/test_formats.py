"""Formats refuse what they cannot read: checkpoint headers and configs under fuzzing, no pickle."""

import json
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldcraft.config import Config
from fieldcraft.errors import FieldcraftError
from fieldcraft.io import checkpoint as ckpt

SRC = Path(__file__).resolve().parents[1] / "src" / "fieldcraft"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def test_no_code_path_loads_pickle():
    """Nothing in the package can unpickle: no pickle/joblib/dill imports, no torch.load, no
    numpy loads that allow pickles."""
    pattern = re.compile(r"\bimport pickle\b|\bfrom pickle\b|\bcPickle\b|\bjoblib\b|\bdill\b|torch\.load\(|"
                         r"allow_pickle\s*=\s*True|\bshelve\b|\bmarshal\.load")
    offenders = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()))
def test_fuzzed_checkpoint_headers_fail_cleanly(tmp_path, header):
    """Any bytes as the safetensors JSON header: a FieldcraftError naming the file, or a valid load."""
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    try:
        tensors, meta = ckpt.load_checkpoint(tmp_path)
    except FieldcraftError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
    else:
        assert isinstance(meta, dict)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(meta=json_values)
def test_fuzzed_checkpoint_metadata_fails_cleanly(tmp_path, meta):
    """Any JSON as the fieldcraft metadata of a valid safetensors file."""
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, str(tmp_path / "checkpoint.safetensors"), metadata={"fieldcraft": json.dumps(meta)})
    try:
        _, got = ckpt.load_checkpoint(tmp_path)
    except FieldcraftError as exc:
        assert "checkpoint" in str(exc)
    else:
        assert got == meta


def _registered_configs():
    import dataclasses

    import fieldcraft.encodings  # noqa: F401  (registers the config types)
    import fieldcraft.fields.field  # noqa: F401
    import fieldcraft.fields.radiance  # noqa: F401
    import fieldcraft.train  # noqa: F401
    from fieldcraft.config import _REGISTRY

    def one(name):
        fields = [f.name for f in dataclasses.fields(_REGISTRY[name])]
        return st.fixed_dictionaries({"type": st.just(name)},
                                     optional={f: json_values for f in fields} | {"bogus": json_values})

    return st.sampled_from(sorted(_REGISTRY)).flatmap(one)


@settings(max_examples=300, deadline=None)
@given(data=json_values | _registered_configs())
def test_fuzzed_configs_fail_cleanly(data):
    """Config.from_dict on arbitrary JSON: a config or a FieldcraftError, never another exception."""
    try:
        cfg = Config.from_dict(data)
    except FieldcraftError:
        return
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("cut", [0, 7, 8, 40, -10])
def test_truncated_checkpoints_fail_cleanly(tmp_path, cut):
    ckpt.save_checkpoint(tmp_path, {"a": torch.arange(64.0)}, {"task": "x"})
    path = tmp_path / "checkpoint.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(FieldcraftError, match="checkpoint"):
        ckpt.load_checkpoint(tmp_path)
