import hashlib
import pickle

import numpy as np
import pytest
import torch

from spd_tune.data import (
    DataConfig,
    DataError,
    ShardedBatches,
    load_cifar10,
    load_image_folder,
    load_imagenet64,
    load_images,
    to_model_range,
    to_uint8,
)
from spd_tune.data.dead_leaves import cached_dead_leaves, dead_leaves
from spd_tune.spectrum import fit_spectrum, power_spectrum

CIFAR_FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]


def write_fake_cifar10(root, per_batch=4, seed=0):
    """A CIFAR-10 folder in the exact on-disk format (python pickles, str keys, planar rows)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images = {}
    for name in CIFAR_FILES:
        hwc = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        images[name] = hwc
        entry = {"batch_label": name, "labels": rng.integers(0, 10, per_batch).tolist(),
                 "data": hwc.transpose(0, 3, 1, 2).reshape(per_batch, 3072),
                 "filenames": [f"{name}_{i}.png" for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
            "num_cases_per_batch": per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    return images, md5


def test_fake_cifar10_loads_through_torchvision(tmp_path):
    images, md5 = write_fake_cifar10(tmp_path)
    train = load_cifar10(tmp_path, md5_overrides=md5)
    assert train.dtype == np.uint8 and train.shape == (20, 32, 32, 3)
    assert np.array_equal(train, np.concatenate([images[f"data_batch_{i}"] for i in range(1, 6)]))
    assert np.array_equal(load_cifar10(tmp_path, train=False, md5_overrides=md5), images["test_batch"])


def test_cifar10_checksums_are_enforced(tmp_path):
    _, md5 = write_fake_cifar10(tmp_path)
    with pytest.raises(DataError, match="incomplete or corrupted"):
        load_cifar10(tmp_path)  # the real md5s reject the fake files
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    raw = bytearray(batch.read_bytes())
    raw[-10] ^= 0xFF
    batch.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupted"):
        load_cifar10(tmp_path, md5_overrides=md5)


def test_missing_cifar10_names_the_layout(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="cifar-10-batches-py/ with data_batch_1"):
        load_cifar10(tmp_path / "nowhere")
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match="downloading it failed.*cifar-10-batches-py/ with data_batch_1"):
        load_cifar10(tmp_path / "nowhere", download=True)
    # with no --data-dir the download goes to the data root
    monkeypatch.setenv("SPD_TUNE_DATA", str(tmp_path / "dataroot"))
    with pytest.raises(DataError, match="not in .*dataroot and downloading it failed"):
        load_images(DataConfig("cifar10"))
    with pytest.raises(DataError, match="needs a data folder"):
        DataConfig("imagenet64")


def test_imagenet64_npz_batches_and_folder_fallback(tmp_path):
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    npz_dir = tmp_path / "npz"
    npz_dir.mkdir()
    np.savez(npz_dir / "train_data_batch_2.npz", data=hwc[3:].transpose(0, 3, 1, 2).reshape(2, -1), labels=[1, 2])
    np.savez(npz_dir / "train_data_batch_1.npz", data=hwc[:3].transpose(0, 3, 1, 2).reshape(3, -1), labels=[1, 2, 3])
    assert np.array_equal(load_imagenet64(npz_dir), hwc)
    assert load_imagenet64(npz_dir, image_size=32).shape == (5, 32, 32, 3)
    from PIL import Image

    folder = tmp_path / "folder" / "class_a"
    folder.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (80, 120, 3), dtype=np.uint8)).save(folder / "x.png")
    assert load_imagenet64(tmp_path / "folder").shape == (1, 64, 64, 3)
    with pytest.raises(DataError, match="ImageNet-64 not found"):
        load_imagenet64(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no train_data_batch"):
        load_imagenet64(tmp_path / "empty")


def test_image_folder_centre_crops_and_keeps_exact_pixels_at_native_size(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    for i, im in enumerate(images):
        Image.fromarray(im).save(tmp_path / f"img_{i}.png")
    assert np.array_equal(load_image_folder(tmp_path, 32), images)
    Image.fromarray(rng.integers(0, 256, (100, 300, 3), dtype=np.uint8)).save(tmp_path / "wide.jpg")
    assert load_image_folder(tmp_path, 32).shape == (4, 32, 32, 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_image_folder(tmp_path / "empty", 32)


def test_quantisation_rounds_and_inverts_the_model_range():
    levels = torch.arange(256, dtype=torch.uint8).view(1, 16, 16, 1).expand(1, 16, 16, 3).contiguous()
    assert torch.equal(to_uint8(to_model_range(levels)), levels)  # every grey level survives the round trip
    x = torch.tensor([-1.2, -1.0, 0.0, 0.999, 1.5]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert to_uint8(x)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]  # 127.5 rounds to 128, truncation gives 127


def test_sharded_batches_cover_each_global_batch_once_whatever_the_worker_count():
    images = np.zeros((40, 4, 4, 3), dtype=np.uint8)
    images[:, :, :, 0] = np.arange(40)[:, None, None]  # a flip-invariant tag per image
    images[:, :, 0, 1] = 255  # and a left edge, to see flips
    single = ShardedBatches(images, 8, seed=3)
    pair = [ShardedBatches(images, 8, rank=r, world_size=2, seed=3) for r in range(2)]
    for step in (0, 1, 4, 5, 11):
        whole = single.batch(step)
        merged = torch.empty_like(whole)
        merged[0::2], merged[1::2] = (p.batch(step) for p in pair)
        assert torch.equal(merged, whole)  # same images and flips; rank r holds positions r, r + world, ...
    def tags(x):
        return ((x[:, 0, 0, 0] + 1) * 127.5).round().long().tolist()
    first_epoch = [t for step in range(5) for t in tags(single.batch(step))]
    assert sorted(first_epoch) == list(range(40))  # each image exactly once per epoch
    assert tags(single.batch(0)) != tags(single.batch(5))  # reshuffled every epoch
    assert single.steps_per_epoch == 5


def test_flips_are_random_per_image_and_reproducible():
    images = np.zeros((64, 4, 4, 3), dtype=np.uint8)
    images[:, :, 0] = 255  # bright left column
    batches = ShardedBatches(images, 64, seed=0)
    x = batches.batch(0)
    left_bright = x[:, 0, 0, 0] > 0
    assert 10 < int(left_bright.sum()) < 54
    assert torch.equal(x, ShardedBatches(images, 64, seed=0).batch(0))
    assert not ShardedBatches(images, 64, seed=0, flip=False).batch(0)[:, 0, 0, -1].gt(0).any()


def test_sharded_batches_reject_bad_layouts():
    images = np.zeros((10, 4, 4, 3), dtype=np.uint8)
    with pytest.raises(DataError, match="divisible"):
        ShardedBatches(images, 5, world_size=2)
    with pytest.raises(DataError, match="fewer than one global batch"):
        ShardedBatches(images, 16)
    with pytest.raises(DataError, match="rank"):
        ShardedBatches(images, 4, rank=2, world_size=2)


def test_demo_images_are_seeded_and_cached(tmp_path):
    a = dead_leaves(8, 16, seed=0)
    assert a.dtype == np.uint8 and a.shape == (8, 16, 16, 3)
    assert np.array_equal(a, dead_leaves(8, 16, seed=0)) and not np.array_equal(a, dead_leaves(8, 16, seed=1))
    cached = cached_dead_leaves(8, 16, seed=0, cache_dir=tmp_path)
    assert np.array_equal(cached, a) and len(list(tmp_path.glob("*.npz"))) == 1
    assert np.array_equal(cached_dead_leaves(8, 16, seed=0, cache_dir=tmp_path), a)
    assert load_images(DataConfig("demo", image_size=16, limit=8)).shape == (8, 16, 16, 3)


@pytest.mark.parametrize("size", [16, 32])
def test_demo_data_spectrum_exponent_is_in_the_documented_band(size):
    # docs/data.md: m = 2.14-2.20 with c2 = 0.0086 fixed (DC excluded), stable across seeds
    images = to_model_range(torch.from_numpy(dead_leaves(512, size, seed=4)))
    fit = fit_spectrum(power_spectrum(images), c2=0.0086)
    assert 2.0 < fit.m < 2.35
