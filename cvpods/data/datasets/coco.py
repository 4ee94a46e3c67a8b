"""Reading COCO-format detection json files into dataset dicts, and registering them."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

from pycocotools.coco import COCO

from ..catalog import DatasetCatalog, MetadataCatalog

logger = logging.getLogger(__name__)

__all__ = ["load_coco_api", "contiguous_id_map", "load_coco_json", "register_coco_instances"]


def load_coco_api(json_file: str) -> COCO:
    """A pycocotools ``COCO`` object for ``json_file``; a clear error if it is missing or broken."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO annotation file {json_file} does not exist")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(json_file)
    except Exception as exc:  # json errors, missing top-level keys, ...
        raise ValueError(f"cannot read COCO annotation file {json_file}: {exc!r}") from exc


def contiguous_id_map(category_ids: Sequence[int]) -> dict[int, int]:
    """``{dataset category id: contiguous id}`` with contiguous ids ``0..K-1`` in id order."""
    return {cat_id: i for i, cat_id in enumerate(sorted(category_ids))}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _clean_box(ann: dict, height: int, width: int, counts: dict[str, int]) -> list[float] | None:
    """The XYXY box of ``ann`` clipped to the image, or None (and a count) if it is unusable."""
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(map(_is_number, bbox)):
        counts["invalid"] += 1
        return None
    x, y, w, h = (float(v) for v in bbox)
    area = ann.get("area", w * h)
    if w <= 0 or h <= 0 or not _is_number(area) or area <= 0:
        counts["zero_area"] += 1
        return None
    x0, y0, x1, y1 = x, y, x + w, y + h
    cx0, cy0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    if cx1 - cx0 <= 0 or cy1 - cy0 <= 0:
        counts["outside"] += 1
        return None
    if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
        counts["clipped"] += 1
    return [cx0, cy0, cx1, cy1]


def load_coco_json(json_file: str, image_root: str, dataset_name: str | None = None) -> list[dict]:
    """Read a COCO instances json into dataset dicts (see :mod:`cvpods.data.catalog`).

    Category ids become contiguous ids ``0..K-1`` (in the order of the dataset's ids). Annotations
    whose box is malformed or has zero width/height/area are dropped; boxes reaching outside the
    image are clipped to it, or dropped if nothing is left; each of these is counted and logged.
    Crowd annotations are kept with ``"iscrowd": 1`` (the mapper does not use them as targets).
    Images without annotations are kept (training filters them, evaluation needs them).

    If ``dataset_name`` is given, its metadata gets ``thing_classes`` and
    ``thing_dataset_id_to_contiguous_id``.
    """
    coco = load_coco_api(json_file)
    cat_ids = sorted(coco.getCatIds())
    id_map = contiguous_id_map(cat_ids)
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).set(
            thing_classes=[coco.loadCats(i)[0]["name"] for i in cat_ids],
            thing_dataset_id_to_contiguous_id=id_map,
        )

    counts = {"invalid": 0, "zero_area": 0, "outside": 0, "clipped": 0, "crowd": 0}
    dataset_dicts = []
    num_kept = 0
    for image_id in sorted(coco.imgs):
        img = coco.imgs[image_id]
        height, width = int(img["height"]), int(img["width"])
        annotations = []
        for ann in coco.imgToAnns.get(image_id, []):
            if ann.get("ignore", 0):
                continue
            if ann["category_id"] not in id_map:
                raise ValueError(
                    f"{json_file}: annotation {ann.get('id')} of image {image_id} has category_id "
                    f"{ann['category_id']}, which is not among the file's categories {cat_ids}"
                )
            box = _clean_box(ann, height, width, counts)
            if box is None:
                continue
            iscrowd = int(ann.get("iscrowd", 0))
            counts["crowd"] += iscrowd
            annotations.append(
                {"bbox": box, "category_id": id_map[ann["category_id"]], "iscrowd": iscrowd}
            )
        num_kept += len(annotations)
        dataset_dicts.append(
            {
                "file_name": os.path.join(image_root, img["file_name"]),
                "height": height,
                "width": width,
                "image_id": image_id,
                "annotations": annotations,
            }
        )
    logger.info(
        "Loaded %d images with %d annotations (%d crowd) from %s",
        len(dataset_dicts),
        num_kept,
        counts["crowd"],
        json_file,
    )
    dropped = counts["invalid"] + counts["zero_area"] + counts["outside"]
    if dropped or counts["clipped"]:
        logger.warning(
            "%s: dropped %d annotations (%d malformed boxes, %d with zero width/height/area, "
            "%d entirely outside their image); clipped %d boxes to their image",
            json_file,
            dropped,
            counts["invalid"],
            counts["zero_area"],
            counts["outside"],
            counts["clipped"],
        )
    return dataset_dicts


def register_coco_instances(
    name: str,
    json_file: str,
    image_root: str,
    metadata: dict | None = None,
    overwrite: bool = False,
) -> None:
    """Register a COCO-format dataset (instances json + image folder) as ``name``.

    ``metadata`` (e.g. ``thing_colors``) is added to the dataset's :class:`Metadata`; the class
    names and id mapping are set from the json when the dataset is first loaded.

    Calling this again with the same arguments is a no-op (``config.py`` and ``net.py`` may be
    imported more than once per process); other arguments under a registered name raise a
    ``KeyError`` naming both registrations, unless ``overwrite`` is true.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    values = dict(json_file=json_file, image_root=image_root, evaluator_type="coco")
    values.update(metadata or {})
    if name in DatasetCatalog and not overwrite:
        known = MetadataCatalog.get(name).as_dict()
        changed = {k: (known[k], v) for k, v in values.items() if k in known and known[k] != v}
        if changed:
            details = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise KeyError(
                f"dataset {name!r} is already registered with other arguments ({details}). "
                "Use another name, or pass overwrite=True to replace it."
            )
    DatasetCatalog.register(
        name, functools.partial(load_coco_json, json_file, image_root, name), overwrite=overwrite
    )
    if overwrite:
        MetadataCatalog.remove(name)
    MetadataCatalog.get(name).set(**values)
