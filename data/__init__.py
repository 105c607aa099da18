"""Data: datasets by name and multi-view augmentation recipes (imports no model or loss code)."""

from data.batched import BatchMultiView
from data.datasets import (
    DATASETS,
    DatasetError,
    DatasetInfo,
    WithIndex,
    build_dataset,
    dataset_info,
)
from data.eval_transforms import BatchEval, eval_transform
from data.per_sample import MultiViewTransform
from data.views import ViewSpec, byol_asymmetric, multicrop, original_view, simclr_symmetric

__all__ = [
    "DATASETS",
    "BatchEval",
    "BatchMultiView",
    "DatasetError",
    "DatasetInfo",
    "MultiViewTransform",
    "ViewSpec",
    "WithIndex",
    "build_dataset",
    "byol_asymmetric",
    "dataset_info",
    "eval_transform",
    "multicrop",
    "original_view",
    "simclr_symmetric",
]
