"""COCO-style box AP with pycocotools."""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import logging
import math
import os
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tabulate import tabulate

from ..data.build import skip_bad_data
from ..data.catalog import DatasetCatalog, MetadataCatalog
from ..data.datasets import load_coco_api
from ..data.datasets.coco import remove_bad_annotations
from ..data.validation import skipping_bad_data
from ..utils import comm
from ..utils.file_io import atomic_write
from .evaluator import DatasetEvaluator

logger = logging.getLogger(__name__)

__all__ = ["COCOEvaluator", "instances_to_coco_json", "coco_api_from_dicts", "BOX_METRICS"]

#: The summary metrics, in the order of ``COCOeval.stats``.
BOX_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
RESULTS_FILE = "coco_instances_results.json"


def instances_to_coco_json(
    instances: Any, image_id: int, contiguous_to_dataset_id: dict[int, int]
) -> list[dict]:
    """COCO result entries ``{image_id, category_id, bbox: XYWH, score}`` of one image.

    ``instances`` has ``pred_boxes`` (XYXY pixels), ``scores``, ``pred_classes`` (contiguous ids).
    """
    if len(instances) == 0:
        return []
    boxes = instances.pred_boxes.tensor.detach().cpu().to(torch.float64).clone()
    boxes[:, 2:] -= boxes[:, :2]
    scores = instances.scores.detach().cpu().tolist()
    classes = instances.pred_classes.detach().cpu().tolist()
    results = []
    for box, score, cls in zip(boxes.tolist(), scores, classes):
        if cls not in contiguous_to_dataset_id:
            raise ValueError(
                f"predicted class {cls} of image {image_id} is not a class of the dataset "
                f"(contiguous ids {sorted(contiguous_to_dataset_id)})"
            )
        results.append(
            {
                "image_id": int(image_id),
                "category_id": int(contiguous_to_dataset_id[cls]),
                "bbox": [round(v, 3) for v in box],
                "score": round(float(score), 5),
            }
        )
    return results


def coco_api_from_dicts(dataset_dicts: list[dict], metadata: Any) -> COCO:
    """A pycocotools ``COCO`` ground truth built from dataset dicts (datasets without a json)."""
    to_dataset_id = {
        v: k for k, v in (metadata.get("thing_dataset_id_to_contiguous_id") or {}).items()
    }
    classes = metadata.get("thing_classes")
    if classes is None:
        raise ValueError(
            f"dataset {metadata.name!r} has no thing_classes metadata to evaluate with"
        )
    to_dataset_id = to_dataset_id or {i: i + 1 for i in range(len(classes))}
    images, annotations = [], []
    for d in dataset_dicts:
        images.append(
            {
                "id": d["image_id"],
                "width": d["width"],
                "height": d["height"],
                "file_name": d["file_name"],
            }  # fmt: skip
        )
        for ann in d.get("annotations", []):
            x0, y0, x1, y1 = ann["bbox"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": d["image_id"],
                    "category_id": to_dataset_id[ann["category_id"]],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": int(ann.get("iscrowd", 0)),
                }
            )
    categories = [{"id": to_dataset_id[i], "name": name} for i, name in enumerate(classes)]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _finite_detections(detections: list[dict], dataset_name: str) -> list[dict]:
    """Drop detections with a NaN / infinite box or score (a diverged model), with a warning."""
    kept = [
        d
        for d in detections
        if math.isfinite(d["score"]) and all(math.isfinite(v) for v in d["bbox"])
    ]
    if len(kept) != len(detections):
        logger.warning(
            "%s: dropped %d of %d detections whose box or score is NaN or infinite (did the "
            "model diverge, or are these the wrong weights?)",
            dataset_name,
            len(detections) - len(kept),
            len(detections),
        )
    return kept


def _empty_results(coco_gt: COCO) -> COCO:
    """A results object without any detection (``COCO.loadRes`` cannot take an empty list)."""
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
        "annotations": [],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt


def _percent(value: float) -> float:
    return float("nan") if value < 0 else float(value) * 100


class COCOEvaluator(DatasetEvaluator):
    """Box AP of a detector on a registered COCO-format dataset, computed by pycocotools.

    ``evaluate()`` returns (on the main process) ``{"bbox": {"AP", "AP50", "AP75", "APs", "APm",
    "APl", "AP-<class>", ...}}`` in percent (NaN where a metric has no ground truth), logs them as
    tables, and writes the detections to ``<output_dir>/coco_instances_results.json`` (original
    category ids, XYWH boxes).

    Args:
        dataset_name: a name registered in :data:`~cvpods.data.DatasetCatalog` (the data layer
            registers datasets: :func:`cvpods.data.build_test_loader` or
            :func:`cvpods.data.register_shapes_from_config`; the evaluator never does).
        cfg: if given, ``TEST.DETECTIONS_PER_IMAGE`` (the largest maxDets) and
            ``DATASETS.SKIP_BAD_DATA`` are taken from it.
        distributed: gather the predictions of all processes to the main one before evaluating.
        output_dir: where to write the results file (not written if None).
    """

    def __init__(
        self,
        dataset_name: str,
        cfg: Any = None,
        distributed: bool = True,
        output_dir: str | None = None,
    ) -> None:
        self.dataset_name = dataset_name
        self.distributed = distributed
        self.output_dir = output_dir
        self.max_dets = 100
        skip = False
        if cfg is not None:
            self.max_dets = int(cfg.get("TEST", {}).get("DETECTIONS_PER_IMAGE", 100))
            skip = skip_bad_data(cfg)
        with skipping_bad_data(skip):
            dataset_dicts = DatasetCatalog.get(dataset_name)  # checks / generates the files
        self.metadata = MetadataCatalog.get(dataset_name)
        json_file = self.metadata.get("json_file")
        if json_file and os.path.isfile(json_file):
            self.coco_api = load_coco_api(json_file)
            # Loading the dataset raised on malformed entries unless DATASETS.SKIP_BAD_DATA left
            # them out; leave them out of the ground truth too (pycocotools would choke on them).
            remove_bad_annotations(self.coco_api)
        else:
            self.coco_api = coco_api_from_dicts(dataset_dicts, self.metadata)
        id_map = self.metadata.get("thing_dataset_id_to_contiguous_id")
        if id_map is None:
            id_map = {cat_id: i for i, cat_id in enumerate(sorted(self.coco_api.getCatIds()))}
        self.contiguous_to_dataset_id = {v: k for k, v in id_map.items()}
        self.reset()

    def reset(self) -> None:
        """Drop the detections collected so far."""
        self._predictions: list[dict] = []

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Take one batch: ``inputs[i]["image_id"]`` and ``outputs[i]["instances"]``."""
        for inp, out in zip(inputs, outputs):
            entry = {"image_id": inp["image_id"], "detections": []}
            if "instances" in out:
                entry["detections"] = instances_to_coco_json(
                    out["instances"], inp["image_id"], self.contiguous_to_dataset_id
                )
            self._predictions.append(entry)

    def evaluate(self) -> dict:
        """COCO box AP of the collected detections (see the class docstring); ``{}`` on other
        processes, or when nothing was processed. A ValueError names image ids that are not in
        the ground truth."""
        predictions = self._predictions
        if self.distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        if not predictions:
            logger.warning("COCOEvaluator on %s received no inputs", self.dataset_name)
            return {}
        image_ids = sorted({p["image_id"] for p in predictions})
        unknown = sorted(set(image_ids) - set(self.coco_api.getImgIds()))
        if unknown:
            raise ValueError(
                f"image ids {unknown[:10]} are not in the ground truth of {self.dataset_name!r}"
            )
        detections = [d for p in predictions for d in p["detections"]]
        detections = _finite_detections(detections, self.dataset_name)
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            path = os.path.join(self.output_dir, RESULTS_FILE)
            atomic_write(path, json.dumps(detections, allow_nan=False))  # strict JSON
            logger.info("Wrote %d detections to %s", len(detections), path)
        return {"bbox": self._evaluate_boxes(detections, image_ids)}

    def _evaluate_boxes(self, detections: list[dict], image_ids: list[int]) -> dict[str, float]:
        if detections:
            with contextlib.redirect_stdout(io.StringIO()):
                coco_dt = self.coco_api.loadRes(copy.deepcopy(detections))
        else:
            logger.warning("No detections on %s: every AP is 0", self.dataset_name)
            coco_dt = _empty_results(self.coco_api)
        coco_eval = COCOeval(self.coco_api, coco_dt, "bbox")
        coco_eval.params.imgIds = image_ids
        if self.max_dets != 100:
            coco_eval.params.maxDets = [1, 10, self.max_dets]
        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        logger.info("pycocotools summary on %s:\n%s", self.dataset_name, summary.getvalue())
        results = {name: _percent(v) for name, v in zip(BOX_METRICS, coco_eval.stats)}
        results.update(self._per_category_ap(coco_eval))
        self._log_tables(results)
        return results

    def _per_category_ap(self, coco_eval: COCOeval) -> dict[str, float]:
        """``{"AP-<class>": AP}`` (IoU 0.5:0.95, all areas, max detections), in percent."""
        precision = coco_eval.eval["precision"]  # [T, R, K, A, M], -1 where undefined
        classes = self.metadata.get("thing_classes")
        id_map = {v: k for k, v in self.contiguous_to_dataset_id.items()}
        per_class = {}
        for k, cat_id in enumerate(coco_eval.params.catIds):
            values = precision[:, :, k, 0, -1]
            values = values[values > -1]
            ap = float(np.mean(values)) * 100 if values.size else float("nan")
            if classes is not None and cat_id in id_map:
                name = classes[id_map[cat_id]]
            else:
                name = self.coco_api.loadCats(cat_id)[0]["name"]
            per_class[f"AP-{name}"] = ap
        return per_class

    def _log_tables(self, results: dict[str, float]) -> None:
        summary = tabulate(
            [[f"{results[m]:.3f}" for m in BOX_METRICS]],
            headers=BOX_METRICS,
            tablefmt="pipe",
            disable_numparse=True,
        )
        logger.info("Box AP on %s (percent):\n%s", self.dataset_name, summary)
        pairs = [(k[3:], f"{v:.3f}") for k, v in results.items() if k.startswith("AP-")]
        columns = 3
        rows = [
            list(itertools.chain(*pairs[i : i + columns])) for i in range(0, len(pairs), columns)
        ]
        headers = ["category", "AP"] * min(columns, max(len(pairs), 1))
        table = tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True)
        logger.info("Per-category box AP on %s:\n%s", self.dataset_name, table)
