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
from ..validation import BadDataError, format_problems, skip_bad_data_enabled

logger = logging.getLogger(__name__)

__all__ = [
    "load_coco_api",
    "contiguous_id_map",
    "find_annotation_problems",
    "load_coco_json",
    "register_coco_instances",
    "remove_bad_annotations",
]


def load_coco_api(json_file: str) -> COCO:
    """A pycocotools ``COCO`` object for ``json_file``; a clear error if it is missing or broken."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO annotation file {json_file} does not exist")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(json_file)
    except KeyError as exc:  # pycocotools indexes ann["image_id"], img["id"], ...
        raise ValueError(
            f"cannot read COCO annotation file {json_file}: an entry lacks the key {exc}"
        ) from exc
    except Exception as exc:  # json errors, missing top-level keys, ...
        raise ValueError(f"cannot read COCO annotation file {json_file}: {exc!r}") from exc


def contiguous_id_map(category_ids: Sequence[int]) -> dict[int, int]:
    """``{dataset category id: contiguous id}`` with contiguous ids ``0..K-1`` in id order."""
    return {cat_id: i for i, cat_id in enumerate(sorted(category_ids))}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _well_formed_box(bbox: Any) -> bool:
    return isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(map(_is_number, bbox))


def _member(value: Any, known: Any) -> bool:
    """``value in known``, False for unhashable values (a list given as an id)."""
    try:
        return value in known
    except TypeError:
        return False


def _annotation_problem(ann: Any, image_ids: Any, category_ids: Any) -> str | None:
    """Why ``ann`` cannot be used (None if it can): unknown image or category, malformed box."""
    if not isinstance(ann, dict):
        return f"is a {type(ann).__name__}, not an object"
    where = f"annotation id {ann.get('id')!r} (image_id {ann.get('image_id')!r})"
    if not _member(ann.get("image_id"), image_ids):
        return f"{where}: image_id {ann.get('image_id')!r} is not the id of any image in the file"
    if not _member(ann.get("category_id"), category_ids):
        return (
            f"{where}: category_id {ann.get('category_id')!r} is not among the file's "
            f"categories {sorted(category_ids)}"
        )
    if not _well_formed_box(ann.get("bbox")):
        return f"{where}: bbox {ann.get('bbox')!r} is not 4 finite numbers [x, y, width, height]"
    return None


def _image_problem(img: Any) -> str | None:
    """Why an entry of the json's ``images`` cannot be used (None if it can)."""
    if not isinstance(img, dict):
        return f"an images entry is a {type(img).__name__}, not an object"
    where = f"image id {img.get('id')!r}"
    if not isinstance(img.get("file_name"), str) or not img.get("file_name"):
        return f"{where}: file_name {img.get('file_name')!r} is not a file name"
    for key in ("height", "width"):
        value = img.get(key)
        if not (_is_number(value) and float(value) == int(value) and value > 0):
            return f"{where} ({img['file_name']}): {key} {value!r} is not a positive integer"
    return None


def find_annotation_problems(coco: COCO) -> tuple[list[str], set[int], set[int]]:
    """Problems of a loaded COCO json: ``(messages, positions of bad annotations, ids of bad
    images)`` (positions index ``coco.dataset["annotations"]``).

    Reported: images without a usable ``file_name``, ``height`` or ``width``; annotations whose
    ``image_id`` names no image, whose ``category_id`` names no category, or whose ``bbox`` is not
    four finite numbers (strings, wrong length, NaN). Annotations of bad images count as bad.
    """
    messages: list[str] = []
    bad_images: set[int] = set()
    for img in coco.dataset.get("images", []):
        problem = _image_problem(img)
        if problem:
            messages.append(problem)
            if isinstance(img, dict):
                bad_images.add(img.get("id"))
    category_ids = set(coco.getCatIds())
    image_ids = {i for i in coco.imgs if i not in bad_images}
    bad_annotations: set[int] = set()
    for position, ann in enumerate(coco.dataset.get("annotations", [])):
        if isinstance(ann, dict) and _member(ann.get("image_id"), bad_images):
            bad_annotations.add(position)
            continue
        problem = _annotation_problem(ann, image_ids, category_ids)
        if problem:
            messages.append(problem)
            bad_annotations.add(position)
    return messages, bad_annotations, bad_images


def remove_bad_annotations(coco: COCO) -> int:
    """Drop the entries :func:`find_annotation_problems` reports from ``coco`` (re-indexed), so
    pycocotools never evaluates against them. Returns how many entries were removed."""
    _, bad_annotations, bad_images = find_annotation_problems(coco)
    if not (bad_annotations or bad_images):
        return 0
    dataset = coco.dataset
    dataset["annotations"] = [
        a for i, a in enumerate(dataset.get("annotations", [])) if i not in bad_annotations
    ]
    dataset["images"] = [
        img
        for img in dataset.get("images", [])
        if not (isinstance(img, dict) and _member(img.get("id"), bad_images))
    ]
    coco.anns, coco.imgs, coco.cats = {}, {}, {}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return len(bad_annotations) + len(bad_images)


def _check_annotations(coco: COCO, json_file: str) -> tuple[set[int], set[int]]:
    """Raise :class:`BadDataError` listing every problem of the json, or (with
    ``DATASETS.SKIP_BAD_DATA``) log their count; returns the bad annotation positions and images.
    """
    messages, bad_annotations, bad_images = find_annotation_problems(coco)
    if not messages:
        return bad_annotations, bad_images
    if skip_bad_data_enabled():
        logger.warning(
            "%s: skipped %d annotations and %d images with problems (DATASETS.SKIP_BAD_DATA):\n%s",
            json_file,
            len(bad_annotations),
            len(bad_images),
            format_problems(messages, limit=10),
        )
        return bad_annotations, bad_images
    raise BadDataError(
        f"{json_file}: {len(messages)} problems in the annotations:\n{format_problems(messages)}\n"
        "Fix the file, or set DATASETS.SKIP_BAD_DATA True to leave these entries out (their "
        "count is logged)."
    )


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

    Category ids become contiguous ids ``0..K-1`` (in the order of the dataset's ids).
    Annotations whose ``image_id`` or ``category_id`` names nothing in the file, or whose box is
    malformed (not 4 finite numbers: strings, wrong length, NaN), and images without a usable
    ``file_name`` / ``height`` / ``width``, raise one :class:`BadDataError` listing them all with
    their ids (inside :func:`~cvpods.data.validation.skipping_bad_data` they are dropped and
    counted instead). Boxes with zero width/height/area are dropped; boxes reaching outside the
    image are clipped to it, or dropped if nothing is left; each of these is counted and logged.
    Crowd annotations are kept with ``"iscrowd": 1`` (the mapper does not use them as targets).
    Images without annotations are kept (training filters them, evaluation needs them). Image
    files are checked by :func:`cvpods.data.validation.check_image_files` when the data loaders
    are built.

    If ``dataset_name`` is given, its metadata gets ``thing_classes`` and
    ``thing_dataset_id_to_contiguous_id``.
    """
    coco = load_coco_api(json_file)
    bad_annotations, bad_images = _check_annotations(coco, json_file)
    all_annotations = coco.dataset.get("annotations", [])
    malformed = sum(
        1
        for i in bad_annotations
        if isinstance(all_annotations[i], dict)
        and not _well_formed_box(all_annotations[i].get("bbox"))
    )
    if bad_annotations or bad_images:
        remove_bad_annotations(coco)
    cat_ids = sorted(coco.getCatIds())
    id_map = contiguous_id_map(cat_ids)
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).set(
            thing_classes=[coco.loadCats(i)[0]["name"] for i in cat_ids],
            thing_dataset_id_to_contiguous_id=id_map,
        )

    counts = {"invalid": malformed, "zero_area": 0, "outside": 0, "clipped": 0, "crowd": 0}
    dataset_dicts = []
    num_kept = 0
    for image_id in sorted(coco.imgs):
        img = coco.imgs[image_id]
        height, width = int(img["height"]), int(img["width"])
        annotations = []
        for ann in coco.imgToAnns.get(image_id, []):
            if ann.get("ignore", 0):
                continue
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
