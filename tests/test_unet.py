import pytest
import torch

from spd_tune.unet import PRESETS, UNet, UNetConfig, parameter_count


def _active(model: UNet) -> UNet:
    """Fresh UNets output zeros (zero-initialised last conv); give every zero layer weights to compare."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


def test_cifar10_preset_has_the_reference_parameter_count():
    assert abs(parameter_count(UNet.from_preset("cifar10")) - 52.5e6) < 0.1e6


def test_imagenet64_preset_builds_at_64px():
    model = UNet.from_preset("imagenet64")
    assert model.config.channel_mult == (1, 2, 3, 4) and model.config.image_size == 64
    assert parameter_count(model) > parameter_count(UNet.from_preset("cifar10"))


@pytest.mark.parametrize(
    "overrides",
    [dict(), dict(channels=48, num_heads=3), dict(in_channels=1, out_channels=1), dict(image_size=24, attention_resolutions=(12,)),
     dict(image_size=8, channel_mult=(1, 1, 2, 2), attention_resolutions=(2, 1)), dict(use_scale_shift_norm=False)],
)
def test_any_size_and_channel_count(overrides):
    model = _active(UNet.from_preset("micro", **overrides))
    cfg = model.config
    x = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size)
    out = model(x, torch.tensor([0.0, 999.0]))
    assert out.shape == (2, cfg.out_channels, cfg.image_size, cfg.image_size)
    assert bool(torch.isfinite(out).all()) and out.abs().sum() > 0


def test_output_depends_on_time_and_input():
    model = _active(UNet.from_preset("micro"))
    x = torch.randn(1, 3, 16, 16)
    a, b = model(x, torch.tensor([10.0])), model(x, torch.tensor([900.0]))
    assert not torch.allclose(a, b)
    assert not torch.allclose(a, model(x + 0.1, torch.tensor([10.0])))


def test_channels_last_gives_the_same_output():
    model = _active(UNet.from_preset("tiny"))
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([5.0, 500.0])
    expected = model(x, t)
    model = model.to(memory_format=torch.channels_last)
    out = model(x.contiguous(memory_format=torch.channels_last), t)
    assert torch.allclose(out, expected, atol=1e-5)


def test_bf16_autocast_stays_close_to_fp32():
    model = _active(UNet.from_preset("tiny"))
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([5.0, 500.0])
    expected = model(x, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t)
    assert bool(torch.isfinite(out).all())
    assert (out.float() - expected).norm() / expected.norm() < 0.05


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = _active(UNet.from_preset("micro"))
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([5.0, 500.0])
    expected = model(x, t)
    compiled = torch.compile(model)
    assert torch.allclose(compiled(x, t), expected, atol=1e-4)


def test_gradients_reach_every_parameter():
    model = UNet.from_preset("micro")
    x = torch.randn(2, 3, 16, 16)
    target = torch.randn(2, 3, 16, 16)
    (model(x, torch.tensor([1.0, 2.0])) - target).square().mean().backward()
    assert model.out[-1].weight.grad.abs().sum() > 0  # the zero-initialised output conv still learns
    _active(model).train()
    model.zero_grad()
    (model(x, torch.tensor([1.0, 2.0])) - target).square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_preset_and_config_errors():
    with pytest.raises(ValueError, match="unknown UNet preset"):
        UNet.from_preset("resnet")
    with pytest.raises(ValueError, match="unknown UNet option"):
        UNet.from_preset("tiny", chanels=64)
    with pytest.raises(ValueError, match="attention_resolutions"):
        UNetConfig(image_size=32, attention_resolutions=(12,))
    with pytest.raises(ValueError, match="divisible by 2"):
        UNetConfig(image_size=36)
    with pytest.raises(ValueError, match="num_heads"):
        UNetConfig(channels=30, num_heads=4)
    with pytest.raises(ValueError, match="dropout"):
        UNetConfig(dropout=1.0)


def test_presets_are_valid_configs():
    assert set(PRESETS) >= {"cifar10", "imagenet64", "tiny", "micro"}
    assert PRESETS["cifar10"].dropout == 0.3 and PRESETS["cifar10"].attention_resolutions == (16, 8)
