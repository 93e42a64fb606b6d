"""Inception features for FID: pytorch-fid's InceptionV3 exactly as pytorch-fid builds and feeds it.

Inputs are uint8 images (NHWC), turned into [0, 1] floats; the network resizes to 299x299 bilinearly and
maps to [-1, 1] itself. The pool3 block (2048-d) with the real weights is FID; any other block or the
seeded random-weight network is a Fréchet distance under another name (see ``metric_name``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .stats import RunningStats
from .weights import FID_SHA256_PREFIX, ResolvedWeights, load_state_dict, resolve_fid_weights

BLOCK_BY_DIMS = {64: 0, 192: 1, 768: 2, 2048: 3}


def metric_name(dims: int, real_fid_weights: bool) -> str:
    """The one naming rule: 'fid' only for pool3 (2048-d) features of pytorch-fid's real weights; every other
    setting names itself, so a proxy score can never be read as FID."""
    if real_fid_weights:
        return "fid" if dims == 2048 else f"fd_inception{dims}"
    return f"proxy_fd{dims}"


@dataclass(frozen=True)
class FeatureSpec:
    """Which features to compare. ``weights="random"`` is the offline proxy: pytorch-fid's network with
    seeded kaiming-initialised weights, needing no download (its scores are never called FID)."""

    dims: int = 2048
    weights: str = "pytorch-fid"  # or "random"
    weights_path: str | None = None  # an explicit weights file (else SPD_TUNE_FID_WEIGHTS, hub cache, download)
    seed: int = 0  # of the random weights
    download: bool = True

    def __post_init__(self) -> None:
        if self.dims not in BLOCK_BY_DIMS:
            raise ValueError(f"feature dims={self.dims} must be one of {sorted(BLOCK_BY_DIMS)}")
        if self.weights not in ("pytorch-fid", "random"):
            raise ValueError(f"feature weights={self.weights!r} must be 'pytorch-fid' or 'random'")


def fid_inception_skeleton() -> torch.nn.Module:
    """pytorch-fid's FID Inception architecture without loading any weights."""
    from pytorch_fid import inception as pi

    net = pi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pi.FIDInceptionE_1(1280)
    net.Mixed_7c = pi.FIDInceptionE_2(2048)
    return net


def random_inception_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded kaiming (fan_in, relu) weights: the default init makes pool3 features vanish (~1e-7)."""
    net = fid_inception_skeleton()
    g = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu", generator=g)
    return net.state_dict()


@contextlib.contextmanager
def _weights_for_pytorch_fid(state_dict: dict[str, torch.Tensor]):
    """pytorch-fid's constructor fetches its weights by URL; hand it ours instead (no download possible)."""
    from pytorch_fid import inception as pi

    original = pi.load_state_dict_from_url
    pi.load_state_dict_from_url = lambda *args, **kwargs: state_dict
    try:
        yield
    finally:
        pi.load_state_dict_from_url = original


class InceptionFeatures:
    """uint8 images [N, H, W, 3] -> float64 features [N, dims], batched, on any device."""

    def __init__(self, spec: FeatureSpec = FeatureSpec(), *, device: str | torch.device = "cpu",
                 batch_size: int = 100, sha256_prefix: str = FID_SHA256_PREFIX):
        from pytorch_fid.inception import InceptionV3

        self.spec, self.device, self.batch_size = spec, torch.device(device), batch_size
        self.resolved: ResolvedWeights | None = None
        if spec.weights == "random":
            state = random_inception_state_dict(spec.seed)
            self.weights_id = f"random-kaiming-seed{spec.seed}"
        else:
            self.resolved = resolve_fid_weights(spec.weights_path, download=spec.download, sha256_prefix=sha256_prefix)
            state = load_state_dict(self.resolved)
            self.weights_id = f"sha256:{self.resolved.sha256}"
        with _weights_for_pytorch_fid(state):
            self.net = InceptionV3([BLOCK_BY_DIMS[spec.dims]], resize_input=True, normalize_input=True)
        self.net = self.net.eval().to(self.device)
        if self.device.type == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)

    @property
    def metric_name(self) -> str:
        return metric_name(self.spec.dims, self.resolved is not None and self.resolved.is_fid)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {tuple(images.shape)}")
        out = np.empty((len(images), self.spec.dims), dtype=np.float64)
        for start in range(0, len(images), self.batch_size):
            x = images[start: start + self.batch_size].to(self.device).permute(0, 3, 1, 2).float().div(255.0)
            if self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            feats = self.net(x)[0]
            if feats.shape[-1] != 1 or feats.shape[-2] != 1:
                feats = F.adaptive_avg_pool2d(feats, (1, 1))  # as pytorch-fid's get_activations
            out[start: start + len(x)] = feats.flatten(1).double().cpu().numpy()
        return out

    def stats(self, images: np.ndarray | torch.Tensor, into: RunningStats | None = None) -> RunningStats:
        """Streamed statistics, one batch of features at a time."""
        stats = into if into is not None else RunningStats(self.spec.dims)
        chunk = max(self.batch_size, 500)
        for start in range(0, len(images), chunk):
            stats.update(self(images[start: start + chunk]))
        return stats
