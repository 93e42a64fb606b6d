"""Training images: the loaders (CIFAR-10, ImageNet-64, image folders, the dead-leaves demo) and the sharded
batches each worker draws."""

from ..errors import DataError
from .loaders import (
    IMAGE_SUFFIXES,
    ShardedBatches,
    default_data_root,
    load_cifar10,
    load_image_folder,
    load_imagenet64,
    to_model_range,
    to_uint8,
)
from .registry import DATASETS, GAUSS_FD, REGISTRY, DataConfig, DataSet, check_available, dataset, load_images

__all__ = ["DATASETS", "GAUSS_FD", "IMAGE_SUFFIXES", "REGISTRY", "DataConfig", "DataError", "DataSet",
           "ShardedBatches", "check_available", "dataset", "default_data_root", "load_cifar10", "load_image_folder",
           "load_images", "load_imagenet64", "to_model_range", "to_uint8"]
