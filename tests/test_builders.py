"""Builders: the registries (MODEL.META_ARCHITECTURE, MODEL.FCOS.HEAD_NAME, MODEL.RPN.HEAD_NAME),
``from_config`` against explicit keyword arguments, and the errors for names nobody registered.

Everything is built from library configs (no playground folder is loaded), with a thin backbone.
"""

from __future__ import annotations

import pytest
import torch
from conftest import THIN_BACKBONE

from cvpods.configs import BaseDetectionConfig, ConfigError, FCOSConfig, RCNNFPNConfig
from cvpods.layers import ShapeSpec
from cvpods.modeling import (
    FCOS,
    FCOS_HEAD_REGISTRY,
    META_ARCH_REGISTRY,
    RPN_HEAD_REGISTRY,
    FCOSDynamicHead,
    FCOSFixHead,
    FCOSHead,
    GeneralizedRCNN,
    build_model,
    build_resnet_fpn_backbone,
    build_retinanet_resnet_fpn_backbone,
)
from cvpods.modeling.anchor_generator import DefaultAnchorGenerator
from cvpods.modeling.box_regression import Box2BoxTransform, Shift2BoxTransform
from cvpods.modeling.matcher import Matcher
from cvpods.modeling.poolers import ROIPooler
from cvpods.modeling.proposal_generator import RPN, DynamicRPNHead, FixRPNHead, StandardRPNHead
from cvpods.modeling.roi_heads import FastRCNNConvFCHead, FastRCNNOutputLayers, StandardROIHeads
from cvpods.modeling.shift_generator import ShiftGenerator
from cvpods.utils.registry import Registry

C = 32  # head width: the smallest GroupNorm(32) allows
FCOS_LEVELS = [ShapeSpec(channels=C, stride=s) for s in (8, 16, 32, 64, 128)]
RPN_LEVELS = [ShapeSpec(channels=C, stride=s) for s in (4, 8, 16, 32, 64)]


def thin(cfg, **overrides):
    cfg.merge_from_dict(
        {
            "MODEL.DEVICE": "cpu",
            "MODEL.FPN.OUT_CHANNELS": C,
            "MODEL.PIXEL_STD": [57.375, 57.12, 58.395],
            **THIN_BACKBONE,
            **overrides,
        }
    )
    return cfg


def fcos_config(**overrides) -> FCOSConfig:
    return thin(
        FCOSConfig(),
        **{
            "MODEL.FCOS.NUM_CLASSES": 3,
            "MODEL.FCOS.NUM_CONVS": 4,
            "MODEL.FCOS.GATE_ACTIVATION": "GeReTanH",
            "MODEL.FCOS.GATE_ACTIVATION_KARGS": {"tau": 1.5},
            **overrides,
        },
    )


def rcnn_config(**overrides) -> RCNNFPNConfig:
    return thin(
        RCNNFPNConfig(),
        **{
            "MODEL.ROI_HEADS.NUM_CLASSES": 3,
            "MODEL.ROI_BOX_HEAD.FC_DIM": 32,
            "MODEL.RPN.NUM_CONVS": 4,
            **overrides,
        },
    )


def seeded(build, *args, **kwargs):
    """``build(*args, **kwargs)`` after seeding torch with 0."""
    torch.manual_seed(0)
    return build(*args, **kwargs)


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


def image_batch() -> list[dict]:
    gen = torch.Generator().manual_seed(3)
    return [{"image": torch.rand(3, 64, 96, generator=gen) * 255, "height": 128, "width": 192}]


# ---------------------------------------------------------------------------------------------
# Registries and the library builder


def test_registries_hold_the_library_classes():
    assert META_ARCH_REGISTRY.get("FCOS") is FCOS
    assert META_ARCH_REGISTRY.get("GeneralizedRCNN") is GeneralizedRCNN
    assert FCOS_HEAD_REGISTRY.names() == ["FCOSDynamicHead", "FCOSFixHead", "FCOSHead"]
    assert RPN_HEAD_REGISTRY.names() == ["DynamicRPNHead", "FixRPNHead", "StandardRPNHead"]
    assert FCOSConfig().MODEL.META_ARCHITECTURE == "FCOS"
    assert FCOSConfig().MODEL.FCOS.HEAD_NAME == "FCOSHead"
    assert RCNNFPNConfig().MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert RCNNFPNConfig().MODEL.RPN.HEAD_NAME == "StandardRPNHead"


@pytest.mark.parametrize("head_name", ["FCOSHead", "FCOSFixHead", "FCOSDynamicHead"])
def test_build_model_builds_fcos_with_the_named_head(head_name):
    model = build_model(fcos_config(**{"MODEL.FCOS.HEAD_NAME": head_name}))
    assert type(model) is FCOS and type(model.head) is FCOS_HEAD_REGISTRY.get(head_name)
    assert model.training and model.device == torch.device("cpu")
    # The config form and the library builder are the same model.
    cfg = fcos_config(**{"MODEL.FCOS.HEAD_NAME": head_name})
    assert_same_state(seeded(build_model, cfg), seeded(FCOS, cfg))


@pytest.mark.parametrize("head_name", ["StandardRPNHead", "FixRPNHead", "DynamicRPNHead"])
def test_build_model_builds_rcnn_with_the_named_rpn_head(head_name):
    model = build_model(rcnn_config(**{"MODEL.RPN.HEAD_NAME": head_name}))
    assert type(model) is GeneralizedRCNN
    assert type(model.proposal_generator.rpn_head) is RPN_HEAD_REGISTRY.get(head_name)


@pytest.mark.parametrize(
    "config, key, value, names",
    [
        (fcos_config, "MODEL.FCOS.HEAD_NAME", "FCOSTinyHead", FCOS_HEAD_REGISTRY.names()),
        (rcnn_config, "MODEL.RPN.HEAD_NAME", "NoSuchRPNHead", RPN_HEAD_REGISTRY.names()),
        (fcos_config, "MODEL.META_ARCHITECTURE", "RetinaNet", META_ARCH_REGISTRY.names()),
    ],
)
def test_unknown_name_names_the_key_the_value_and_the_registered_names(config, key, value, names):
    cfg = config(**{key: value})
    with pytest.raises(ConfigError) as info:
        build_model(cfg)
    message = str(info.value)
    assert key in message and repr(value) in message
    assert ", ".join(names) in message
    assert isinstance(info.value, ValueError)  # what callers catching ValueError expect


def test_config_without_meta_architecture_is_named():
    with pytest.raises(ConfigError, match="MODEL.META_ARCHITECTURE"):
        build_model(BaseDetectionConfig())


def test_registered_custom_head_is_selected_by_the_config(monkeypatch):
    class WideFCOSHead(FCOSHead):
        pass

    monkeypatch.setitem(FCOS_HEAD_REGISTRY._entries, "WideFCOSHead", WideFCOSHead)
    model = build_model(fcos_config(**{"MODEL.FCOS.HEAD_NAME": "WideFCOSHead"}))
    assert type(model.head) is WideFCOSHead


def test_registry_register_forms_and_name_clashes():
    registry = Registry("thing", "MODEL.THING.NAME")

    @registry.register()
    class A:
        pass

    @registry.register(name="Bee")
    class B:
        pass

    registry.register(A)  # the same class again: fine
    assert registry.names() == ["A", "Bee"] and "Bee" in registry and len(registry) == 2
    assert registry.get("Bee") is B

    class Other:
        pass

    with pytest.raises(ValueError, match="'A' is already registered"):
        registry.register(Other, name="A")
    with pytest.raises(ConfigError, match=r"unknown MODEL.THING.NAME 'C'.*registered: A, Bee"):
        registry.get("C")


# ---------------------------------------------------------------------------------------------
# from_config against explicit keyword arguments


@pytest.mark.parametrize("head_cls", [FCOSHead, FCOSFixHead, FCOSDynamicHead])
def test_fcos_head_config_form_equals_from_config_kwargs(head_cls):
    cfg = fcos_config()
    kwargs = head_cls.from_config(cfg, FCOS_LEVELS)
    assert_same_state(seeded(head_cls, cfg, FCOS_LEVELS), seeded(head_cls, **kwargs))


def test_fcos_heads_explicit_kwargs_equal_the_config_form():
    cfg = fcos_config(**{"MODEL.FCOS.NUM_CLASSES": 5, "MODEL.FCOS.CENTERNESS_ON_REG": True})
    common = dict(
        input_shape=FCOS_LEVELS,
        num_classes=5,
        fpn_strides=[8, 16, 32, 64, 128],
        num_convs=4,
        prior_prob=0.01,
        centerness_on_reg=True,
    )
    explicit = {
        FCOSHead: common,
        FCOSFixHead: {**common, "resize_method": "bilinear"},
        FCOSDynamicHead: {
            **common,
            "resize_method": "bilinear",
            "num_groups": 1,
            "gate_activation": "GeReTanH",
            "gate_activation_kwargs": {"tau": 1.5},
        },
    }
    for head_cls, kwargs in explicit.items():
        a = seeded(head_cls, cfg, FCOS_LEVELS)
        b = seeded(head_cls, **kwargs)
        assert_same_state(a, b)
        assert b.centerness_on_reg and b.num_classes == 5


@pytest.mark.parametrize("head_cls", [StandardRPNHead, FixRPNHead, DynamicRPNHead])
def test_rpn_head_config_form_equals_from_config_kwargs(head_cls):
    cfg = rcnn_config()
    kwargs = head_cls.from_config(cfg, RPN_LEVELS, [3] * 5)
    assert_same_state(seeded(head_cls, cfg, RPN_LEVELS, [3] * 5), seeded(head_cls, **kwargs))


def test_dynamic_rpn_head_explicit_kwargs_equal_the_config_form():
    cfg = rcnn_config()
    explicit = dict(
        input_shape=RPN_LEVELS,
        num_cell_anchors=[3] * 5,
        num_convs=4,
        resize_method="bilinear",
        norm="GN",
        num_groups=1,
        gate_activation="GeReTanH",
        gate_activation_kwargs={"tau": 1.5},
    )
    assert_same_state(
        seeded(DynamicRPNHead, cfg, RPN_LEVELS, [3] * 5),
        seeded(DynamicRPNHead, **explicit),
    )


def test_fcos_explicit_kwargs_equal_the_config_form_in_weights_and_outputs():
    cfg = fcos_config(
        **{"MODEL.FCOS.HEAD_NAME": "FCOSDynamicHead", "MODEL.FCOS.SCORE_THRESH_TEST": 0.0}
    )

    def explicit() -> FCOS:
        backbone = build_retinanet_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))
        head = FCOSDynamicHead(
            input_shape=[backbone.output_shape()[f] for f in ("p3", "p4", "p5", "p6", "p7")],
            num_classes=3,
            fpn_strides=[8, 16, 32, 64, 128],
            num_convs=4,
            prior_prob=0.01,
            resize_method="bilinear",
            num_groups=1,
            gate_activation="GeReTanH",
            gate_activation_kwargs={"tau": 1.5},
        )
        return FCOS(
            backbone=backbone,
            head=head,
            in_features=["p3", "p4", "p5", "p6", "p7"],
            num_classes=3,
            object_sizes_of_interest=[
                [-1, 64],
                [64, 128],
                [128, 256],
                [256, 512],
                [512, float("inf")],
            ],
            shift_generator=ShiftGenerator([8, 16, 32, 64, 128]),
            shift2box_transform=Shift2BoxTransform((1.0, 1.0, 1.0, 1.0)),
            focal_loss_alpha=0.25,
            focal_loss_gamma=2.0,
            iou_loss_type="iou",
            score_threshold=0.0,
            topk_candidates=1000,
            nms_threshold=0.6,
            max_detections_per_image=100,
            pixel_mean=[103.530, 116.280, 123.675],
            pixel_std=[57.375, 57.12, 58.395],
        )

    from_cfg = seeded(FCOS, cfg).eval()
    by_hand = seeded(explicit).eval()
    assert_same_state(from_cfg, by_hand)
    with torch.no_grad():
        a, b = from_cfg(image_batch())[0], by_hand(image_batch())[0]
    assert len(a["instances"]) > 0
    for field in ("pred_boxes", "scores", "pred_classes"):
        x, y = getattr(a["instances"], field), getattr(b["instances"], field)
        x, y = getattr(x, "tensor", x), getattr(y, "tensor", y)
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    torch.testing.assert_close(a["head_cost"].used, b["head_cost"].used)


def fix_rpn_by_hand(levels: list[ShapeSpec]) -> RPN:
    """MODEL.RPN of rcnn_config() with HEAD_NAME "FixRPNHead", written out."""
    anchors = DefaultAnchorGenerator(
        [[32], [64], [128], [256], [512]], [[0.5, 1.0, 2.0]], [4, 8, 16, 32, 64]
    )
    head = FixRPNHead(
        input_shape=levels, num_cell_anchors=[3] * 5, num_convs=4, resize_method="bilinear",
        norm="GN",
    )  # fmt: skip
    return RPN(
        in_features=["p2", "p3", "p4", "p5", "p6"],
        head=head,
        anchor_generator=anchors,
        box2box_transform=Box2BoxTransform((1.0, 1.0, 1.0, 1.0)),
        anchor_matcher=Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True),
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_topk=(2000, 1000),
        post_nms_topk=(1000, 1000),
        nms_thresh=0.7,
    )


def test_rcnn_explicit_kwargs_equal_the_config_form():
    cfg = rcnn_config(**{"MODEL.RPN.HEAD_NAME": "FixRPNHead"})
    config_form = seeded(GeneralizedRCNN, cfg)
    assert_same_state(
        config_form, seeded(lambda: GeneralizedRCNN(**GeneralizedRCNN.from_config(cfg)))
    )

    def explicit() -> GeneralizedRCNN:
        # The parts in the order the config form builds them (the same random initialisation).
        backbone = build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))
        shapes = backbone.output_shape()
        rpn = fix_rpn_by_hand([shapes[f] for f in ("p2", "p3", "p4", "p5", "p6")])
        return GeneralizedRCNN(
            backbone=backbone,
            proposal_generator=rpn,
            roi_heads=StandardROIHeads(cfg, shapes),
            pixel_mean=[103.530, 116.280, 123.675],
            pixel_std=[57.375, 57.12, 58.395],
        )

    assert_same_state(config_form, seeded(explicit))


def test_rpn_and_roi_heads_explicit_kwargs_equal_the_config_form():
    cfg = rcnn_config(**{"MODEL.RPN.HEAD_NAME": "FixRPNHead"})
    shapes = {f"p{i}": ShapeSpec(channels=C, stride=2**i) for i in range(2, 7)}

    config_rpn = seeded(RPN, cfg, shapes)
    hand_rpn = seeded(fix_rpn_by_hand, RPN_LEVELS)
    assert_same_state(config_rpn, hand_rpn)
    for name in ("pre_nms_topk", "post_nms_topk", "nms_thresh", "min_box_side_len",
                 "batch_size_per_image", "positive_fraction", "boundary_threshold"):  # fmt: skip
        assert getattr(config_rpn, name) == getattr(hand_rpn, name), name

    def roi_heads_by_hand() -> StandardROIHeads:
        box_head = FastRCNNConvFCHead(
            input_shape=ShapeSpec(channels=C, height=7, width=7), num_fc=2, fc_dim=32
        )
        return StandardROIHeads(
            in_features=["p2", "p3", "p4", "p5"],
            num_classes=3,
            box_pooler=ROIPooler(7, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 0, "ROIAlignV2"),
            box_head=box_head,
            box_predictor=FastRCNNOutputLayers(32, 3, cls_agnostic_bbox_reg=False),
            proposal_matcher=Matcher([0.5], [0, 1], allow_low_quality_matches=False),
            box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)),
            batch_size_per_image=512,
            positive_fraction=0.25,
            test_score_thresh=0.05,
            test_nms_thresh=0.5,
            test_detections_per_img=100,
        )

    assert_same_state(seeded(StandardROIHeads, cfg, shapes), seeded(roi_heads_by_hand))


# ---------------------------------------------------------------------------------------------
# The old call forms


def test_head_cls_argument_overrides_the_configured_head():
    cfg = fcos_config(**{"MODEL.FCOS.HEAD_NAME": "FCOSHead"})
    model = FCOS(cfg, head_cls=FCOSFixHead)
    assert type(model.head) is FCOSFixHead
    backbone = build_retinanet_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))
    assert FCOS(cfg, backbone=backbone).backbone is backbone
    assert FCOS(cfg=cfg).head.__class__ is FCOSHead


def test_positional_argument_that_is_not_a_config_is_refused():
    with pytest.raises(TypeError, match="config as its only positional argument"):
        FCOSHead(FCOS_LEVELS)
