"""The dynamic head's compiled operators against float64 references written here.

* ``torch.ops.cvpods.gate_conv2d``: a 3x3 convolution with few outputs (the spatial gates);
* ``torch.ops.cvpods.gated_depthwise``: gate * GroupNorm(depthwise 3x3 conv) where a gate is open;
* ``torch.ops.cvpods.fuse_neighbours``: a scale-fusion stage's weighted sum of resized neighbours;
* ``torch.ops.cvpods.masked_conv2d`` with a gated residual, NCHW inputs, and its weight cache;
* the operators are registered: fake kernels, torch.compile without graph breaks, torch.fx.

Every CPU test has a CUDA twin that runs where a GPU exists.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cvpods  # noqa: F401  (loads cvpods._C, which registers torch.ops.cvpods)
from cvpods.configs import FCOSConfig
from cvpods.layers import DynamicHeadStage, MaskedConv2d, ShapeSpec
from cvpods.layers.masked_conv import MaskedEpilogue, masked_conv2d
from cvpods.modeling import FCOSDynamicHead

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ),
]


def gated_depthwise_reference(x, weight, bias, groups, gn_weight, gn_bias, gate) -> torch.Tensor:
    """float64: depthwise conv + bias, GroupNorm over the whole map, times the gate maps."""
    n, c, h, w = x.shape
    y = F.conv2d(x.double(), weight.double(), bias.double(), padding=1, groups=c)
    if groups:
        y = F.group_norm(y, groups, gn_weight.double(), gn_bias.double(), eps=1e-5)
    maps = gate.shape[1]
    return (y.view(n, maps, c // maps, h, w) * gate.double().unsqueeze(2)).view(n, c, h, w)


def masked_reference(
    x, mask, weight, post: MaskedEpilogue, bias=None, residual=None, gate=None
) -> torch.Tensor:
    """float64: conv (+ bias), then per image GroupNorm over the active positions (+ ReLU), zeros
    elsewhere; with ``residual``, ``relu(residual + gate * that)`` (gate ``[N, G, H, W]``, default
    1)."""
    y = F.conv2d(
        x.double(),
        weight.double(),
        None if bias is None else bias.double(),
        padding=weight.shape[-1] // 2,
    )
    out = torch.zeros_like(y)
    for i in range(x.shape[0]):
        idx = mask[i].reshape(-1).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        cols = y[i].reshape(y.shape[1], -1)[:, idx][None]
        if post.num_groups:
            cols = F.group_norm(
                cols, post.num_groups, post.weight.double(), post.bias.double(), post.eps
            )
        if post.relu:
            cols = F.relu(cols)
        out[i].view(y.shape[1], -1)[:, idx] = cols[0]
    if residual is not None:
        n, c, h, w = out.shape
        g = gate.double() if gate is not None else torch.ones(n, 1, h, w, dtype=torch.float64)
        scaled = (out.view(n, g.shape[1], c // g.shape[1], h, w) * g.unsqueeze(2)).view(n, c, h, w)
        out = F.relu(scaled + residual.double())
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [16, 64, 24])
@pytest.mark.parametrize("outputs", [1, 2, 3, 5])
@pytest.mark.parametrize("simd", [True, False])
def test_gate_conv2d_equals_conv2d(device, channels, outputs, simd) -> None:
    gen = torch.Generator().manual_seed(channels * 10 + outputs)
    x = torch.randn(2, channels, 7, 10, generator=gen)
    weight = torch.randn(outputs, channels, 3, 3, generator=gen)
    bias = torch.randn(outputs, generator=gen)
    expected = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    for layout in (torch.channels_last, torch.contiguous_format):
        xd = x.to(device).contiguous(memory_format=layout)
        out = torch.ops.cvpods.gate_conv2d(xd, weight.to(device), bias.to(device), simd)
        assert out.shape == (2, outputs, 7, 10)
        # float32 sums of channels*9 products of N(0,1) values: a few ulps of the largest sums.
        torch.testing.assert_close(out.double().cpu(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "channels,maps,groups", [(64, 1, 32), (64, 2, 32), (32, 1, 0), (48, 3, 16), (24, 1, 8)]
)
def test_gated_depthwise_equals_the_library_unit(device, channels, maps, groups) -> None:
    gen = torch.Generator().manual_seed(channels + maps)
    x = torch.randn(2, channels, 6, 9, generator=gen)
    weight = torch.randn(channels, 1, 3, 3, generator=gen)
    bias = torch.randn(channels, generator=gen)
    gn_weight, gn_bias = torch.rand(channels, generator=gen), torch.randn(channels, generator=gen)
    gate = torch.rand(2, maps, 6, 9, generator=gen)
    gate = gate * (torch.rand(2, maps, 6, 9, generator=gen) > 0.5)  # about half closed
    gate[1] = 0  # the second image: every gate closed
    expected = gated_depthwise_reference(x, weight, bias, groups, gn_weight, gn_bias, gate)
    for layout in (torch.channels_last, torch.contiguous_format):
        out = torch.ops.cvpods.gated_depthwise(
            x.to(device).contiguous(memory_format=layout), weight.to(device), bias.to(device),
            groups, gn_weight.to(device) if groups else None,
            gn_bias.to(device) if groups else None, 1e-5, gate.to(device),
        )  # fmt: skip
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out.double().cpu(), expected, rtol=1e-5, atol=1e-5)
        assert torch.all(out[1] == 0)


@pytest.mark.parametrize("height,width", [(1, 1), (1, 7), (5, 1), (3, 2), (4, 13)])
def test_gated_depthwise_statistics_at_every_border(height, width) -> None:
    """The vectorised statistics pass (32 channels a step, two columns at a time) on maps whose
    every position is a border, with odd and even widths."""
    gen = torch.Generator().manual_seed(height * 100 + width)
    x = torch.randn(2, 64, height, width, generator=gen)
    weight, bias = torch.randn(64, 1, 3, 3, generator=gen), torch.randn(64, generator=gen)
    gn_weight, gn_bias = torch.rand(64, generator=gen), torch.randn(64, generator=gen)
    gate = torch.ones(2, 1, height, width)
    expected = gated_depthwise_reference(x, weight, bias, 8, gn_weight, gn_bias, gate)
    out = torch.ops.cvpods.gated_depthwise(
        x.contiguous(memory_format=torch.channels_last), weight, bias, 8, gn_weight, gn_bias,
        1e-5, gate,
    )  # fmt: skip
    # A 1x1 map has a zero-variance group: its normalised values are (y - mean) / sqrt(eps).
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("outputs", [1, 2, 3])
def test_gate_conv2d_row_bands(threads, outputs) -> None:
    """The AVX2 path projects each input row once into a ring of three rows, per band of output
    rows (one band per thread, whose border rows are projected twice): an odd height split into
    uneven bands, wider than a SIMD step, against float64."""
    gen = torch.Generator().manual_seed(outputs)
    x = torch.randn(2, 32, 19, 70, generator=gen)
    weight = torch.randn(outputs, 32, 3, 3, generator=gen)
    bias = torch.randn(outputs, generator=gen)
    expected = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = torch.ops.cvpods.gate_conv2d(
            x.contiguous(memory_format=torch.channels_last), weight, bias
        )
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("height,width", [(35, 131), (16, 64), (17, 65)])
def test_gated_depthwise_statistics_over_tiles_and_bands(threads, height, width) -> None:
    """The statistics pass walks tiles of at most 64 columns and bands of 16 rows in pairs of
    rows: maps of several tiles and bands, with a last band of an odd number of rows, on one and
    two threads."""
    gen = torch.Generator().manual_seed(height * 1000 + width)
    x = torch.randn(2, 32, height, width, generator=gen) * 3 + 1
    weight, bias = torch.randn(32, 1, 3, 3, generator=gen), torch.randn(32, generator=gen)
    gn_weight, gn_bias = torch.rand(32, generator=gen), torch.randn(32, generator=gen)
    gate = torch.ones(2, 1, height, width)
    expected = gated_depthwise_reference(x, weight, bias, 8, gn_weight, gn_bias, gate)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = torch.ops.cvpods.gated_depthwise(
            x.contiguous(memory_format=torch.channels_last), weight, bias, 8, gn_weight,
            gn_bias, 1e-5, gate,
        )  # fmt: skip
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)


def fuse_neighbours_reference(x, finer, coarser, scale_weight, output_weight) -> torch.Tensor:
    """float64: x * output_weight + scale_weight * (resize(finer) + resize(coarser)), bilinear
    with align_corners=True, as the scale-fusion stage computes it with library operators."""
    out = x.double() * output_weight.double()
    for source in (finer, coarser):
        if source is not None:
            resized = F.interpolate(
                source.double(), size=x.shape[-2:], mode="bilinear", align_corners=True
            )
            out = out + resized * scale_weight.double()
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "size,finer,coarser",
    [
        ((10, 17), (20, 33), (5, 9)),  # an inner level: both neighbours, uneven ratios
        ((13, 21), None, (7, 11)),  # the finest level
        ((7, 11), (13, 21), None),  # the coarsest level
        ((6, 8), None, None),  # a one-level pyramid
        ((1, 1), (2, 2), (1, 1)),  # 1x1 maps: a zero interpolation scale
    ],
)
@pytest.mark.parametrize("channels", [64, 12])  # the vectorised path, and the scalar one
def test_fuse_neighbours_equals_resize_and_sum(device, size, finer, coarser, channels) -> None:
    gen = torch.Generator().manual_seed(sum(size) + channels)
    x = torch.randn(2, channels, *size, generator=gen)
    sources = [
        None if s is None else torch.randn(2, channels, *s, generator=gen) for s in (finer, coarser)
    ]
    scale_weight, output_weight = torch.tensor([0.7]), torch.tensor([1.3])
    expected = fuse_neighbours_reference(x, *sources, scale_weight, output_weight)
    for layout in (torch.channels_last, torch.contiguous_format):
        moved = [None if s is None else s.to(device).contiguous(memory_format=layout)
                 for s in sources]  # fmt: skip
        out = torch.ops.cvpods.fuse_neighbours(
            x.to(device).contiguous(memory_format=layout), *moved,
            scale_weight.to(device), output_weight.to(device),
        )  # fmt: skip
        assert out.is_contiguous(memory_format=torch.channels_last)
        # float32 sums of 9 terms of size ~1: a few ulps.
        torch.testing.assert_close(out.double().cpu(), expected, rtol=1e-5, atol=1e-5)
    out64 = torch.ops.cvpods.fuse_neighbours(
        x.double().to(device), *[None if s is None else s.double().to(device) for s in sources],
        scale_weight.double().to(device), output_weight.double().to(device),
    )  # fmt: skip
    torch.testing.assert_close(out64.cpu(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [64, 12])
def test_fuse_neighbours_skips_closed_source_pixels(device, channels) -> None:
    """With their gates, the sources' closed pixels (where every gate map is 0) count as 0 and
    are never read: they hold NaN here, as unwritten gated_depthwise outputs may."""
    gen = torch.Generator().manual_seed(channels)
    x = torch.randn(2, channels, 10, 17, generator=gen)
    finer, coarser = torch.randn(2, channels, 20, 33, generator=gen), torch.randn(2, channels, 5, 9)
    finer_gate = torch.rand(2, 2, 20, 33, generator=gen) * (torch.rand(2, 2, 20, 33) > 0.5)
    coarser_gate = torch.rand(2, 1, 5, 9, generator=gen) * (torch.rand(2, 1, 5, 9) > 0.3)
    closed = [(g == 0).all(1, keepdim=True) for g in (finer_gate, coarser_gate)]
    scale_weight, output_weight = torch.tensor([0.7]), torch.tensor([1.3])
    expected = fuse_neighbours_reference(
        x, finer.masked_fill(closed[0], 0), coarser.masked_fill(closed[1], 0), scale_weight,
        output_weight,
    )  # fmt: skip
    out = torch.ops.cvpods.fuse_neighbours(
        x.to(device), finer.masked_fill(closed[0], float("nan")).to(device),
        coarser.masked_fill(closed[1], float("nan")).to(device), scale_weight.to(device),
        output_weight.to(device), finer_gate.to(device), coarser_gate.to(device),
    )  # fmt: skip
    torch.testing.assert_close(out.double().cpu(), expected, rtol=1e-5, atol=1e-5)


def test_gated_depthwise_may_leave_closed_positions_unwritten() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 64, 7, 10, generator=gen).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(64, 1, 3, 3, generator=gen), torch.randn(64, generator=gen)
    gate = torch.rand(2, 2, 7, 10, generator=gen) * (torch.rand(2, 2, 7, 10, generator=gen) > 0.6)
    args = (x, weight, bias, 8, torch.rand(64), torch.randn(64), 1e-5, gate)
    expected = torch.ops.cvpods.gated_depthwise(*args)
    out = torch.ops.cvpods.gated_depthwise(*args, False)
    open_ = (gate != 0).any(1)
    torch.testing.assert_close(
        out.permute(0, 2, 3, 1)[open_], expected.permute(0, 2, 3, 1)[open_], rtol=0, atol=0
    )


def test_fuse_neighbours_names_the_bad_argument() -> None:
    x, one = torch.randn(1, 8, 4, 4), torch.ones(1)
    with pytest.raises(RuntimeError, match="coarser must be \\[N, C, H', W'\\] with N=1 and C=8"):
        torch.ops.cvpods.fuse_neighbours(x, None, torch.randn(1, 4, 2, 2), one, one)
    with pytest.raises(RuntimeError, match="finer must have x's dtype"):
        torch.ops.cvpods.fuse_neighbours(x, torch.randn(1, 8, 8, 8).double(), None, one, one)
    with pytest.raises(RuntimeError, match="scale_weight must have one element"):
        torch.ops.cvpods.fuse_neighbours(x, None, None, torch.ones(2), one)


def make_case(seed: int, n: int = 2, cin: int = 32, cout: int = 16, h: int = 9, w: int = 11):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=gen)
    mask = torch.rand(n, h, w, generator=gen) > 0.6
    weight = torch.randn(cout, cin, 3, 3, generator=gen) * 0.1
    gn = nn.GroupNorm(4, cout)
    with torch.no_grad():
        gn.weight.uniform_(0.5, 1.5, generator=gen)
        gn.bias.normal_(generator=gen)
    return x, mask, weight, MaskedEpilogue.from_group_norm(gn, relu=False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["sparse", "dense", "torch", "auto"])
@pytest.mark.parametrize("gate_maps", [0, 1, 2])
def test_gated_residual_is_the_dynamic_cell(device, impl, gate_maps) -> None:
    """relu(residual + gate * y) at active positions, relu(residual) elsewhere."""
    x, mask, weight, post = make_case(3)
    residual = torch.randn(2, 16, 9, 11)
    gate = None
    if gate_maps:
        gate = torch.rand(2, gate_maps, 9, 11) * mask[:, None]
    y = masked_reference(x, mask, weight, post)
    scaled = y if gate is None else (y.view(2, max(gate_maps, 1), -1, 9, 11) * gate.double()
                                     .unsqueeze(2)).view_as(y)  # fmt: skip
    expected = torch.relu(residual.double() + scaled)
    d = torch.device(device)
    post_d = MaskedEpilogue(post.num_groups, post.weight.to(d), post.bias.to(d), post.eps)
    with torch.no_grad():
        out = masked_conv2d(
            x.to(d), mask.to(d), weight.to(d), None, 1, post_d, residual=residual.to(d),
            gate=None if gate is None else gate.to(d), impl=impl,
        )  # fmt: skip
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.double().cpu(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel", [1, 3])
def test_nchw_and_strided_inputs_equal_channels_last(device, kernel) -> None:
    """Other layouts are read only where needed; the result is the channels-last one."""
    x, mask, _, post = make_case(5)
    weight = torch.randn(16, 32, kernel, kernel) * 0.1
    expected = masked_reference(x, mask, weight, post)
    d = torch.device(device)
    post_d = MaskedEpilogue(post.num_groups, post.weight.to(d), post.bias.to(d), post.eps)
    wide = torch.randn(2, 32, 9, 22)[..., ::2]  # a strided view, neither layout
    wide.copy_(x)
    with torch.no_grad():
        for xi in (x, x.contiguous(memory_format=torch.channels_last), wide):
            out = masked_conv2d(xi.to(d), mask.to(d), weight.to(d), None, kernel // 2, post_d,
                                impl="sparse")  # fmt: skip
            torch.testing.assert_close(out.double().cpu(), expected, rtol=1e-4, atol=1e-5)


def test_a_dilated_conv1_needs_no_zeros_outside_its_mask() -> None:
    """zero_inactive=False leaves conv1's output unwritten outside its mask; conv2 over a mask
    whose 3x3 neighbourhoods lie inside it reads none of those positions. The freed NaN buffer
    below is what the allocator hands out next: a read of an unwritten position would make
    conv2's GroupNorm statistics NaN (and its ReLU output all zeros), unlike the zero-filled run."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 32, 23, 29, generator=gen).contiguous(memory_format=torch.channels_last)
    conv2_mask = torch.rand(2, 23, 29, generator=gen) > 0.8
    conv1_mask = F.max_pool2d(conv2_mask[:, None].float(), 3, 1, 1)[:, 0] > 0
    w1, w2 = torch.randn(32, 32, 3, 3, generator=gen), torch.randn(32, 32, 3, 3, generator=gen)
    post = MaskedEpilogue(num_groups=4, weight=torch.rand(32), bias=torch.randn(32), relu=True)
    outputs = []
    for zero_inactive in (True, False):
        torch.full((2, 32, 23, 29), float("nan")).contiguous(memory_format=torch.channels_last)
        first = masked_conv2d(x, conv1_mask, w1, None, 1, post, impl="sparse",
                              zero_inactive=zero_inactive)  # fmt: skip
        if zero_inactive:
            assert torch.all(first.permute(0, 2, 3, 1)[~conv1_mask] == 0)
        outputs.append(masked_conv2d(first, conv2_mask, w2, None, 1, post, impl="sparse"))
    assert outputs[0].abs().sum() > 0
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)


def test_packed_weights_follow_in_place_updates_load_state_dict_and_to() -> None:
    """The weight cache never serves a stale packing."""
    x, mask, _, _ = make_case(7)
    conv = MaskedConv2d(32, 16, 3, padding=1, bias=False)
    xc = x.contiguous(memory_format=torch.channels_last)

    def run() -> torch.Tensor:
        with torch.no_grad():
            return conv(xc.to(conv.weight.dtype), mask)

    def expected() -> torch.Tensor:
        return masked_reference(xc, mask, conv.weight.detach(), MaskedEpilogue())

    torch.testing.assert_close(run().double(), expected(), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        conv.weight.mul_(-2.0)  # an optimizer step would do this in place too
    torch.testing.assert_close(run().double(), expected(), rtol=1e-4, atol=1e-5)
    conv.load_state_dict({"weight": torch.randn_like(conv.weight)})
    torch.testing.assert_close(run().double(), expected(), rtol=1e-4, atol=1e-5)
    conv.double()
    torch.testing.assert_close(run(), expected(), rtol=1e-9, atol=1e-10)


def test_operators_pass_the_fake_kernel_checks() -> None:
    x, mask, weight, post = make_case(11)
    xc = x.contiguous(memory_format=torch.channels_last)
    residual, gate = torch.randn(2, 16, 9, 11), torch.rand(2, 1, 9, 11) * mask[:, None]
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(
        torch.ops.cvpods.masked_conv2d.default,
        (xc, mask, weight, None, 1, 4, post.weight.detach(), post.bias.detach(), 1e-5, True,
         residual, gate, "sparse", 0.85),
        test_utils=checks,
    )  # fmt: skip
    torch.library.opcheck(
        torch.ops.cvpods.gate_conv2d.default,
        (xc, torch.randn(2, 32, 3, 3), torch.randn(2), True),
        test_utils=checks,
    )
    torch.library.opcheck(
        torch.ops.cvpods.fuse_neighbours.default,
        (xc, torch.randn(2, 32, 18, 22), torch.randn(2, 32, 5, 6), torch.ones(1), torch.ones(1),
         torch.rand(2, 2, 18, 22), None),
        test_utils=checks,
    )  # fmt: skip
    torch.library.opcheck(
        torch.ops.cvpods.gated_depthwise.default,
        (xc, torch.randn(32, 1, 3, 3), torch.randn(32), 8, torch.ones(32), torch.zeros(32),
         1e-5, torch.rand(2, 1, 9, 11)),
        test_utils=checks,
    )  # fmt: skip


def _small_dynamic_head() -> FCOSDynamicHead:
    cfg = FCOSConfig()
    cfg.merge_from_dict({"MODEL.FCOS.NUM_CONVS": 4, "MODEL.FCOS.NUM_CLASSES": 3})
    torch.manual_seed(0)
    shapes = [ShapeSpec(channels=64, stride=s) for s in cfg.MODEL.FCOS.FPN_STRIDES]
    head = FCOSDynamicHead(cfg, shapes).eval()
    with torch.no_grad():  # close part of every gate so that the sparse paths run
        for module in head.modules():
            if isinstance(module, nn.Conv2d) and module.out_channels == 1:
                module.weight.normal_(0, 0.05)
                module.bias.fill_(0.1)
    return head


def test_eval_dynamic_head_compiles_without_graph_breaks() -> None:
    head = _small_dynamic_head()
    features = [torch.randn(1, 64, 64 // 2**i, 80 // 2**i) for i in range(5)]

    def run(feats):
        with torch.no_grad():
            return head(feats)

    explained = torch._dynamo.explain(run)(features)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(run, backend="eager", fullgraph=True)
    got, expected = compiled(features), run(features)
    assert 0 < float(expected.cost.used.sum()) < float(expected.cost.full.sum())
    for a, b in zip(got.logits + got.bbox_reg, expected.logits + expected.bbox_reg):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(got.cost.used, expected.cost.used)


def test_a_scale_fusion_stage_compiles_to_one_graph() -> None:
    stage = DynamicHeadStage(32).eval()
    levels = [torch.randn(1, 32, 16 // 2**i, 16 // 2**i) for i in range(3)]
    with torch.no_grad():
        explained = torch._dynamo.explain(stage)(levels)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


def test_fx_symbolic_trace_records_the_masked_operator() -> None:
    class Cell(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 4, 3, 3))

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return masked_conv2d(x, mask, self.weight, None, 1, MaskedEpilogue(relu=True))

    cell = Cell()
    traced = torch.fx.symbolic_trace(cell)
    targets = [node.target for node in traced.graph.nodes if node.op == "call_function"]
    assert targets == [torch.ops.cvpods.masked_conv2d]
    x, mask = torch.randn(1, 4, 6, 7), torch.rand(1, 6, 7) > 0.5
    with torch.no_grad():
        torch.testing.assert_close(traced(x, mask), cell(x, mask))
