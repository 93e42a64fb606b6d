"""A short offline SPD run: train a small UNet on synthetic 1/f^m images, sample, compare spectra.

Nothing is downloaded. The training images are Gaussian fields with the power spectrum
c1 / (c2 + |f|)^m (the model SPD assumes for natural images), so the run checks the whole chain:
noising, loss, UNet, optimiser and the respaced Fourier-space sampler, and reports how close the
exponent m of the generated images comes to the data's.

    python -m spd_tune.demo --output spd_runs/demo
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .sampling import SamplerConfig, sample
from .checkpoint import Checkpoint, save_checkpoint
from .schedule import ProcessConfig
from .spectrum import fit_spectrum, freq_radius, gaussian_field, log_spectrum_model, power_spectrum
from .unet import UNet


@dataclass(frozen=True)
class DemoConfig:
    output: str = "spd_runs/demo"
    schedule: str = "spd"  # or "ddpm"
    steps: int = 1000  # T
    train_iters: int = 300
    batch: int = 32
    lr: float = 2e-3
    samples: int = 64
    sample_steps: int = 50  # K, respaced
    preset: str = "micro"
    data_m: float = 2.0  # exponent of the synthetic training images
    seed: int = 0


DATA_C1, DATA_C2 = 4.0, 1.0  # pixel std ~0.35 at 16 px, so clipping to [-1, 1] rarely bites


def synthetic_images(count: int, size: int, m: float, generator: torch.Generator) -> torch.Tensor:
    log_d = log_spectrum_model(freq_radius(size), DATA_C1, DATA_C2, m)
    return gaussian_field(count, 3, size, log_d, generator).clamp(-1, 1).float()


def build_process(cfg: DemoConfig, data: torch.Tensor) -> ProcessConfig:
    """SPD with the spectrum fitted to the training data (c2 fixed), as a user would centre a search."""
    if cfg.schedule == "spd":
        fit = fit_spectrum(power_spectrum(data), c2=DATA_C2)
        return ProcessConfig("spd", cfg.steps, m=fit.m, c1=fit.c1, c2=fit.c2)
    if cfg.schedule == "ddpm":
        return ProcessConfig("ddpm", cfg.steps)
    raise ValueError(f"--schedule {cfg.schedule!r} must be 'spd' or 'ddpm'")


def run(cfg: DemoConfig) -> dict:
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    model = UNet.from_preset(cfg.preset)
    size = model.config.image_size
    process = build_process(cfg, synthetic_images(1024, size, cfg.data_m, torch.Generator().manual_seed(cfg.seed + 2)))
    schedule = process.build(size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    data_gen = torch.Generator().manual_seed(cfg.seed)
    losses, start = [], time.perf_counter()
    for it in range(cfg.train_iters):
        x0 = synthetic_images(cfg.batch, size, cfg.data_m, data_gen)
        t = schedule.sample_t(cfg.batch, data_gen)
        loss = schedule.loss(model, x0, t, torch.randn(x0.shape, generator=data_gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (it + 1) % max(1, cfg.train_iters // 10) == 0:
            recent = sum(losses[-20:]) / len(losses[-20:])
            rate = (it + 1) * cfg.batch / (time.perf_counter() - start)
            print(f"iter {it + 1:5d}  loss {recent:.4f}  {rate:7.1f} img/s", flush=True)
    model.eval()
    images = sample(model, schedule, list(range(cfg.samples)), (3, size, size),
                    config=SamplerConfig("ancestral", steps=cfg.sample_steps))
    data = synthetic_images(cfg.samples * 4, size, cfg.data_m, torch.Generator().manual_seed(cfg.seed + 1))
    data_fit = fit_spectrum(power_spectrum(data), c2=DATA_C2)
    sample_fit = fit_spectrum(power_spectrum(images.clamp(-1, 1)), c2=DATA_C2)
    summary = {
        "first_loss": sum(losses[:20]) / len(losses[:20]),
        "last_loss": sum(losses[-20:]) / len(losses[-20:]),
        "data_m": data_fit.m,
        "sample_m": sample_fit.m,
        "finite": bool(torch.isfinite(images).all()),
        "seconds": time.perf_counter() - start,
    }
    save_checkpoint(out / "model.pt", Checkpoint(unet=model.config, process=process, model=model.state_dict(),
                                                 extra={"demo": dataclasses.asdict(cfg)}))
    _save_grid(images, out / "samples.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f}; spectrum exponent m: "
          f"data {data_fit.m:.2f}, samples {sample_fit.m:.2f}; wrote {out}")
    return summary


def _save_grid(images: torch.Tensor, path: Path) -> None:
    from torchvision.utils import save_image

    save_image((images.clamp(-1, 1) + 1) / 2, path, nrow=8)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m spd_tune.demo", description=__doc__.split("\n\n")[0])
    for field in dataclasses.fields(DemoConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    return run(DemoConfig(**vars(args)))


if __name__ == "__main__":
    main()
