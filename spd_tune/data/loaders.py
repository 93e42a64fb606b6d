"""Image data sets as uint8 arrays in memory, and the batches each training worker draws from them.

Every loader returns ``uint8 [N, H, W, 3]`` (NHWC, the on-disk layout of CIFAR-10 and downsampled ImageNet);
scaling to [-1, 1] and the random horizontal flip happen per batch on the way to the model. Nothing here
downloads unless asked to (``download=True``, CIFAR-10 only), and a missing folder is a clear error that
names the layout expected.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
def default_data_root() -> Path:
    """Where downloadable data sets go when no --data-dir is given: $SPD_TUNE_DATA or ~/.cache/spd_tune/data."""
    return Path(os.environ.get("SPD_TUNE_DATA") or Path.home() / ".cache" / "spd_tune" / "data")


# --- CIFAR-10 ------------------------------------------------------------------------------------

CIFAR10_LAYOUT = (
    "{root}/cifar-10-batches-py/ with data_batch_1 ... data_batch_5, test_batch and batches.meta "
    "(the python version of CIFAR-10, cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, "
    "unpacked); or pass download=True / --download on a machine with internet access"
)


def load_cifar10(root: str | Path, *, train: bool = True, download: bool = False,
                 md5_overrides: dict[str, str] | None = None) -> np.ndarray:
    """CIFAR-10 through torchvision's own loader and md5 checks, as uint8 [N, 32, 32, 3].

    ``md5_overrides`` (file name -> md5) exists for tests that build a small folder in the real format;
    production keeps torchvision's checksums.
    """
    from torchvision.datasets import CIFAR10

    root = Path(root).expanduser().resolve()
    folder = root / CIFAR10.base_folder
    if not folder.is_dir():
        if not download:
            raise DataError(f"CIFAR-10 not found: expected {CIFAR10_LAYOUT.format(root=root)}")
        _download_cifar10(root)
    cls = CIFAR10
    if md5_overrides:
        def relist(files):
            return [[name, md5_overrides.get(name, md5)] for name, md5 in files]

        cls = type("CIFAR10WithChecksums", (CIFAR10,), {
            "train_list": relist(CIFAR10.train_list),
            "test_list": relist(CIFAR10.test_list),
            "meta": {**CIFAR10.meta, "md5": md5_overrides.get(CIFAR10.meta["filename"], CIFAR10.meta["md5"])},
        })
    try:
        dataset = cls(str(root), train=train, download=False)
    except RuntimeError as err:
        raise DataError(f"CIFAR-10 in {folder} is incomplete or corrupted ({err}); expected "
                        f"{CIFAR10_LAYOUT.format(root=root)}") from None
    return np.ascontiguousarray(dataset.data, dtype=np.uint8)


def _download_cifar10(root: Path) -> None:
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_and_extract_archive

    root.mkdir(parents=True, exist_ok=True)
    try:  # torchvision checks the archive's md5 before unpacking it
        download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
    except Exception as err:  # offline, DNS failure, HTTP error, bad archive
        raise DataError(f"CIFAR-10 is not in {root} and downloading it failed ({type(err).__name__}: {err}); "
                        f"expected {CIFAR10_LAYOUT.format(root=root)}") from None


# --- downsampled ImageNet and image folders -------------------------------------------------------

IMAGENET64_LAYOUT = (
    "{root}/ holding the official downsampled ImageNet 64x64 npz batches (train_data_batch_1.npz ... "
    "train_data_batch_10.npz, val_data.npz; each with 'data' uint8 N x 12288 and 'labels'), or any folder of images"
)


def load_imagenet64(root: str | Path, *, split: str = "train", image_size: int = 64) -> np.ndarray:
    """Official downsampled ImageNet npz batches, or any image folder (centre crop + resize)."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"ImageNet-64 not found: expected {IMAGENET64_LAYOUT.format(root=root)}")
    pattern = "train_data_batch_*.npz" if split == "train" else "val_data*.npz"
    batches = sorted(root.glob(pattern), key=_natural_key)
    if not batches:
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.rglob("*")):
            return load_image_folder(root, image_size)
        raise DataError(f"no {pattern} in {root}: expected {IMAGENET64_LAYOUT.format(root=root)}")
    side = 64
    arrays = []
    for path in batches:
        with np.load(path) as npz:
            if "data" not in npz:
                raise DataError(f"{path} has no 'data' array; expected {IMAGENET64_LAYOUT.format(root=root)}")
            data = npz["data"]
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * side * side:
            raise DataError(f"{path}: 'data' must be uint8 N x {3 * side * side}, got {data.dtype} {data.shape}")
        arrays.append(data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1))  # rows are R, G, B planes
    images = np.ascontiguousarray(np.concatenate(arrays))
    return images if image_size == side else _resize_all(images, image_size)


def load_image_folder(root: str | Path, image_size: int) -> np.ndarray:
    """Every image under ``root`` (sorted, recursive), centre-cropped to a square and resized."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    files = sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    from PIL import Image

    out = np.empty((len(files), image_size, image_size, 3), dtype=np.uint8)
    for i, path in enumerate(files):
        with Image.open(path) as image:
            out[i] = center_crop_resize(image.convert("RGB"), image_size)
    return out


def center_crop_resize(image, size: int) -> np.ndarray:
    """guided-diffusion's recipe: halve with BOX while large, BICUBIC to size, then centre crop."""
    from PIL import Image

    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(max(size, round(x * scale)) for x in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top: top + size, left: left + size]


def _resize_all(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.stack([center_crop_resize(Image.fromarray(im), size) for im in images])


def _natural_key(path: Path) -> list:
    import re

    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", str(path))]


# --- batches for training workers -----------------------------------------------------------------

def to_model_range(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [-1, 1]."""
    return images_u8.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float NCHW in [-1, 1] -> uint8 NHWC, rounded (not truncated) and clipped. Used for samples and data alike."""
    return ((images.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


class ShardedBatches:
    """Global batches of a fixed size, reshuffled every epoch, each worker taking its own slice.

    The permutation and the flips come from (seed, epoch) alone and a global batch is split by rank, so
    the images a step trains on do not depend on the worker count, and any step can be reached directly
    on resume without replaying the data.
    """

    def __init__(self, images: np.ndarray, global_batch: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, flip: bool = True):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise DataError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
        if global_batch % world_size:
            raise DataError(f"global batch {global_batch} is not divisible by {world_size} workers")
        if len(images) < global_batch:
            raise DataError(f"{len(images)} images are fewer than one global batch of {global_batch}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside [0, {world_size})")
        self.images = torch.from_numpy(images)
        self.global_batch, self.rank, self.world_size = global_batch, rank, world_size
        self.seed, self.flip = seed, flip
        self.steps_per_epoch = len(images) // global_batch  # drop_last: every step sees a full batch
        self._cached_epoch: int | None = None

    def _epoch_order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cached_epoch != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(len(self.images), generator=g)
            self._order = (order, torch.rand(len(self.images), generator=g) < 0.5)
            self._cached_epoch = epoch
        return self._order

    def batch(self, step: int) -> torch.Tensor:
        """This worker's share of global step ``step`` as float32 [B, 3, H, W] in [-1, 1]."""
        epoch, within = divmod(step, self.steps_per_epoch)
        order, flips = self._epoch_order(epoch)
        span = slice(within * self.global_batch, (within + 1) * self.global_batch)
        idx, flip = order[span][self.rank:: self.world_size], flips[span][self.rank:: self.world_size]
        x = to_model_range(self.images[idx])
        if self.flip:
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return x


def cifar10_available(root: str | Path | None, split: str, download: bool) -> None:
    """CIFAR-10 is there (downloading it if allowed) and its files pass torchvision's md5 checks."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    root = Path(root or default_data_root()).expanduser().resolve()
    if not (root / CIFAR10.base_folder).is_dir():
        if not download:
            raise DataError(f"CIFAR-10 not found: expected {CIFAR10_LAYOUT.format(root=root)}")
        _download_cifar10(root)
    files = CIFAR10.train_list if split == "train" else CIFAR10.test_list
    for name, md5 in [*files, [CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]:
        if not check_integrity(str(root / CIFAR10.base_folder / name), md5):
            raise DataError(f"CIFAR-10 file {root / CIFAR10.base_folder / name} is missing or corrupted (md5 "
                            f"mismatch); delete {root / CIFAR10.base_folder} to download it again")


def imagenet64_available(root: str | Path, split: str) -> None:
    """The folder holds downsampled ImageNet's npz batches of the split, or at least one image."""
    pattern = "train_data_batch_*.npz" if split == "train" else "val_data*.npz"
    _folder_available(Path(root).expanduser(), IMAGENET64_LAYOUT.format(root=Path(root).expanduser()), pattern)


def image_folder_available(root: str | Path) -> None:
    """The folder holds at least one image."""
    _folder_available(Path(root).expanduser(), "a folder of images", None)


def _folder_available(root: Path, layout: str, pattern: str | None) -> None:
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}; expected {layout}")
    has_batches = pattern is not None and any(root.glob(pattern))
    if not has_batches and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.rglob("*")):
        raise DataError(f"no images in {root}; expected {layout}")
