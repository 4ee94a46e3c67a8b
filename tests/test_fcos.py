"""FCOS behaviour beyond the fixtures: empty ground truth, calling convention, bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import THIN_BACKBONE, load_experiment
from reference_checks import gt_instances

from cvpods.engine.train_loop import loss_tensors
from cvpods.modeling.box_regression import Shift2BoxTransform
from cvpods.modeling.losses import iou_loss


def small_fcos(name: str = "fcos.res50.1x", **overrides):
    cfg, build_model = load_experiment(name)
    cfg.merge_from_dict(
        {"MODEL.FPN.OUT_CHANNELS": 64, "MODEL.FCOS.NUM_CLASSES": 3, **THIN_BACKBONE, **overrides}
    )
    torch.manual_seed(0)
    return build_model(cfg)


@pytest.mark.parametrize("name", ["fcos.res50.1x", "fcos.res50.1x.dynamic.d4.lambda-0_1"])
def test_image_without_boxes_trains(name):
    model = small_fcos(name).train()
    inputs = [
        {
            "image": torch.randint(0, 256, (3, 80, 96), dtype=torch.uint8),
            "instances": gt_instances(
                (80, 96), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
            ),
        },
        {
            "image": torch.randint(0, 256, (3, 64, 100), dtype=torch.uint8),
            "instances": gt_instances(
                (64, 100), torch.tensor([[5.0, 6, 50, 40]]), torch.tensor([2])
            ),
        },
    ]
    outputs = model(inputs)
    assert ("head_cost" in outputs) == ("dynamic" in name)
    losses = loss_tensors(outputs)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    # Only the empty image: everything is background and the box losses are zero.
    losses = loss_tensors(model(inputs[:1]))
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["loss_box_reg"].detach()) == 0.0 and float(losses["loss_cls"].detach()) > 0


def test_eval_output_format_and_rescaling():
    model = small_fcos(**{"MODEL.FCOS.SCORE_THRESH_TEST": 0.0}).eval()
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)
    with torch.no_grad():
        plain = model([{"image": image}])[0]["instances"]
        scaled = model([{"image": image, "height": 128, "width": 192}])[0]["instances"]
    assert plain.image_size == (64, 96) and scaled.image_size == (128, 192)
    assert set(plain.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
    assert len(plain) == len(scaled) > 0
    torch.testing.assert_close(
        scaled.pred_boxes.tensor, plain.pred_boxes.tensor * 2, rtol=1e-5, atol=1e-3
    )
    assert bool((scaled.pred_boxes.tensor[:, 2] <= 192).all()) and bool(
        (scaled.scores[:-1] >= scaled.scores[1:]).all()
    )


def test_training_without_instances_is_a_clear_error():
    model = small_fcos().train()
    with pytest.raises(ValueError, match="instances"):
        model([{"image": torch.zeros(3, 32, 32)}])


def test_shift_box_transform_round_trip():
    transform = Shift2BoxTransform((1.0, 2.0, 1.0, 0.5))
    shifts = torch.tensor([[10.0, 20.0], [0.0, 0.0]])
    boxes = torch.tensor([[4.0, 5.0, 30.0, 40.0], [-3.0, -2.0, 8.0, 9.0]])
    deltas = transform.get_deltas(shifts, boxes)
    torch.testing.assert_close(deltas[0], torch.tensor([6.0, 30.0, 20.0, 10.0]))
    torch.testing.assert_close(transform.apply_deltas(deltas, shifts), boxes)


def test_iou_losses():
    pred = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    target = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    assert float(iou_loss(pred[:1], target[:1], loss_type="iou")) == pytest.approx(0.0, abs=1e-6)
    assert float(iou_loss(pred[1:], target[1:], loss_type="linear_iou")) == pytest.approx(0.75)
    assert float(iou_loss(pred[1:], target[1:], loss_type="giou")) == pytest.approx(0.75)
    assert float(
        iou_loss(pred[1:], target[1:], torch.tensor([0.5]), loss_type="iou")
    ) == pytest.approx(0.5 * -torch.log(torch.tensor(0.25)).item())
    with pytest.raises(ValueError, match="IOU_LOSS_TYPE"):
        iou_loss(pred, target, loss_type="diou")
