"""Model FLOPs and the accelerator peaks that turn them into a utilisation (MFU)."""

from __future__ import annotations

import torch

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched by device-name substring.
PEAK_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


def peak_bf16_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def train_flops_per_image(model: torch.nn.Module, image_size: int, channels: int = 3) -> float:
    """Forward + backward FLOPs of one image (2 per multiply-add), counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.zeros(2, channels, image_size, image_size, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x, torch.zeros(2, device=device)).float().square().mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2
