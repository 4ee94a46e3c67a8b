"""Evaluation: the COCO box-AP evaluator and the inference loop."""

from typing import Any

from ..data.catalog import MetadataCatalog
from .coco_evaluation import COCOEvaluator, coco_api_from_dicts, instances_to_coco_json
from .evaluator import (
    DatasetEvaluator,
    DatasetEvaluators,
    inference_context,
    inference_on_dataset,
)
from .head_complexity import HeadComplexityEvaluator
from .testing import print_csv_format


def build_evaluator(
    cfg: Any, dataset_name: str, output_dir: str | None = None, distributed: bool = True
) -> DatasetEvaluator:
    """The evaluator for ``dataset_name``'s ``evaluator_type`` metadata (only "coco" exists)."""
    kind = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
    if kind != "coco":
        raise ValueError(f"dataset {dataset_name!r}: no evaluator for evaluator_type {kind!r}")
    return COCOEvaluator(dataset_name, cfg, distributed=distributed, output_dir=output_dir)


__all__ = [
    "COCOEvaluator",
    "DatasetEvaluator",
    "DatasetEvaluators",
    "HeadComplexityEvaluator",
    "build_evaluator",
    "coco_api_from_dicts",
    "inference_context",
    "inference_on_dataset",
    "instances_to_coco_json",
    "print_csv_format",
]
