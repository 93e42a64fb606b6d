"""Model FLOPs, counted by torch's FlopCounterMode (2 per multiply-add), and the accelerator peaks that turn them
into a utilisation (MFU) or a cost estimate. The one FLOP counter of the package: training's MFU and the search's
cost table both use it."""

from __future__ import annotations

from collections.abc import Callable

import torch

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched by device-name substring.
PEAK_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


def peak_bf16_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def count_flops(run: Callable[[], object]) -> float:
    """The FLOPs of what ``run()`` computes; on meta tensors it costs no memory and needs no weights."""
    from torch.utils.flop_counter import FlopCounterMode  # a submodule ``import torch`` does not load

    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


def unet_flops_per_image(model: torch.nn.Module, image_size: int, channels: int = 3, *, train: bool) -> float:
    """Forward (``train=False``) or forward + backward FLOPs of one image through a UNet ``model(x, t)``, on the
    model's device (``meta`` included). Counted at batch 2 and halved."""
    device = next(model.parameters()).device
    x, t = torch.zeros(2, channels, image_size, image_size, device=device), torch.zeros(2, device=device)

    def step() -> None:
        out = model(x, t)
        if train:
            out.float().square().mean().backward()

    flops = count_flops(step) / 2
    if train and device.type != "meta":
        model.zero_grad(set_to_none=True)
    return flops


def train_flops_per_image(model: torch.nn.Module, image_size: int, channels: int = 3) -> float:
    """Forward + backward FLOPs of one image."""
    return unet_flops_per_image(model, image_size, channels, train=True)
