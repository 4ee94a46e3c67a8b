"""Weights interop: torchvision ResNets, Caffe2/MSRA and detectron2 .pkl files, key alignment,
shape-mismatch reporting and input-convention warnings."""

from __future__ import annotations

import logging
import pickle
import struct

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import cvpods.layers as layers_lib
import cvpods.modeling.backbone as backbone_lib
from cvpods.checkpoint import DetectionCheckpointer, align_to_model, parse_weights
from cvpods.checkpoint.model_loading import group_keys
from cvpods.configs import FCOSConfig

TORCHVISION_INPUT = {
    "INPUT.FORMAT": "RGB",
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
    "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
}


def _resnet_config(depth: int, stride_in_1x1: bool, **overrides) -> FCOSConfig:
    cfg = FCOSConfig()
    cfg.merge_from_dict(
        {
            "MODEL.DEVICE": "cpu",
            "MODEL.RESNETS.DEPTH": depth,
            "MODEL.RESNETS.STRIDE_IN_1X1": stride_in_1x1,
            "MODEL.RESNETS.NORM": "FrozenBN",
            "MODEL.RESNETS.OUT_FEATURES": ["res3", "res4", "res5"],
            "MODEL.RESNETS.RES2_OUT_CHANNELS": 64 if depth in (18, 34) else 256,
            **overrides,
        }
    )
    return cfg


def _build_backbone(cfg) -> nn.Module:
    return backbone_lib.build_resnet_backbone(cfg, layers_lib.ShapeSpec(channels=3)).eval()


def _randomize_batch_norms(model: nn.Module, seed: int) -> None:
    """Non-trivial BN statistics and affine parameters, so a mis-mapped norm changes the output."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            with torch.no_grad():
                module.weight.copy_(torch.rand(n, generator=generator) * 0.4 + 0.2)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)


def _torchvision_features(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    x = model.layer1(x)
    res3 = model.layer2(x)
    res4 = model.layer3(res3)
    res5 = model.layer4(res4)
    return {"res3": res3, "res4": res4, "res5": res5}


def _saved_torchvision_resnet(name: str, path) -> nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    _randomize_batch_norms(model, seed=1)
    model.eval()
    torch.save(model.state_dict(), path)
    return model


@pytest.mark.parametrize("name,depth", [("resnet18", 18), ("resnet50", 50)])
def test_torchvision_resnet_gives_the_same_features(tmp_path, name, depth):
    path = tmp_path / f"{name}-random.pth"
    reference = _saved_torchvision_resnet(name, path)
    cfg = _resnet_config(depth, stride_in_1x1=False, **TORCHVISION_INPUT)
    ours = _build_backbone(cfg)
    checkpointer = DetectionCheckpointer(ours, cfg=cfg)
    checkpointer.load(str(path))

    report = checkpointer.last_report
    assert report.complete, report.table()
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = _torchvision_features(reference, x)
        got = ours(x)
    for key in ("res3", "res4", "res5"):
        assert got[key].shape == expected[key].shape
        torch.testing.assert_close(got[key], expected[key], atol=1e-4, rtol=1e-4)


def test_torchvision_resnet_into_a_detector_gets_the_backbone_prefix(tmp_path, caplog):
    from conftest import load_experiment

    path = tmp_path / "resnet18-random.pth"
    reference = _saved_torchvision_resnet("resnet18", path)
    cfg, build_model = load_experiment("fcos.res50.1x")
    cfg.merge_from_dict(
        {
            "MODEL.DEVICE": "cpu",
            "MODEL.RESNETS.DEPTH": 18,
            "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
            "MODEL.RESNETS.STRIDE_IN_1X1": False,
            "MODEL.FPN.OUT_CHANNELS": 32,
            "MODEL.FCOS.NUM_CLASSES": 3,
            **TORCHVISION_INPUT,
        }
    )
    model = build_model(cfg).eval()
    checkpointer = DetectionCheckpointer(model, cfg=cfg)
    with caplog.at_level(logging.INFO, logger="cvpods.checkpoint"):
        checkpointer.load(str(path))
    report = checkpointer.last_report
    assert "backbone.bottom_up." in report.renaming
    assert not report.unexpected and not report.shape_mismatch
    assert all(k.startswith("backbone.bottom_up.") for k in report.loaded)
    assert not [k for k in report.missing if k.startswith("backbone.bottom_up.")]
    assert "disagrees" not in caplog.text
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = _torchvision_features(reference, x)
        got = model.backbone.bottom_up(x)
    for key in ("res3", "res4", "res5"):
        torch.testing.assert_close(got[key], expected[key], atol=1e-4, rtol=1e-4)


def test_convention_mismatch_is_warned(tmp_path, caplog):
    path = tmp_path / "resnet18-random.pth"
    _saved_torchvision_resnet("resnet18", path)
    cfg = _resnet_config(18, stride_in_1x1=True)  # MSRA defaults: BGR, std 1, stride in 1x1
    with caplog.at_level(logging.WARNING, logger="cvpods.checkpoint"):
        DetectionCheckpointer(_build_backbone(cfg), cfg=cfg).load(str(path))
    text = caplog.text
    assert "torchvision-style weights but the config disagrees" in text
    for key in ("INPUT.FORMAT", "MODEL.PIXEL_STD", "MODEL.PIXEL_MEAN", "STRIDE_IN_1X1"):
        assert key in text


# ----------------------------------------------------------------------------- Caffe2 / MSRA


def _caffe2_name(key: str) -> str | None:
    """cvpods ResNet name -> Caffe2 blob name (None for running statistics, absent in Caffe2)."""
    parts = key.split(".")
    if parts[-1] in ("running_mean", "running_var", "num_batches_tracked"):
        return None
    suffix = {"weight": "w", "bias": "b"}[parts[-1]]
    is_norm = parts[-2] == "norm"
    if is_norm:
        suffix = {"w": "s", "b": "b"}[suffix]
    if parts[0] == "stem":
        return f"res_conv1_bn_{suffix}" if is_norm else f"conv1_{suffix}"
    stage, block, layer = parts[0], parts[1], parts[2]
    branch = "branch1" if layer == "shortcut" else "branch2" + "abc"[int(layer[-1]) - 1]
    return f"{stage}_{block}_{branch}" + (f"_bn_{suffix}" if is_norm else f"_{suffix}")


def _caffe2_blobs(model: nn.Module, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    blobs = {}
    for key, value in model.state_dict().items():
        name = _caffe2_name(key)
        if name is not None:
            blobs[name] = rng.standard_normal(tuple(value.shape)).astype(np.float32)
    return blobs


def _py2_array(array: np.ndarray) -> bytes:
    """An ndarray as Python 2 / numpy 1 pickled it (protocol 2, data as a py2 ``str``)."""
    data = array.astype("<f4").tobytes()
    out = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R("
    out += b"K\x01(" + b"".join(b"J" + struct.pack("<i", d) for d in array.shape) + b"t"
    out += b"cnumpy\ndtype\nU\x02f4K\x00K\x01\x87R("  # dtype("f4", 0, 1) + its state:
    out += b"K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    out += b"\x89T" + struct.pack("<I", len(data)) + data + b"tb"
    return out


def _py2_pickle(blobs: dict[str, np.ndarray]) -> bytes:
    """A Python 2 style pickle of ``{"blobs": blobs}`` (how Detectron wrote its .pkl files)."""
    out = b"\x80\x02}U\x05blobs}("
    for name, array in blobs.items():
        out += b"U" + bytes([len(name)]) + name.encode() + _py2_array(array)
    return out + b"us."


def _check_caffe2_load(model: nn.Module, blobs: dict[str, np.ndarray]) -> None:
    state = model.state_dict()
    for key, value in state.items():
        name = _caffe2_name(key)
        if name is not None:
            torch.testing.assert_close(value, torch.from_numpy(blobs[name]), rtol=0, atol=0)
        elif key.endswith("running_mean"):
            assert torch.count_nonzero(value) == 0, key
    # A Caffe2 affine channel: the FrozenBN computes exactly x * scale + bias.
    norm = model.res3[0].conv2.norm
    x = torch.randn(2, norm.weight.numel(), 3, 3)
    scale = torch.from_numpy(blobs["res3_0_branch2b_bn_s"])[None, :, None, None]
    bias = torch.from_numpy(blobs["res3_0_branch2b_bn_b"])[None, :, None, None]
    expected = x * scale + bias
    torch.testing.assert_close(norm(x), expected, rtol=1e-6, atol=1e-6)


THIN_R50 = {
    "MODEL.RESNETS.WIDTH_PER_GROUP": 8,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 32,
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 16,
}


@pytest.mark.parametrize("layout", ["blobs_protocol2", "raw_protocol5", "python2"])
def test_caffe2_pkl_loads_into_the_right_parameters(tmp_path, layout, caplog):
    cfg = _resnet_config(50, stride_in_1x1=True, **THIN_R50)
    model = _build_backbone(cfg)
    blobs = _caffe2_blobs(model, seed=0)
    extra = {
        "fc1000_w": np.ones((1000, 16), np.float32),
        "fc1000_b": np.ones(1000, np.float32),
        "conv1_w_momentum": np.zeros_like(blobs["conv1_w"]),
    }
    path = tmp_path / "R-50.pkl"
    if layout == "blobs_protocol2":
        path.write_bytes(pickle.dumps({"blobs": {**blobs, **extra, "lr": 0.1}}, protocol=2))
    elif layout == "raw_protocol5":
        path.write_bytes(pickle.dumps({**blobs, **extra}, protocol=5))
    else:
        path.write_bytes(_py2_pickle(blobs))

    checkpointer = DetectionCheckpointer(model, cfg=cfg)
    with caplog.at_level(logging.WARNING, logger="cvpods.checkpoint"):
        checkpointer.load(str(path))
    assert checkpointer.last_report.complete, checkpointer.last_report.table()
    assert "disagrees" not in caplog.text  # default config = MSRA conventions
    _check_caffe2_load(model, blobs)

    # The same file with a torchvision-style config is warned about.
    cfg_tv = _resnet_config(50, stride_in_1x1=False, **THIN_R50)
    with caplog.at_level(logging.WARNING, logger="cvpods.checkpoint"):
        DetectionCheckpointer(_build_backbone(cfg_tv), cfg=cfg_tv).load(str(path))
    assert "MSRA-style weights but the config disagrees" in caplog.text
    assert "STRIDE_IN_1X1 is False" in caplog.text


def test_detectron2_converted_pkl_into_a_detector_like_model(tmp_path):
    cfg = _resnet_config(50, stride_in_1x1=True, **THIN_R50)
    source = _build_backbone(cfg)
    rng = np.random.default_rng(4)
    arrays = {
        k: rng.standard_normal(tuple(v.shape)).astype(np.float32)
        for k, v in source.state_dict().items()
    }
    path = tmp_path / "model_final_abc.pkl"
    path.write_bytes(
        pickle.dumps(
            {"model": arrays, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}
        )
    )

    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Module()
            self.backbone.bottom_up = _build_backbone(cfg)
            self.head = nn.Conv2d(4, 4, 1)

    detector = Detector()
    checkpointer = DetectionCheckpointer(detector)
    rest = checkpointer.load(str(path))
    assert rest == {}
    report = checkpointer.last_report
    assert sorted(report.missing) == ["head.bias", "head.weight"]
    assert not report.unexpected and not report.shape_mismatch
    for key, value in detector.backbone.bottom_up.state_dict().items():
        torch.testing.assert_close(value, torch.from_numpy(arrays[key]), rtol=0, atol=0)


# ----------------------------------------------------------------------------- report / alignment


class _Head(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.cls_subnet = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(2, 8))
        self.cls_score = nn.Conv2d(8, num_classes, 3, padding=1)


class _Model(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.head = _Head(num_classes)


def test_classifier_shape_mismatch_is_skipped_with_a_warning(tmp_path, caplog):
    torch.manual_seed(0)
    pretrained = _Model(num_classes=80)
    torch.save({"model": pretrained.state_dict(), "iteration": 5}, tmp_path / "zoo.pth")
    model = _Model(num_classes=6)
    initial_score = model.head.cls_score.weight.detach().clone()
    checkpointer = DetectionCheckpointer(model)
    with caplog.at_level(logging.WARNING, logger="cvpods.checkpoint"):
        rest = checkpointer.load(str(tmp_path / "zoo.pth"))
    assert rest == {"iteration": 5}
    report = checkpointer.last_report
    assert report.shape_mismatch == {
        "head.cls_score.weight": ((80, 8, 3, 3), (6, 8, 3, 3)),
        "head.cls_score.bias": ((80,), (6,)),
    }
    assert torch.equal(model.head.cls_score.weight, initial_score)
    torch.testing.assert_close(
        model.head.cls_subnet[0].weight, pretrained.head.cls_subnet[0].weight
    )
    assert "skipped 2 tensor(s)" in caplog.text
    table = report.table()
    assert "| skipped: shape mismatch | head.cls_score.weight | (80, 8, 3, 3)" in table
    assert "| skipped: shape mismatch | head.cls_score.bias   | (80,)" in table


def test_report_groups_missing_and_unexpected_keys(tmp_path):
    model = _Model(num_classes=3)
    state = {f"head.{k}": v for k, v in _Head(3).state_dict().items() if "cls_subnet.1" not in k}
    state["head.extra.weight"] = torch.zeros(1)
    state["head.extra.bias"] = torch.zeros(1)
    torch.save(state, tmp_path / "partial.pth")
    checkpointer = DetectionCheckpointer(model)
    checkpointer.load(str(tmp_path / "partial.pth"))
    table = checkpointer.last_report.table()
    assert "| missing in checkpoint  | head.cls_subnet.1.{bias, weight}" in table
    assert "| unused from checkpoint | head.extra.{bias, weight}" in table


def test_group_keys_collapses_large_subtrees():
    keys = [f"backbone.res{s}.{b}.conv1.weight" for s in range(2, 6) for b in range(10)]
    assert group_keys(["a.b.weight", "a.b.bias", "c"]) == ["a.b.{bias, weight}", "c"]
    assert group_keys([]) == []
    grouped = group_keys(keys, max_groups=5)
    assert grouped == [f"backbone.res{s}.*  (10 keys)" for s in range(2, 6)]


def test_align_to_model_adds_or_strips_a_prefix():
    model_keys = ["backbone.bottom_up.stem.conv1.weight", "backbone.bottom_up.res2.0.conv1.weight"]
    state = {"stem.conv1.weight": 1, "res2.0.conv1.weight": 2, "fc.weight": 3}
    aligned, how = align_to_model(state, model_keys)
    assert aligned == {
        "backbone.bottom_up.stem.conv1.weight": 1,
        "backbone.bottom_up.res2.0.conv1.weight": 2,
        "fc.weight": 3,
    }
    assert "added the prefix 'backbone.bottom_up.'" in how
    back, how = align_to_model(aligned, ["stem.conv1.weight", "res2.0.conv1.weight"])
    assert back == state and "removed" in how
    same, how = align_to_model(state, ["stem.conv1.weight"])
    assert same == state and how == ""


def test_torchvision_names_are_mapped():
    state = {
        "conv1.weight": torch.zeros(1),
        "bn1.running_var": torch.zeros(1),
        "layer1.0.conv1.weight": torch.zeros(1),
        "bn1.weight": torch.zeros(1),
        "layer3.2.bn3.bias": torch.zeros(1),
        "layer2.0.downsample.0.weight": torch.zeros(1),
        "layer2.0.downsample.1.running_mean": torch.zeros(1),
        "fc.weight": torch.zeros(1),
    }
    content = parse_weights(state, "resnet50.pth")
    assert content.naming == "torchvision"
    assert sorted(content.state_dict) == [
        "res2.0.conv1.weight",
        "res3.0.shortcut.norm.running_mean",
        "res3.0.shortcut.weight",
        "res4.2.conv3.norm.bias",
        "stem.conv1.norm.running_var",
        "stem.conv1.norm.weight",
        "stem.conv1.weight",
    ]
    assert content.dropped == ["fc.weight"]


def test_caffe2_names_are_mapped():
    blobs = {
        name: np.ones(2, np.float32)
        for name in (
            "conv1_w",
            "res_conv1_bn_s",
            "res_conv1_bn_b",
            "res2_0_branch2a_w",
            "res2_0_branch2c_bn_s",
            "res5_2_branch2b_bn_b",
            "res2_0_branch1_w",
            "res2_0_branch1_bn_s",
            "fc1000_w",
            "pred_w",
        )
    }
    content = parse_weights({"blobs": blobs}, "R-50.pkl")
    assert content.naming == "caffe2"
    assert sorted(content.state_dict) == sorted(
        [
            "stem.conv1.weight",
            "stem.conv1.norm.weight",
            "stem.conv1.norm.bias",
            "stem.conv1.norm.running_mean",
            "stem.conv1.norm.running_var",
            "res2.0.conv1.weight",
            "res2.0.conv3.norm.weight",
            "res2.0.conv3.norm.running_mean",
            "res2.0.conv3.norm.running_var",
            "res5.2.conv2.norm.bias",
            "res2.0.shortcut.weight",
            "res2.0.shortcut.norm.weight",
            "res2.0.shortcut.norm.running_mean",
            "res2.0.shortcut.norm.running_var",
            "pred_w",  # unknown names are kept, and reported as unused when loading
        ]
    )
    assert content.dropped == ["fc1000_w"]
    assert torch.equal(content.state_dict["stem.conv1.norm.running_var"], torch.ones(2))


def test_group_keys_keeps_detail_where_it_fits():
    keys = [f"head.cls_subnet.{i}.{p}" for i in range(8) for p in ("weight", "bias")]
    keys += ["head.cls_score.weight", "head.cls_score.bias", "backbone.fpn_output3.weight"]
    assert group_keys(keys, max_groups=4) == [
        "backbone.fpn_output3.weight",
        "head.cls_score.{bias, weight}",
        "head.cls_subnet.*  (16 keys)",
    ]
