import pytest
import torch

from cvpods.structures import Boxes, ImageList, Instances


def test_boxes_ops():
    boxes = Boxes(
        torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 5.0, 8.0], [-4.0, 2.0, 30.0, 50.0]])
    )
    torch.testing.assert_close(boxes.area(), torch.tensor([200.0, 0.0, 1632.0]))
    assert boxes.nonempty().tolist() == [True, False, True]
    torch.testing.assert_close(boxes.get_centers()[0], torch.tensor([5.0, 10.0]))
    clipped = boxes.clone()
    clipped.clip((40, 25))
    torch.testing.assert_close(clipped.tensor[2], torch.tensor([0.0, 2.0, 25.0, 40.0]))
    scaled = boxes.clone()
    scaled.scale(2.0, 0.5)
    torch.testing.assert_close(scaled.tensor[0], torch.tensor([0.0, 0.0, 20.0, 10.0]))
    assert len(boxes[1:]) == 2 and len(boxes[torch.tensor([True, False, True])]) == 2
    assert len(Boxes.cat([boxes, boxes[0]])) == 4
    assert Boxes(torch.zeros(0)).tensor.shape == (0, 4)
    with pytest.raises(ValueError, match="N, 4"):
        Boxes(torch.zeros(3, 5))


def test_instances():
    inst = Instances((10, 20), scores=torch.tensor([0.1, 0.9, 0.5]))
    inst.pred_boxes = Boxes(torch.rand(3, 4))
    assert len(inst) == 3 and inst.has("scores") and inst.image_size == (10, 20)
    with pytest.raises(ValueError, match="length"):
        inst.pred_classes = torch.tensor([1, 2])
    top = inst[inst.scores > 0.4]
    assert len(top) == 2 and len(top.pred_boxes) == 2
    assert len(inst[-1]) == 1 and float(inst[-1].scores) == pytest.approx(0.5)
    both = Instances.cat([inst, top])
    assert len(both) == 5 and len(both.pred_boxes) == 5
    with pytest.raises(AttributeError, match="nope"):
        _ = inst.nope


def test_image_list_pads_and_keeps_sizes():
    a, b = torch.ones(3, 30, 41), torch.full((3, 17, 64), 2.0)
    images = ImageList.from_tensors([a, b], size_divisibility=32, pad_value=-1.0)
    assert images.tensor.shape == (2, 3, 32, 64)
    assert images.image_sizes == [(30, 41), (17, 64)]
    torch.testing.assert_close(images[0], a)
    assert float(images.tensor[0, 0, 31, 0]) == -1.0 and float(images.tensor[1, 0, 20, 0]) == -1.0
    single = ImageList.from_tensors([a], size_divisibility=32)
    assert single.tensor.shape == (1, 3, 32, 64)
