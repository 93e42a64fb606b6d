import pickle

import numpy as np
import pytest
import torch

from spd_tune.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from spd_tune.sample import main as sample_main
from spd_tune.sample import sample_checkpoint
from spd_tune.sampling import SamplerConfig
from spd_tune.schedule import DDPMSchedule, ProcessConfig, SPDSchedule
from spd_tune.unet import UNet


@pytest.fixture
def checkpoint_path(tmp_path):
    torch.manual_seed(0)
    model = UNet.from_preset("micro")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    ema = {k: v + 0.001 for k, v in model.state_dict().items()}
    ckpt = Checkpoint(unet=model.config, process=ProcessConfig("spd", 50, m=2.5), model=model.state_dict(), ema=ema,
                      extra={"kimg": 1.5})
    return save_checkpoint(tmp_path / "ckpt" / "model.pt", ckpt)


def test_round_trip_rebuilds_the_same_model_and_process(checkpoint_path):
    ckpt = load_checkpoint(checkpoint_path)
    assert ckpt.process == ProcessConfig("spd", 50, m=2.5) and ckpt.extra == {"kimg": 1.5}
    raw, schedule = ckpt.build(use_ema=False)
    ema, _ = ckpt.build(use_ema=True)
    assert isinstance(schedule, SPDSchedule) and schedule.spectrum.m == 2.5 and schedule.steps == 50
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1.0, 500.0])
    assert not raw.training and not torch.allclose(raw(x, t), ema(x, t))
    assert torch.equal(raw.state_dict()["input_conv.weight"], ckpt.model["input_conv.weight"])
    assert not list(checkpoint_path.parent.glob("*.tmp"))  # written via rename


def test_ddpm_process_builds_the_baseline():
    assert isinstance(ProcessConfig("ddpm", 100, ddpm_schedule="cosine").build(32), DDPMSchedule)
    with pytest.raises(ValueError, match="kind"):
        ProcessConfig("edm")
    with pytest.raises(ValueError, match="steps"):
        ProcessConfig(steps=2)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_bad_checkpoints_are_clear_errors(tmp_path, checkpoint_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(checkpoint_path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an spd-tune checkpoint"):
        load_checkpoint(foreign)
    # a pickle that would run code is refused by weights_only=True
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"format": "spd-tune-checkpoint/1", "x": pickle.loads(pickle.dumps(np.random.default_rng()))}, f)
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)


def test_checkpoint_from_another_model_is_refused(tmp_path, checkpoint_path):
    ckpt = load_checkpoint(checkpoint_path)
    other = Checkpoint(unet=UNet.from_preset("tiny").config, process=ckpt.process, model=ckpt.model)
    path = save_checkpoint(tmp_path / "other.pt", other)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path).build()


def test_sample_cli_writes_uint8_images_independent_of_batch_size(tmp_path, checkpoint_path, capsys):
    out = tmp_path / "samples.npz"
    assert sample_main([str(checkpoint_path), "--n", "5", "--steps", "4", "--batch-size", "2",
                        "--out", str(out), "--device", "cpu"]) == 0
    with np.load(out) as f:
        images, seeds = f["images"], f["seeds"]
    assert images.dtype == np.uint8 and images.shape == (5, 16, 16, 3) and seeds.tolist() == [0, 1, 2, 3, 4]
    again, _ = sample_checkpoint(checkpoint_path, 5, sampler=SamplerConfig(steps=4), batch_size=5)
    assert np.array_equal(images, again)
    assert images.std() > 0


def test_sample_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    assert sample_main([str(tmp_path / "nope.pt"), "--n", "2", "--out", str(tmp_path / "s.npz")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint not found" in err and "Traceback" not in err
