"""The sampler's per-image noise (core/noise.py): exact integer hashing, batch invariance, and the statistics of
a standard normal with no correlation across images, elements or draws."""

import math

import torch

from spd_tune.core.noise import ImageNoise, _mix_int, mix32


def test_the_hash_is_exact_and_matches_its_host_twin():
    words = torch.tensor([0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xDEADBEEF, 0xFFFFFFFF], dtype=torch.int64)
    mixed = mix32(words)
    assert mixed.tolist() == [_mix_int(int(w)) for w in words]
    assert bool(((mixed >= 0) & (mixed <= 0xFFFFFFFF)).all())
    # a bijection: 2^16 distinct inputs give 2^16 distinct outputs
    assert len(set(mix32(torch.arange(1 << 16, dtype=torch.int64)).tolist())) == 1 << 16


def _draws(seeds, shape=(3, 8, 8), count=3):
    noise = ImageNoise(seeds, shape, torch.device("cpu"), torch.float32)
    return [noise.draw() for _ in range(count)]


def test_an_images_noise_depends_on_its_seed_alone():
    alone = _draws([7])
    batch = _draws([3, 7, 11, 2**40 + 5])
    for a, b in zip(alone, batch):
        assert torch.equal(a[0], b[1])  # the same bits, whatever the batch
    assert not torch.equal(batch[0][0], batch[0][2]) and not torch.equal(batch[0][1], batch[1][1])
    # all 64 bits of the seed count
    far = _draws([7 + 2**40], count=1)[0]
    assert not torch.equal(far[0], alone[0][0])


def test_odd_sizes_and_float64():
    noise = ImageNoise([1, 2], (1, 3, 5), torch.device("cpu"), torch.float64)
    z = noise.draw()
    assert z.shape == (2, 1, 3, 5) and z.dtype == torch.float64 and torch.isfinite(z).all()


def test_noise_is_standard_normal_and_uncorrelated_across_images_elements_and_draws():
    n_images, shape, n_draws = 256, (3, 16, 16), 4
    draws = _draws(range(10_000, 10_000 + n_images), shape, n_draws)
    z = torch.stack(draws).double()  # [draws, images, C, H, W]
    flat = z.reshape(-1)
    n = flat.numel()  # 786k values
    se = 1 / math.sqrt(n)
    assert abs(flat.mean().item()) < 5 * se
    assert abs(flat.var().item() - 1) < 5 * math.sqrt(2) * se
    assert abs(((flat - flat.mean()) ** 3).mean().item()) < 5 * math.sqrt(15) * se  # skewness of N(0, 1)
    assert abs((flat ** 4).mean().item() - 3) < 5 * math.sqrt(96) * se  # kurtosis of N(0, 1)
    # tails: P(|z| > 3) = 0.0027
    tail = (flat.abs() > 3).double().mean().item()
    assert abs(tail - 0.0026998) < 5 * math.sqrt(0.0027 / n)
    vectors = z.reshape(n_draws, n_images, -1)
    d = vectors.shape[-1]

    def corr(a, b):  # per-pair correlations over the elements: each ~ N(0, 1/d) when independent
        a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
        return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))

    limit = 6 / math.sqrt(d)
    across_images = corr(vectors[:, :-1], vectors[:, 1:])  # neighbouring seeds
    across_draws = corr(vectors[:-1], vectors[1:])  # consecutive steps of the same image
    assert across_images.abs().max().item() < limit and across_draws.abs().max().item() < limit
    # their spread is that of independent vectors (1/sqrt(d)), not smaller or larger
    for c in (across_images, across_draws):
        assert 0.8 < c.std().item() * math.sqrt(d) < 1.2
    # neighbouring elements of one image (lag 1 along the flattened image, and the two Box-Muller halves)
    lag = corr(vectors[..., :-1].reshape(-1, d - 1)[None], vectors[..., 1:].reshape(-1, d - 1)[None])
    assert abs(lag.mean().item()) < 5 / math.sqrt(d * n_draws * n_images)

