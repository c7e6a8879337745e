"""Fields: encoding + network from one config, and named presets.

The names below load their modules on first use (PEP 562), so ``fieldcraft.fields.presets``
(preset names for the command line's help) can be imported without PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fieldcraft.fields.field import Field, FieldConfig
    from fieldcraft.fields.plenoxels import PlenoxelField, PlenoxelFieldConfig
    from fieldcraft.fields.presets import IMAGE_PRESETS, image_field_config

__all__ = ["IMAGE_PRESETS", "Field", "FieldConfig", "PlenoxelField", "PlenoxelFieldConfig", "image_field_config"]
_HOME = {"Field": "field", "FieldConfig": "field", "IMAGE_PRESETS": "presets", "image_field_config": "presets",
         "PlenoxelField": "plenoxels", "PlenoxelFieldConfig": "plenoxels"}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"fieldcraft.fields.{_HOME[name]}"), name)
    raise AttributeError(f"module 'fieldcraft.fields' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
