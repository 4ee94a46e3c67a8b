"""Evaluation: the COCO box-AP evaluator, the head-complexity evaluator and the inference loop."""

from .coco_evaluation import COCOEvaluator, coco_api_from_dicts, instances_to_coco_json
from .evaluator import (
    DatasetEvaluator,
    DatasetEvaluators,
    inference_context,
    inference_on_dataset,
)
from .head_complexity import HeadComplexityEvaluator
from .testing import print_csv_format

__all__ = [
    "COCOEvaluator",
    "DatasetEvaluator",
    "DatasetEvaluators",
    "HeadComplexityEvaluator",
    "coco_api_from_dicts",
    "inference_context",
    "inference_on_dataset",
    "instances_to_coco_json",
    "print_csv_format",
]
