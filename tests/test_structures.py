"""cvpods.structures with the behaviour cvpods/detectron2 document: expected values computed by
hand from the documented definitions, not from our code."""

import numpy as np
import pytest
import torch

from cvpods.data.detection_utils import transform_annotations
from cvpods.data.transforms.transform import NoOpTransform
from cvpods.structures import (
    Boxes,
    BoxMode,
    ImageList,
    Instances,
    matched_boxlist_iou,
    pairwise_ioa,
    pairwise_iou,
)


def test_boxes_ops():
    boxes = Boxes(
        torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 5.0, 8.0], [-4.0, 2.0, 30.0, 50.0]])
    )
    torch.testing.assert_close(boxes.area(), torch.tensor([200.0, 0.0, 1632.0]))
    assert boxes.nonempty().tolist() == [True, False, True]
    assert boxes.nonempty(threshold=10.0).tolist() == [False, False, True]
    torch.testing.assert_close(boxes.get_centers()[0], torch.tensor([5.0, 10.0]))
    clipped = boxes.clone()
    clipped.clip((40, 25))
    torch.testing.assert_close(clipped.tensor[2], torch.tensor([0.0, 2.0, 25.0, 40.0]))
    torch.testing.assert_close(boxes.tensor[2], torch.tensor([-4.0, 2.0, 30.0, 50.0]))  # a copy
    scaled = boxes.clone()
    scaled.scale(2.0, 0.5)
    torch.testing.assert_close(scaled.tensor[0], torch.tensor([0.0, 0.0, 20.0, 10.0]))
    assert boxes.inside_box((50, 30)).tolist() == [True, True, False]
    assert boxes.inside_box((50, 30), boundary_threshold=5).tolist() == [True, True, True]
    assert Boxes(torch.zeros(0)).tensor.shape == (0, 4)
    with pytest.raises(ValueError, match="N, 4"):
        Boxes(torch.zeros(3, 5))


def test_boxes_container_semantics():
    data = [[0, 0, 1, 1], [1, 1, 3, 3], [2, 0, 4, 5]]
    boxes = Boxes(data)  # a list becomes a float32 tensor
    assert boxes.tensor.dtype == torch.float32 and boxes.device.type == "cpu"
    assert len(boxes) == 3
    one = boxes[1]  # an int gives a Boxes of one box
    assert isinstance(one, Boxes) and one.tensor.tolist() == [[1.0, 1.0, 3.0, 3.0]]
    assert boxes[1:].tensor.tolist() == data[1:]
    assert boxes[torch.tensor([True, False, True])].tensor.tolist() == [data[0], data[2]]
    assert boxes[torch.tensor([2, 0])].tensor.tolist() == [data[2], data[0]]
    assert [b.tolist() for b in boxes] == [[float(v) for v in row] for row in data]
    with pytest.raises(AssertionError):  # cvpods asserts that indexing gives a matrix
        boxes[1, 2]
    merged = Boxes.cat([boxes, boxes[0]])
    assert merged.tensor.tolist()[-1] == data[0] and len(merged) == 4
    assert len(Boxes.cat([])) == 0
    clone = boxes.clone()
    clone.tensor[0, 0] = 7
    assert boxes.tensor[0, 0] == 0
    assert boxes.to("cpu").tensor.tolist() == data
    with pytest.raises(AssertionError, match="infinite"):
        Boxes([[0, 0, float("inf"), 1]]).clip((10, 10))


def test_box_mode_values_and_convert_types():
    assert [m.value for m in BoxMode] == [0, 1, 2, 3, 4]
    assert [m.name for m in BoxMode] == [
        "XYXY_ABS",
        "XYWH_ABS",
        "XYXY_REL",
        "XYWH_REL",
        "XYWHA_ABS",
    ]
    # A list stays a list, a tuple a tuple; integers stay integers.
    assert BoxMode.convert([10, 20, 5, 6], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) == [10, 20, 15, 26]
    out = BoxMode.convert((10.5, 20.0, 15.0, 26.25), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    assert out == (10.5, 20.0, 4.5, 6.25) and isinstance(out, tuple)
    # Modes may be given as their integer values (bbox_mode stored in json).
    assert BoxMode.convert([1, 2, 3, 4], 1, 0) == [1, 2, 4, 6]
    # numpy in, numpy out, same dtype, input untouched.
    arr = np.array([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]], dtype=np.float64)
    out = BoxMode.convert(arr, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    assert out.tolist() == [[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 2.0, 2.0]]
    assert arr.tolist() == [[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]]
    # tensor in, a new tensor out.
    t = torch.tensor([[4.0, 4.0, 8.0, 10.0]])
    out = BoxMode.convert(t, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    assert out.tolist() == [[4.0, 4.0, 4.0, 6.0]] and t.tolist() == [[4.0, 4.0, 8.0, 10.0]]
    # Same mode: the object itself.
    assert BoxMode.convert(t, BoxMode.XYXY_ABS, BoxMode.XYXY_ABS) is t


def test_box_mode_convert_rounding_is_float32_for_python_floats():
    # cvpods converts a list through torch.tensor: Python floats are rounded to float32.
    out = BoxMode.convert([0.1, 0.2, 0.3, 0.4], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
    expected = [float(np.float32(v)) for v in (0.1, 0.2, np.float32(0.1) + np.float32(0.3))]
    expected.append(float(np.float32(0.2) + np.float32(0.4)))
    assert out == expected


def test_box_mode_rotated():
    # A 4x2 box centred at (10, 20) turned 90 degrees encloses a 2x4 axis-aligned box.
    out = BoxMode.convert(
        np.array([[10.0, 20.0, 4.0, 2.0, 90.0]]), BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS
    )
    np.testing.assert_allclose(out, [[9.0, 18.0, 11.0, 22.0]], atol=1e-6)
    assert out.dtype == np.float64
    # 45 degrees: a 2x2 square encloses a square of side 2*sqrt(2).
    out = BoxMode.convert(
        torch.tensor([[0.0, 0.0, 2.0, 2.0, 45.0]]), BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS
    )
    s = 2**0.5
    torch.testing.assert_close(out, torch.tensor([[-s, -s, s, s]]))
    assert out.dtype == torch.float32
    out = BoxMode.convert([1.0, 2.0, 4.0, 6.0], BoxMode.XYWH_ABS, BoxMode.XYWHA_ABS)
    assert out == [3.0, 5.0, 4.0, 6.0, 0.0]


def test_box_mode_errors():
    with pytest.raises(AssertionError, match="Relative"):
        BoxMode.convert([0, 0, 1, 1], BoxMode.XYXY_REL, BoxMode.XYXY_ABS)
    with pytest.raises(AssertionError, match="Relative"):
        BoxMode.convert(torch.zeros(1, 4), BoxMode.XYXY_ABS, BoxMode.XYWH_REL)
    with pytest.raises(AssertionError):
        BoxMode.convert([0, 0, 1], BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    with pytest.raises(AssertionError):
        BoxMode.convert(torch.zeros(2, 4), BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS)
    with pytest.raises(NotImplementedError):
        BoxMode.convert(torch.zeros(2, 4), BoxMode.XYXY_ABS, BoxMode.XYWHA_ABS)
    with pytest.raises(NotImplementedError):
        BoxMode.convert(torch.zeros(2, 5), BoxMode.XYWHA_ABS, BoxMode.XYWH_ABS)


def test_pairwise_iou_ioa_and_matched_iou():
    a = Boxes([[0, 0, 10, 10], [0, 0, 0, 0]])
    b = Boxes([[5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 10, 10], [0, 0, 0, 0]])
    # [0,0,10,10] vs [5,5,15,15]: intersection 25, union 175.
    expected_iou = torch.tensor([[25 / 175, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(pairwise_iou(a, b), expected_iou)  # 0, not NaN, for empty boxes
    # IoA: intersection over the area of the second argument's box.
    expected_ioa = torch.tensor([[25 / 100, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(pairwise_ioa(a, b), expected_ioa)
    big, small = Boxes([[0, 0, 10, 10]]), Boxes([[2, 2, 4, 4]])
    assert float(pairwise_ioa(big, small)) == 1.0
    assert float(pairwise_ioa(small, big)) == pytest.approx(0.04)
    matched = matched_boxlist_iou(Boxes([[0, 0, 10, 10], [0, 0, 2, 2]]), b[:2])
    torch.testing.assert_close(matched, torch.tensor([25 / 175, 0.0]))
    with pytest.raises(AssertionError, match="same number"):
        matched_boxlist_iou(a, b)


def test_instances():
    inst = Instances((10, 20), scores=torch.tensor([0.1, 0.9, 0.5]))
    inst.pred_boxes = Boxes(torch.rand(3, 4))
    assert len(inst) == 3 and inst.has("scores") and inst.image_size == (10, 20)
    with pytest.raises(AssertionError, match="length"):  # cvpods asserts
        inst.pred_classes = torch.tensor([1, 2])
    top = inst[inst.scores > 0.4]
    assert len(top) == 2 and len(top.pred_boxes) == 2
    assert len(inst[-1]) == 1 and float(inst[-1].scores) == pytest.approx(0.5)
    with pytest.raises(IndexError):
        inst[3]
    assert inst[torch.tensor([2, 0])].scores.tolist() == pytest.approx([0.5, 0.1])
    assert inst[1:].scores.tolist() == pytest.approx([0.9, 0.5])
    both = Instances.cat([inst, top])
    assert len(both) == 5 and len(both.pred_boxes) == 5
    assert both.scores.tolist() == pytest.approx([0.1, 0.9, 0.5, 0.9, 0.5])
    with pytest.raises(AttributeError, match="nope"):
        _ = inst.nope
    with pytest.raises(NotImplementedError):
        iter(inst)


def test_instances_set_get_has_remove_and_list_fields():
    inst = Instances((4, 5))
    inst.set("names", ["a", "b"])
    assert inst.get("names") == ["a", "b"] and inst.names == ["a", "b"]
    assert set(inst.get_fields()) == {"names"}
    inst.set("ids", torch.tensor([3, 4]))
    inst.remove("names")
    assert not inst.has("names") and inst.has("ids")
    cat = Instances.cat([Instances((4, 5), names=["x"]), Instances((4, 5), names=["y", "z"])])
    assert cat.names == ["x", "y", "z"]
    with pytest.raises(AssertionError):
        Instances.cat([Instances((4, 5), a=[1]), Instances((5, 5), a=[2])])
    moved = inst.to("cpu")
    assert moved.ids.tolist() == [3, 4] and moved.image_size == (4, 5)


def test_image_list_pads_and_keeps_sizes():
    a, b = torch.ones(3, 30, 41), torch.full((3, 17, 64), 2.0)
    images = ImageList.from_tensors([a, b], size_divisibility=32, pad_value=-1.0)
    assert images.tensor.shape == (2, 3, 32, 64)
    assert images.image_sizes == [(30, 41), (17, 64)]
    assert len(images) == 2
    torch.testing.assert_close(images[0], a)
    torch.testing.assert_close(images[1], b)
    assert float(images.tensor[0, 0, 31, 0]) == -1.0 and float(images.tensor[1, 0, 20, 0]) == -1.0
    assert float(images.tensor[0, 0, 0, 63]) == -1.0
    single = ImageList.from_tensors([a], size_divisibility=32)
    assert single.tensor.shape == (1, 3, 32, 64) and float(single.tensor[0, 0, 31, 63]) == 0.0
    assert ImageList.from_tensors([a, b]).tensor.shape == (2, 3, 30, 64)
    with pytest.raises(AssertionError):
        ImageList.from_tensors([])
    with pytest.raises(AssertionError):
        ImageList.from_tensors([torch.ones(3, 4, 4), torch.ones(1, 4, 4)])


def test_image_list_is_tracing_friendly():
    def pad(x, y):
        return ImageList.from_tensors([x, y], size_divisibility=32, pad_value=-1.0).tensor

    traced = torch.jit.trace(pad, (torch.ones(3, 30, 41), torch.ones(3, 17, 64)), check_trace=False)
    # Other sizes than the traced ones: the padded size follows the new inputs.
    out = traced(torch.ones(3, 70, 20), torch.ones(3, 10, 100))
    assert out.shape == (2, 3, 96, 128)
    assert float(out[0, 0, 69, 19]) == 1.0 and float(out[0, 0, 70, 19]) == -1.0


def test_dataset_dicts_accept_bbox_mode():
    annotations = [
        {"bbox": [10, 20, 5, 6], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1},
        {"bbox": [1, 2, 3, 4], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 2},
        {"bbox": [1, 2, 3, 4], "category_id": 3},  # no bbox_mode: XYXY_ABS
        {"bbox": [0, 0, 1, 1], "bbox_mode": int(BoxMode.XYWH_ABS), "category_id": 4},
    ]
    boxes, classes = transform_annotations(annotations, NoOpTransform())
    assert boxes.tolist() == [[10, 20, 15, 26], [1, 2, 3, 4], [1, 2, 3, 4], [0, 0, 1, 1]]
    assert classes.tolist() == [1, 2, 3, 4]
