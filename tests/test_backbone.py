import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from cvpods.configs import FCOSConfig
from cvpods.layers import ShapeSpec
from cvpods.modeling import build_resnet_backbone, build_retinanet_resnet_fpn_backbone
from cvpods.modeling.backbone import FPN, Backbone


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


class _FixedFeatures(Backbone):
    """A bottom-up 'backbone' returning the given feature maps whatever the input."""

    def __init__(self, features: dict[str, torch.Tensor], strides: dict[str, int]) -> None:
        super().__init__()
        self.features = features
        self._out_features = list(features)
        self._out_feature_channels = {k: v.shape[1] for k, v in features.items()}
        self._out_feature_strides = dict(strides)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(self.features)


# By hand, with identity lateral and output convs, res5 = 8, res4 = [[1, 2], [3, 4]], res3 = 4:
# sum: p5 = 8; p4 = res4 + 8; p3 = res3 + p4 upsampled (each value repeated 2x2).
# avg: p5 = 8; p4 = (res4 + 8) / 2 = [[4.5, 5], [5.5, 6]]; p3 = (4 + p4 upsampled) / 2.
FPN_EXPECTED = {
    "sum": {
        "p5": [[8.0]],
        "p4": [[9.0, 10], [11, 12]],
        "p3": [[13.0, 13, 14, 14], [13, 13, 14, 14], [15, 15, 16, 16], [15, 15, 16, 16]],
    },
    "avg": {
        "p5": [[8.0]],
        "p4": [[4.5, 5], [5.5, 6]],
        "p3": [
            [4.25, 4.25, 4.5, 4.5],
            [4.25, 4.25, 4.5, 4.5],
            [4.75, 4.75, 5, 5],
            [4.75, 4.75, 5, 5],
        ],
    },
}


@pytest.mark.parametrize("fuse_type", ["sum", "avg"])
def test_fpn_fuse_type_by_hand(fuse_type):
    features = {
        "res3": torch.full((1, 1, 4, 4), 4.0),
        "res4": torch.tensor([[[[1.0, 2], [3, 4]]]]),
        "res5": torch.full((1, 1, 1, 1), 8.0),
    }
    bottom_up = _FixedFeatures(features, {"res3": 8, "res4": 16, "res5": 32})
    fpn = FPN(bottom_up, ["res3", "res4", "res5"], out_channels=1, fuse_type=fuse_type)
    with torch.no_grad():
        for lateral, output in zip(fpn.lateral_convs, fpn.output_convs):
            lateral.weight.fill_(1.0)
            lateral.bias.zero_()
            output.weight.zero_()
            output.weight[0, 0, 1, 1] = 1.0
            output.bias.zero_()
        outputs = fpn(torch.zeros(1, 3, 32, 32))
    assert list(outputs) == ["p3", "p4", "p5"]
    for name, expected in FPN_EXPECTED[fuse_type].items():
        assert outputs[name][0, 0].tolist() == expected, name


def test_fpn_fuse_type_from_the_config():
    """MODEL.FPN.FUSE_TYPE='avg' halves each fused top-down map: with the same weights, P4 (one
    fusion, bias-free linear output conv) is half of the 'sum' network's, P5 and P6 unchanged."""
    outputs = {}
    for fuse_type in ("sum", "avg"):
        cfg = resnet18_cfg(
            **{
                "MODEL.FPN.OUT_CHANNELS": 16,
                "MODEL.RESNETS.NORM": "GN",
                "MODEL.BACKBONE.FREEZE_AT": 0,
                "MODEL.FPN.FUSE_TYPE": fuse_type,
            }
        )
        torch.manual_seed(0)
        fpn = build_retinanet_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))
        torch.manual_seed(1)
        with torch.no_grad():
            outputs[fuse_type] = fpn(torch.randn(1, 3, 64, 64))
    sum_out, avg_out = outputs["sum"], outputs["avg"]
    for name in ("p5", "p6", "p7"):
        torch.testing.assert_close(avg_out[name], sum_out[name])
    torch.testing.assert_close(avg_out["p4"], sum_out["p4"] / 2, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(avg_out["p3"], sum_out["p3"] / 2, rtol=1e-3, atol=1e-4)
