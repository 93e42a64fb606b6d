"""Training images: the loaders (CIFAR-10, ImageNet-64, image folders, the dead-leaves demo) and the sharded
batches each worker draws."""

from ..errors import DataError
from .loaders import (
                      DATASETS,
                      IMAGE_SUFFIXES,
                      DataConfig,
                      ShardedBatches,
                      check_available,
                      default_data_root,
                      load_cifar10,
                      load_image_folder,
                      load_imagenet64,
                      load_images,
                      to_model_range,
                      to_uint8,
)

__all__ = ["DATASETS", "IMAGE_SUFFIXES", "DataConfig", "DataError", "ShardedBatches", "check_available",
           "default_data_root", "load_cifar10", "load_image_folder", "load_images", "load_imagenet64",
           "to_model_range", "to_uint8"]
