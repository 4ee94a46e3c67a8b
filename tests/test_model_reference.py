"""The model is the paper's model: state-dict layouts and numbers of the official implementation."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import THIN_BACKBONE, load_experiment, load_reference, reference_path
from reference_checks import (
    assert_detections_match,
    assert_losses_match,
    assert_tensors_close,
    gt_instances,
)

EXPERIMENTS = [
    "fcos.res50.1x",
    "fcos.res50.1x.fix.d4",
    "fcos.res50.1x.fix.d8",
    "fcos.res50.1x.dynamic.d4.lambda-0_1",
    "fcos.res50.1x.dynamic.d8.lambda-0",
    "fcos.res50.1x.dynamic.d8.lambda-0_1",
    "fcos.res50.1x.dynamic.d8.lambda-0_8",
]
HEAD_FIXTURES = [
    "fcos_seed1.pt",
    "fcos_fix_d4_seed4.pt",
    "fcos_fix_d8_seed2.pt",
    "fcos_dynamic_d4_lambda0_1_seed5.pt",
    "fcos_dynamic_d8_lambda0_seed6.pt",
    "fcos_dynamic_d8_lambda0_1_seed3.pt",
    "fcos_dynamic_d8_lambda0_8_seed7.pt",
]
FULL_FIXTURES = [
    "full_fcos_seed11.pt",
    "full_fcos_fix_d8_seed12.pt",
    "full_fcos_dynamic_d8_lambda0_1_seed13.pt",
]


@pytest.fixture(scope="module")
def layouts() -> dict:
    with open(reference_path("state_dict_layouts.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_full_size_state_dict_layout(name, layouts):
    cfg, build_model = load_experiment(name)
    model = build_model(cfg)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = layouts[name]
    assert sorted(set(expected) - set(ours)) == [], "keys missing from our model"
    assert sorted(set(ours) - set(expected)) == [], "keys the official model does not have"
    assert {k: v for k, v in ours.items() if v != expected[k]} == {}, "shape mismatches"


def build_for_head_fixture(fixture: dict):
    cfg, build_model = load_experiment(fixture["name"])
    cfg.merge_from_dict(
        {
            "MODEL.FPN.OUT_CHANNELS": fixture["channels"],
            "MODEL.FCOS.NUM_CLASSES": fixture["num_classes"],
            **THIN_BACKBONE,
        }
    )
    model = build_model(cfg)
    model.head.load_state_dict(fixture["head_state_dict"], strict=True)
    return model


def assert_head_outputs(
    outputs, expected: dict, what: str, probabilities_stored: bool = False
) -> None:
    """``probabilities_stored``: the official inference ran on these outputs and applied sigmoid_()
    in place on flattened views of them, so the fixture holds probabilities where such a view
    shares memory with the stored tensor: centerness on every level, logits on 1x1 levels."""
    for field in ("logits", "bbox_reg", "centerness"):
        for level, (ours, ref) in enumerate(zip(getattr(outputs, field), expected[field])):
            if probabilities_stored and (
                field == "centerness" or (field == "logits" and ours.shape[-2:].numel() == 1)
            ):
                ours = ours.sigmoid()
            atol = 1e-4 if field == "bbox_reg" else 1e-5
            assert_tensors_close(ours, ref, f"{what} {field}[{level}]", atol=atol)


def assert_cost(cost, expected: dict, what: str, index: slice = slice(None)) -> None:
    for field in ("soft", "used", "full"):
        torch.testing.assert_close(
            getattr(cost, field)[index].double(),
            expected[field].double(),
            rtol=1e-6,
            atol=0,
            msg=lambda m, f=field: f"{what} {f}: {m}",
        )


@pytest.mark.parametrize("fixture_name", HEAD_FIXTURES)
def test_head_fixture(fixture_name):
    fixture = load_reference(fixture_name)
    model = build_for_head_fixture(fixture)
    features = fixture["features"]
    image_sizes = [tuple(s) for s in fixture["image_sizes"]]

    shifts = model.shift_generator(features)
    for ours, ref in zip(shifts[0], fixture["shifts"]):
        torch.testing.assert_close(ours, ref)

    model.train()
    outputs = model.head(features)
    assert_head_outputs(outputs, fixture["dense_outputs"], "dense", probabilities_stored=True)

    targets = [
        gt_instances(fixture["image_hw"], b, c)
        for b, c in zip(fixture["gt_boxes"], fixture["gt_classes"])
    ]
    gt_classes, gt_deltas, gt_centerness = model.get_ground_truth(shifts, targets)
    assigned = fixture["assigned"]
    torch.testing.assert_close(gt_classes, assigned["gt_classes"])
    foreground = assigned["gt_classes"] != fixture["num_classes"]
    assert_tensors_close(
        gt_deltas[foreground], assigned["gt_shifts_deltas"][foreground], "gt_shifts_deltas"
    )
    assert_tensors_close(
        gt_centerness[foreground], assigned["gt_centerness"][foreground], "gt_centerness"
    )

    losses = model.losses(gt_classes, gt_deltas, gt_centerness, outputs)
    assert_losses_match(losses, fixture["losses"])

    results = model.inference(outputs, shifts, image_sizes)
    for result, expected in zip(results, fixture["detections"]):
        assert_detections_match(
            result.pred_boxes.tensor, result.scores, result.pred_classes, expected
        )

    if "masked_outputs" in fixture:
        assert_cost(outputs.cost, fixture["dense_cost"], "dense cost")
        model.eval()
        with torch.no_grad():
            for i, expected in enumerate(fixture["masked_outputs"]):
                single = model.head([f[i : i + 1] for f in features])
                assert_head_outputs(single, expected, f"masked image {i}")
                assert_cost(single.cost, fixture["masked_cost"][i], f"masked cost image {i}")


@pytest.mark.parametrize("fixture_name", FULL_FIXTURES)
def test_full_model_fixture(fixture_name):
    fixture = load_reference(fixture_name)
    cfg, build_model = load_experiment(fixture["name"])
    cfg.merge_from_dict(fixture["config_overrides"])
    model = build_model(cfg)
    model.load_state_dict(fixture["state_dict"], strict=True)
    inputs = [
        {
            "image": x["image"],
            "height": x["height"],
            "width": x["width"],
            "instances": gt_instances(x["image"].shape[-2:], x["gt_boxes"], x["gt_classes"]),
        }
        for x in fixture["inputs"]
    ]
    model.train()
    assert_losses_match(model(inputs), fixture["losses"])

    model.eval()
    with torch.no_grad():
        for x, expected in zip(inputs, fixture["detections"]):
            result = model([x])[0]["instances"]
            assert list(result.image_size) == list(expected["image_size"])
            assert_detections_match(
                result.pred_boxes.tensor, result.scores, result.pred_classes, expected
            )


def test_missing_reference_fixture_fails_instead_of_skipping():
    with pytest.raises(pytest.fail.Exception, match="missing"):
        reference_path("no_such_fixture.pt")


def test_committed_weights_are_checked_against_the_official_digest():
    """The committed fixtures store the weights as a seeded recipe; a changed recipe is caught."""
    raw = torch.load(reference_path("fcos_seed1.pt"), map_location="cpu", weights_only=True)
    recipe = raw["head_state_dict_recipe"]
    entry = next(e for e in recipe["entries"] if e[1] == "affine")
    entry[3] = entry[3] * 1.0001
    from conftest import _compact_module

    with pytest.raises(AssertionError, match="differ from the official"):
        _compact_module().expand(raw)
