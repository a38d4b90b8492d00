"""Datasets, subsets and input policies."""

from robust_transfer.data.datasets import (
    DATASETS,
    DatasetInfo,
    ImageArrays,
    data_root,
    dataset_available,
    dataset_info,
    dataset_names,
    load_dataset,
)
from robust_transfer.data.subsets import balanced_subset
from robust_transfer.data.torchdata import as_image_arrays
from robust_transfer.data.transforms import InputPolicy, default_policy

__all__ = [
    "DATASETS", "DatasetInfo", "ImageArrays", "InputPolicy", "as_image_arrays", "balanced_subset",
    "data_root", "dataset_available", "dataset_info", "dataset_names", "default_policy", "load_dataset",
]
