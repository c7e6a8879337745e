"""Fields: encoding + network from one config, and named presets."""

from fieldcraft.fields.field import Field, FieldConfig
from fieldcraft.fields.presets import IMAGE_PRESETS, image_field_config

__all__ = ["IMAGE_PRESETS", "Field", "FieldConfig", "image_field_config"]
