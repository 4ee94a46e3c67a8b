import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from cvpods.configs import FCOSConfig
from cvpods.layers import ShapeSpec
from cvpods.modeling import build_resnet_backbone, build_retinanet_resnet_fpn_backbone


def resnet18_cfg(**overrides) -> FCOSConfig:
    cfg = FCOSConfig()
    cfg.merge_from_dict(
        {
            "MODEL.RESNETS.DEPTH": 18,
            "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
            "MODEL.RESNETS.NORM": "BN",
            **overrides,
        }
    )
    return cfg


def test_freeze_at_freezes_the_stem_and_early_stages():
    model = build_resnet_backbone(
        resnet18_cfg(**{"MODEL.BACKBONE.FREEZE_AT": 2}), ShapeSpec(channels=3)
    )
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert not any(p.requires_grad for p in model.res2.parameters())
    assert all(p.requires_grad for p in model.res3.parameters())
    assert isinstance(model.res2[0].conv1.norm, FrozenBatchNorm2d)
    assert isinstance(model.res3[0].conv1.norm, nn.BatchNorm2d)


def test_fpn_levels_strides_and_p6_from_res5():
    cfg = resnet18_cfg(
        **{"MODEL.FPN.OUT_CHANNELS": 32, "MODEL.RESNETS.NORM": "GN", "MODEL.BACKBONE.FREEZE_AT": 0}
    )
    fpn = build_retinanet_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))
    assert fpn.size_divisibility == 32
    assert {k: v.stride for k, v in fpn.output_shape().items()} == {
        "p3": 8,
        "p4": 16,
        "p5": 32,
        "p6": 64,
        "p7": 128,
    }
    assert fpn.top_block.p6.in_channels == 512  # C5 of ResNet-18
    outputs = fpn(torch.zeros(1, 3, 64, 96))
    assert [tuple(outputs[k].shape[-2:]) for k in ("p3", "p4", "p5", "p6", "p7")] == [
        (8, 12),
        (4, 6),
        (2, 3),
        (1, 2),
        (1, 1),
    ]


def test_bad_backbone_settings_are_named():
    with pytest.raises(ValueError, match="DEPTH"):
        build_resnet_backbone(resnet18_cfg(**{"MODEL.RESNETS.DEPTH": 42}), ShapeSpec(channels=3))
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        build_resnet_backbone(
            resnet18_cfg(**{"MODEL.RESNETS.OUT_FEATURES": ["res6"]}), ShapeSpec(channels=3)
        )
