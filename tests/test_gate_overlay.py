"""Issue 12, item 4: gate maps a person can read. The depth cells' and the scale-fusion units'
gate maps come out of the model (``"gate_maps"`` / ``"fusion_gate_maps"``) for FCOS and the
dynamic RPN, and ``demo.py --show-gates`` draws them per level as labelled overlays."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch
from conftest import THIN_BACKBONE, load_experiment
from test_engine_support import one_torch_thread  # noqa: F401 - autouse fixture
from test_robustness_support import load_demo, write_tiny_fcos_experiment

from cvpods.layers import SpatialGate

FCOS_DYNAMIC = "fcos.res50.1x.dynamic.d4.lambda-0_1"
RPN_DYNAMIC = "faster_rcnn.res50.fpn.1x.dynamic_rpn.d4.lambda-0_1"


def _thin(name: str, **overrides):
    cfg, build_model = load_experiment(name)
    cfg.merge_from_dict(
        {
            "MODEL.DEVICE": "cpu",
            "MODEL.WEIGHTS": "",
            "MODEL.FPN.OUT_CHANNELS": 32,
            **THIN_BACKBONE,
            **overrides,
        }
    )
    torch.manual_seed(0)
    return build_model(cfg).eval()


def _pattern(shape: tuple[int, int], seed: int) -> torch.Tensor:
    """A fixed 0/1 map with both values (a 1x1 map: 1)."""
    g = torch.Generator().manual_seed(seed * 1000 + shape[0] * 37 + shape[1])
    cells = (torch.rand(shape, generator=g) > 0.5).float()
    cells.view(-1)[0] = 1.0
    if cells.numel() > 1:
        cells.view(-1)[-1] = 0.0
    return cells


def _force_gates(head) -> list:
    """Forward hooks making every SpatialGate of ``head`` return a fixed 0/1 map: seed 1 for the
    depth cells' gates, seed 2 for the fusion units', on the last gate group only (a position is
    computed when any group's gate is not 0)."""

    def hook(seed):
        def force(_module, _inputs, out):
            forced = torch.zeros_like(out)
            forced[:, -1] = _pattern(tuple(out.shape[-2:]), seed).to(out)
            return forced

        return force

    handles = []
    for name, module in head.named_modules():
        if isinstance(module, SpatialGate):
            seed = 2 if "dynamic_convs" in name else 1
            handles.append(module.register_forward_hook(hook(seed)))
    assert len(handles) > 2
    return handles


def test_fcos_depth_and_fusion_gate_maps_are_the_forced_gates():
    model = _thin(FCOS_DYNAMIC, **{"MODEL.FCOS.NUM_CLASSES": 3})
    handles = _force_gates(model.head)
    image = torch.randint(0, 256, (3, 128, 256), dtype=torch.uint8)
    with torch.no_grad():
        (plain,) = model([{"image": image}])
        (output,) = model([{"image": image}], return_gate_maps=True)
    for handle in handles:
        handle.remove()
    assert "gate_maps" not in plain and "fusion_gate_maps" not in plain
    strides = model.head.fpn_strides
    for key, seed in (("gate_maps", 1), ("fusion_gate_maps", 2)):
        maps = output[key]
        assert len(maps) == len(strides)
        for cells, s in zip(maps, strides):
            expected = _pattern((128 // s, 256 // s), seed)
            torch.testing.assert_close(cells, expected, msg=f"{key} stride {s}")


def test_dynamic_rpn_depth_and_fusion_gate_maps_are_the_forced_gates():
    model = _thin(
        RPN_DYNAMIC, **{"MODEL.ROI_HEADS.NUM_CLASSES": 3, "MODEL.ROI_BOX_HEAD.FC_DIM": 32}
    )
    head = model.proposal_generator.rpn_head
    handles = _force_gates(head)
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)
    with torch.no_grad():
        (output,) = model([{"image": image}], return_gate_maps=True)
    for handle in handles:
        handle.remove()
    features = model.backbone(model.preprocess_image([{"image": image}]).tensor)
    shapes = [tuple(features[f].shape[-2:]) for f in model.proposal_generator.in_features]
    for key, seed in (("gate_maps", 1), ("fusion_gate_maps", 2)):
        maps = output[key]
        assert len(maps) == len(head.fpn_strides) == len(shapes)
        for cells, s, shape in zip(maps, head.fpn_strides, shapes):
            h, w = math.ceil(96 / s), math.ceil(128 / s)
            torch.testing.assert_close(cells, _pattern(shape, seed)[:h, :w], msg=f"{key} {s}")


def test_tile_labels_name_the_level_and_its_computed_fraction():
    demo = load_demo()
    assert demo.gate_tile_label("P3", "depth cells", 0.4231) == "P3 depth cells: 42% computed"
    assert demo.gate_tile_label("P7", "fusion units", 1.0) == "P7 fusion units: 100% computed"
    assert demo.gate_tile_label("P5", "depth cells", 0.0) == "P5 depth cells: 0% computed"
    assert demo.gate_tile_label("P4", "fusion units", 0.001) == "P4 fusion units: <1% computed"
    assert demo.gate_tile_label("P4", "depth cells", 0.999) == "P4 depth cells: >99% computed"
    assert [demo.level_name(i, [8, 16, 32, 64, 128]) for i in range(5)] == [
        "P3", "P4", "P5", "P6", "P7",
    ]  # fmt: skip
    assert demo.level_name(0, [4, 8]) == "P2" and demo.level_name(1) == "P4"


def test_gate_panel_draws_depth_and_fusion_rows_with_a_legend():
    demo = load_demo()
    image = np.full((100, 150, 3), 128, np.uint8)
    strides, input_size = [8, 16, 32, 64, 128], (100, 150)
    depth = [_pattern((math.ceil(100 / s), math.ceil(150 / s)), 1).numpy() for s in strides]
    fusion = [_pattern((math.ceil(100 / s), math.ceil(150 / s)), 2).numpy() * 0.5 for s in strides]
    panel = demo.gate_panel(image, depth, fusion, strides, input_size)
    tile_h = demo.GATE_TILE_HEIGHT
    tile_w = round(150 * tile_h / 100)
    width = max(5 * tile_w, 760)
    legend = demo.computed_legend(width, [("a", (0, 0, 0)), ("b", (0, 0, 0))], footer="c")
    assert panel.shape == (2 * (tile_h + 2) + legend.shape[0], width, 3)
    packed = panel.reshape(-1, 3).astype(np.int32) @ np.array([1 << 16, 1 << 8, 1], np.int32)
    assert len(np.unique(packed)) > 10  # not one colour: grey, orange and blue shades, text
    # P3, depth row: a computed cell is orange, a skipped one grey (below the label).
    scale = tile_h / 100
    ys, xs = np.nonzero(depth[0][4:, :])
    y, x = int((ys[0] + 4) * 8 * scale + 4 * scale), int(xs[0] * 8 * scale + 4 * scale)
    b, g, r = panel[y, x].astype(int)
    assert r > g > b, (b, g, r)
    ys, xs = np.nonzero(depth[0][4:, :] == 0)
    y, x = int((ys[0] + 4) * 8 * scale + 4 * scale), int(xs[0] * 8 * scale + 4 * scale)
    b, g, r = panel[y, x].astype(int)
    assert b == g == r
    # The fusion row (below) paints in blue.
    ys, xs = np.nonzero(fusion[0][4:, :])
    y = tile_h + 2 + int((ys[0] + 4) * 8 * scale + 4 * scale)
    x = int(xs[0] * 8 * scale + 4 * scale)
    b, g, r = panel[y, x].astype(int)
    assert b > g > r, (b, g, r)
    # Without fusion maps: one row.
    assert demo.gate_panel(image, depth).shape[0] == tile_h + 2 + legend.shape[0] - 24


TINY_DYNAMIC_NET = """
from cvpods.modeling import FCOS, FCOSDynamicHead


def build_model(cfg):
    return FCOS(cfg, head_cls=FCOSDynamicHead)
"""


def test_demo_show_gates_writes_the_two_row_panel(tmp_path: Path) -> None:
    folder = write_tiny_fcos_experiment(tmp_path / "tiny")
    (folder / "net.py").write_text(TINY_DYNAMIC_NET)
    from cvpods.engine.launcher import load_experiment as load_folder

    cfg, build_model = load_folder(str(folder))
    torch.save({"model": build_model(cfg).state_dict()}, tmp_path / "weights.pth")
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.random.default_rng(0).integers(0, 255, (60, 90, 3), np.uint8))
    out = tmp_path / "out"
    load_demo().main(
        ["--config", str(folder), "--input", str(photo), "--output", str(out), "--show-gates"]
        + ["MODEL.WEIGHTS", str(tmp_path / "weights.pth")]
    )
    panel = cv2.imread(str(out / "photo_gates.png"))
    assert panel is not None
    width = max(5 * round(90 * 256 / 60), 760)
    assert panel.shape[1] == width and panel.shape[0] > 2 * 256
