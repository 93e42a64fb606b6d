"""Public import path kept for user code and README examples: the code lives in ``spd_tune.core.checkpoint``."""

from .core.checkpoint import (
    FORMAT,
    Checkpoint,
    CheckpointError,
    WriteFault,
    load_checkpoint,
    save_checkpoint,
)

__all__ = [
    "FORMAT",
    "Checkpoint",
    "CheckpointError",
    "WriteFault",
    "load_checkpoint",
    "save_checkpoint",
]
