"""Named field presets for 2-D signals (images), after the papers that introduced them.

| preset | encoding | network | reference |
|---|---|---|---|
| ``hash`` (default) | hash grid, L=16, F=2, N_min=16, N_max = longer image side (pixel density) | 64 x 2 ReLU | Instant-NGP (image config, sized to the image) |
| ``siren`` | identity | 4 x 256 sine layers, omega_0 = 30, values in [-1, 1] | SIREN image fitting |
| ``relu-pe`` | NeRF positional encoding, L=10 | 256 x 4 ReLU, sigmoid out | NeRF / FF paper baseline |
| ``fourier`` | Gaussian Fourier features, m=256, sigma=10 | 256 x 4 ReLU, sigmoid out | Tancik et al. 2020 |
| ``gauss`` | identity | 256 x 4 Gaussian, a=0.05, values in [-1, 1] | Ramasinghe & Lucey 2022 |
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fieldcraft.errors import FieldcraftError

if TYPE_CHECKING:
    from fieldcraft.fields.field import FieldConfig

IMAGE_PRESETS = ("hash", "siren", "relu-pe", "fourier", "gauss")
DEFAULT_IMAGE_PRESET = "hash"
# (Adam learning rate, per-step learning-rate decay) of each image preset, from the papers' image
# experiments; the MLP papers keep the rate constant, the hash grid decays it by 0.998 a step.
IMAGE_PRESET_OPTIMIZATION = {"hash": (1e-2, 0.998), "siren": (1e-4, 1.0), "relu-pe": (1e-3, 1.0),
                             "fourier": (1e-3, 1.0), "gauss": (1e-3, 1.0)}


def image_field_config(preset: str, channels: int, resolution: int = 256, seed: int = 0) -> FieldConfig:
    """Field config of an image preset for ``channels`` output values.

    ``resolution`` is the longer side of the image in pixels; only ``hash`` uses it (its finest
    level gets one cell per pixel, so super-resolved renders interpolate smoothly). ``seed`` seeds random encodings (Fourier features).
    """
    from fieldcraft.encodings import (
        FourierFeaturesConfig,
        FrequencyEncodingConfig,
        HashGridConfig,
        IdentityEncodingConfig,
    )
    from fieldcraft.fields.field import FieldConfig
    from fieldcraft.networks import MLPConfig

    scale, offset = 1.0, 0.0
    if preset == "hash":
        enc = HashGridConfig(n_levels=16, n_features=2, log2_table_size=18, base_resolution=16,
                             max_resolution=max(32, resolution))
        net = MLPConfig(hidden_width=64, hidden_layers=2, activation="relu")
    elif preset == "siren":
        enc = IdentityEncodingConfig()
        # explore_siren: Siren(hidden_features=256, hidden_layers=3) = 4 sine layers + linear output
        net = MLPConfig(hidden_width=256, hidden_layers=4, activation="sine", first_omega_0=30.0, hidden_omega_0=30.0)
        scale, offset = 0.5, 0.5
    elif preset == "relu-pe":
        enc = FrequencyEncodingConfig(n_frequencies=10, include_input=True)
        net = MLPConfig(hidden_width=256, hidden_layers=4, activation="relu", output_activation="sigmoid")
    elif preset == "fourier":
        enc = FourierFeaturesConfig(n_features=256, sigma=10.0, seed=seed)
        net = MLPConfig(hidden_width=256, hidden_layers=4, activation="relu", output_activation="sigmoid")
    elif preset == "gauss":
        enc = IdentityEncodingConfig()
        net = MLPConfig(hidden_width=256, hidden_layers=4, activation="gaussian", gaussian_a=0.05)
        scale, offset = 0.5, 0.5
    else:
        raise FieldcraftError(f"unknown preset {preset!r} (choose from {', '.join(IMAGE_PRESETS)})")
    return FieldConfig(in_dim=2, out_dim=channels, encoding=enc, network=net, output_scale=scale, output_offset=offset)
