"""Strict JSON outputs: ``metrics.json``, checkpoint headers, histories.

JSON has no infinities or NaNs; Python's ``json`` writes them anyway (``Infinity``, ``NaN``),
which strict readers (browsers, ``jq``) reject. :func:`finite` replaces them: ``inf`` becomes the
string ``"inf"`` (a PSNR of an exact reconstruction), ``-inf`` ``"-inf"`` and NaN ``null``.

>>> finite({"psnr": float("inf"), "loss": float("nan"), "n": [1, 2.5]})
{'psnr': 'inf', 'loss': None, 'n': [1, 2.5]}
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with non-finite floats replaced (see module docstring), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``value`` (non-finite numbers replaced)."""
    return json.dumps(finite(value), indent=indent, allow_nan=False)


def write_json(path: str | Path, value: Any) -> Path:
    """Write ``value`` as strict, indented JSON, atomically."""
    from fieldcraft.io.checkpoint import atomic_write_bytes

    atomic_write_bytes(Path(path), (dumps(value) + "\n").encode())
    return Path(path)
