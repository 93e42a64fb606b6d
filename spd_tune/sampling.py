"""Public import path kept for user code and README examples: the code lives in ``spd_tune.core.samplers``."""

from .core.samplers import (
    SAMPLERS,
    SamplerConfig,
    SamplerKind,
    ancestral_step,
    ddim_step,
    sample,
    uses_eta,
)

__all__ = [
    "SAMPLERS", "SamplerConfig", "SamplerKind", "ancestral_step", "ddim_step", "sample", "uses_eta",
]
