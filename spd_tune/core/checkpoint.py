"""Model checkpoints: weights plus the configs needed to rebuild the network and its diffusion process.

Saved atomically (write, then rename) and loaded with ``weights_only=True``: a checkpoint holds tensors
and plain JSON-able values only, never pickled objects.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..fsutil import atomic_write
from .schedule import DiffusionSchedule, ProcessConfig
from .unet import UNet, UNetConfig

FORMAT = "spd-tune-checkpoint/1"


@dataclass(frozen=True)
class Checkpoint:
    unet: UNetConfig
    process: ProcessConfig
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # optimiser state, progress, run config, ...

    def build(self, *, use_ema: bool = True, device: torch.device | str = "cpu") -> tuple[UNet, DiffusionSchedule]:
        """The network (EMA weights when present and asked for) in eval mode, and its schedule."""
        model = UNet(self.unet)
        state = self.ema if use_ema and self.ema is not None else self.model
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise CheckpointError(f"checkpoint weights do not fit its UNet config: {str(err).splitlines()[0]}") from None
        return model.to(device).eval(), self.process.build(self.unet.image_size)


@dataclass(frozen=True)
class WriteFault:
    """An injected write failure (reliability tests): ``code`` (an errno) after ``after_bytes`` bytes."""

    code: int = errno.ENOSPC
    after_bytes: int = 65536

    @classmethod
    def named(cls, name: str) -> WriteFault:
        """ENOSPC: the disk fills up part-way through the file; EROFS: the folder cannot be written at all."""
        return cls(errno.ENOSPC, 65536) if name == "ENOSPC" else cls(errno.EROFS, 0)


def save_checkpoint(path: str | Path, ckpt: Checkpoint, *, fault: WriteFault | None = None) -> Path:
    """Write to a temporary file, then rename: a failed write never leaves a partial checkpoint behind."""
    path = Path(path).resolve()
    payload = {
        "format": FORMAT,
        "unet": dataclasses.asdict(ckpt.unet),
        "process": dataclasses.asdict(ckpt.process),
        "model": ckpt.model,
        "ema": ckpt.ema,
        "extra": ckpt.extra,
    }
    with atomic_write(path, fsync=True) as f:
        if fault is None:
            torch.save(payload, f)
        else:
            buffer = io.BytesIO()
            torch.save(payload, buffer)
            f.write(buffer.getbuffer()[:fault.after_bytes])
            f.flush()
            raise OSError(fault.code, f"{os.strerror(fault.code)} (injected fault)", str(path))
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *, mmap: bool = False) -> Checkpoint:
    """A checkpoint, read with ``weights_only=True``; ``mmap`` leaves the tensors on disk until touched."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # a corrupt file, or one that needs unpickling arbitrary objects
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an spd-tune checkpoint (expected format {FORMAT!r})")
    try:
        unet = UNetConfig(**payload["unet"])
        process = ProcessConfig(**payload["process"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path} has an invalid config: {type(err).__name__}: {err}") from None
    return Checkpoint(unet=unet, process=process, model=payload["model"], ema=payload.get("ema"),
                      extra=payload.get("extra") or {})
