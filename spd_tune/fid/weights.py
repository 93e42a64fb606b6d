"""Finding the FID Inception weights: --fid-weights / SPD_TUNE_FID_WEIGHTS, then the torch hub cache, then a download.

Every file is checked against the sha256 prefix in pytorch-fid's file name before it is loaded, and
loaded with ``weights_only=True``. Offline with no file, the error names the file and where to put it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import WeightsError
from ..fsutil import atomic_path

FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_SHA256_PREFIX = "6726825d"
WEIGHTS_ENV = "SPD_TUNE_FID_WEIGHTS"


@dataclass(frozen=True)
class ResolvedWeights:
    path: Path
    sha256: str
    source: str  # "argument", "environment", "hub cache" or "download"

    @property
    def is_fid(self) -> bool:
        """True only for pytorch-fid's real weights: the one case where a score may be called FID."""
        return self.sha256.startswith(FID_SHA256_PREFIX)


def hub_cache_path() -> Path:
    """Where torch hub keeps (and pytorch-fid looks for) the weights: $TORCH_HOME/hub/checkpoints/."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _where_to_put_it() -> str:
    return (f"download {FID_WEIGHTS_URL} on a machine with internet access and either pass it with "
            f"--fid-weights PATH (or {WEIGHTS_ENV}=PATH) or copy it to {hub_cache_path()}")


def _checked(path: Path, source: str, sha256_prefix: str) -> ResolvedWeights:
    if not path.is_file():
        raise WeightsError(f"FID Inception weights not found at {path} (from {source}); {_where_to_put_it()}")
    sha = sha256_of(path)
    if not sha.startswith(sha256_prefix):
        raise WeightsError(f"{path} (from {source}) has sha256 {sha[:16]}..., expected the prefix {sha256_prefix} of "
                           f"{FID_WEIGHTS_FILE}: it is not the pytorch-fid Inception weights or it is corrupted")
    return ResolvedWeights(path.resolve(), sha, source)


def resolve_fid_weights(path: str | Path | None = None, *, download: bool = True,
                        sha256_prefix: str = FID_SHA256_PREFIX) -> ResolvedWeights:
    """Locate and verify the weights file. ``sha256_prefix`` is overridable for tests only, which stage
    random weights; a score from any file whose hash lacks the real prefix is never called FID."""
    if path is not None:
        return _checked(Path(path).expanduser(), "--fid-weights", sha256_prefix)
    if os.environ.get(WEIGHTS_ENV):
        return _checked(Path(os.environ[WEIGHTS_ENV]).expanduser(), WEIGHTS_ENV, sha256_prefix)
    cached = hub_cache_path()
    if cached.is_file():
        return _checked(cached, "the torch hub cache", sha256_prefix)
    if not download:
        raise WeightsError(f"FID Inception weights {FID_WEIGHTS_FILE} not found and downloading is off; "
                           f"{_where_to_put_it()}")
    try:
        with atomic_path(cached) as tmp:
            torch.hub.download_url_to_file(FID_WEIGHTS_URL, str(tmp), hash_prefix=None, progress=True)
            resolved = _checked(tmp, "download", sha256_prefix)
    except WeightsError:
        raise
    except Exception as err:  # no network, DNS failure, HTTP error, ...
        raise WeightsError(f"could not download the FID Inception weights ({type(err).__name__}: {err}); "
                           f"{_where_to_put_it()}") from None
    return ResolvedWeights(cached.resolve(), resolved.sha256, "download")


def load_state_dict(weights: ResolvedWeights) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(weights.path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"cannot read FID Inception weights {weights.path}: {err}") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{weights.path} does not hold a state dict")
    return state
