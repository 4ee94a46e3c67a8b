"""Faster R-CNN R50-FPN is cvpods' model: state-dict layout and eval/training numbers of the
upstream cvpods code (tests/fixtures/reference/rcnn/README.md)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_experiment, load_reference, reference_path
from reference_checks import assert_detections_match, assert_losses_match, gt_instances

NAME = "faster_rcnn.res50.fpn.coco.multiscale.1x"
FIXTURE = "rcnn/full_faster_rcnn_seed21.pt"


@pytest.fixture(scope="module")
def fixture() -> dict:
    return load_reference(FIXTURE)


@pytest.fixture(scope="module")
def model(fixture):
    cfg, build_model = load_experiment(fixture["name"])
    cfg.merge_from_dict(fixture["config_overrides"])
    model = build_model(cfg)
    model.load_state_dict(fixture["state_dict"], strict=True)
    return model


def model_inputs(fixture: dict) -> list[dict]:
    return [
        {
            "image": x["image"],
            "height": x["height"],
            "width": x["width"],
            "instances": gt_instances(x["image"].shape[-2:], x["gt_boxes"], x["gt_classes"]),
        }
        for x in fixture["inputs"]
    ]


def assert_proposals_match(boxes: torch.Tensor, logits: torch.Tensor, expected: dict) -> None:
    """Same number; each reference proposal has its own proposal with the logit within 1e-4 and
    the box within 1e-2 px (near-equal logits may swap places in the sorted lists)."""
    assert len(logits) == len(expected["objectness_logits"]), (
        f"{len(logits)} proposals, expected {len(expected['objectness_logits'])}"
    )
    torch.testing.assert_close(logits, expected["objectness_logits"], rtol=0, atol=1e-4)
    close = ((logits[:, None] - expected["objectness_logits"][None]).abs() <= 1e-4) & (
        torch.cdist(boxes, expected["boxes"], p=float("inf")) <= 1e-2
    )
    taken = torch.zeros(len(logits), dtype=torch.bool)
    for j in range(close.shape[1]):
        candidates = torch.nonzero(close[:, j] & ~taken, as_tuple=True)[0]
        assert len(candidates), (
            f"no proposal matches reference {j}: {expected['boxes'][j].tolist()}"
        )
        taken[candidates[0]] = True


def test_full_size_state_dict_layout():
    with open(reference_path("rcnn/state_dict_layouts.json")) as f:
        expected = json.load(f)[NAME]
    cfg, build_model = load_experiment(NAME)
    cfg.MODEL.DEVICE = "cpu"
    ours = {k: list(v.shape) for k, v in build_model(cfg).state_dict().items()}
    assert sorted(set(expected) - set(ours)) == [], "keys missing from our model"
    assert sorted(set(ours) - set(expected)) == [], "keys the cvpods model does not have"
    assert {k: v for k, v in ours.items() if v != expected[k]} == {}, "shape mismatches"


def test_cell_anchors_equal_the_reference_buffers(model, fixture):
    for key, value in fixture["state_dict"].items():
        if "cell_anchors" in key:
            generated = model.state_dict()[key]
            torch.testing.assert_close(generated, value, rtol=0, atol=1e-4, msg=key)


def test_eval_features_proposals_and_detections_per_image(model, fixture):
    model.eval()
    inputs = model_inputs(fixture)
    with torch.no_grad():
        for i, x in enumerate(inputs):
            images = model.preprocess_image([x])
            features = model.backbone(images.tensor)
            for name, ref in fixture["features"][i].items():
                torch.testing.assert_close(features[name], ref, rtol=1e-4, atol=1e-4, msg=name)
            proposals, _ = model.proposal_generator(images, features)
            expected = fixture["proposals"][i]
            assert list(proposals[0].image_size) == list(expected["image_size"])
            assert_proposals_match(
                proposals[0].proposal_boxes.tensor, proposals[0].objectness_logits, expected
            )
            result = model([x])[0]["instances"]
            expected = fixture["detections"][i]
            assert list(result.image_size) == list(expected["image_size"])
            assert_detections_match(
                result.pred_boxes.tensor, result.scores, result.pred_classes, expected
            )


def test_eval_batched_proposals_and_detections(model, fixture):
    model.eval()
    inputs = model_inputs(fixture)
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        assert tuple(images.tensor.shape[-2:]) == (160, 224)
        proposals, _ = model.proposal_generator(images, model.backbone(images.tensor))
        results = model(inputs)
    for props, expected in zip(proposals, fixture["proposals_batched"]):
        assert_proposals_match(props.proposal_boxes.tensor, props.objectness_logits, expected)
    for result, expected in zip(results, fixture["detections_batched"]):
        result = result["instances"]
        assert list(result.image_size) == list(expected["image_size"])
        assert_detections_match(
            result.pred_boxes.tensor, result.scores, result.pred_classes, expected
        )


def test_training_losses_with_the_reference_sampling_seed(model, fixture):
    """The anchor and proposal sampling draw from torch.randperm in cvpods' order, so with the
    fixture's seed the four losses are cvpods' to float rounding."""
    assert fixture["losses_rng_dependent"]
    model.train()
    torch.manual_seed(fixture["loss_seed"])
    try:
        losses = model(model_inputs(fixture))
    finally:
        model.eval()
    assert_losses_match(losses, fixture["losses"])


def test_cvpods_checkpoint_loads_unchanged(fixture, tmp_path):
    """A cvpods Faster R-CNN checkpoint (``{"model": state_dict}`` with cvpods' names) loads into
    our model through DetectionCheckpointer, every tensor matched, and gives cvpods' detections."""
    from cvpods.checkpoint import DetectionCheckpointer

    path = tmp_path / "model_final.pth"
    torch.save({"model": fixture["state_dict"], "iteration": 89999}, path)
    cfg, build_model = load_experiment(fixture["name"])
    cfg.merge_from_dict(fixture["config_overrides"])
    model = build_model(cfg)
    DetectionCheckpointer(model).load(str(path), min_matched_fraction=1.0)
    for key, value in fixture["state_dict"].items():
        assert torch.equal(model.state_dict()[key], value), key
    model.eval()
    x = model_inputs(fixture)[0]
    with torch.no_grad():
        result = model([x])[0]["instances"]
    assert_detections_match(
        result.pred_boxes.tensor, result.scores, result.pred_classes, fixture["detections"][0]
    )
