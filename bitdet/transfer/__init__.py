"""Classification transfer with the BiT-HyperRule: datasets, transforms, MixUp, few-shot, VTAB."""

from bitdet.transfer import vtab as _vtab  # noqa: F401 -- registers the vtab/<task> datasets
from bitdet.transfer.datasets import (
    DATASETS,
    DatasetSpec,
    build_dataset,
    get_spec,
    list_datasets,
    register_dataset,
)
from bitdet.transfer.fewshot import mean_std, parse_shots, sample_few_shot
from bitdet.transfer.mixup import MixUp
from bitdet.transfer.transforms import TransformedDataset, eval_transform, train_transform

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "MixUp",
    "TransformedDataset",
    "build_dataset",
    "eval_transform",
    "get_spec",
    "list_datasets",
    "mean_std",
    "parse_shots",
    "register_dataset",
    "sample_few_shot",
    "train_transform",
]
