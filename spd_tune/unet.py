"""Public import path kept for user code and README examples: the code lives in ``spd_tune.core.unet``."""

from .core.unet import (
    PRESETS,
    AttentionBlock,
    Downsample,
    GroupNorm32,
    ResBlock,
    Stage,
    UNet,
    UNetConfig,
    Upsample,
    norm,
    parameter_count,
    preset_config,
    timestep_embedding,
    zero_init,
)

__all__ = [
    "PRESETS",
    "AttentionBlock",
    "Downsample",
    "GroupNorm32",
    "ResBlock",
    "Stage",
    "UNet",
    "UNetConfig",
    "Upsample",
    "norm",
    "parameter_count",
    "preset_config",
    "timestep_embedding",
    "zero_init",
]
