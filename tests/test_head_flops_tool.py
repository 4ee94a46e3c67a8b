"""tools/head_flops.py against the paper's table (98.0 / 198.6 / 397.2 GFLOPs) and a hand count."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import load_tool

REPO = Path(__file__).resolve().parents[1]


def _tool():
    return load_tool("head_flops")


def _run(capsys, name: str) -> float:
    _tool().main([str(REPO / "cvpods_playground" / name), "--size", "800", "1333"])
    out = capsys.readouterr().out
    return float(re.search(r"([0-9.]+) GFLOPs", out).group(1))


def test_fcos_head_by_hand(capsys):
    """800x1333 padded to 800x1344: P3..P7 are 100x168, 50x84, 25x42, 13x21, 7x11 = 22400
    positions; 2 branches x 4 convs of 256*256*9 MACs plus 256 for the GroupNorm each."""
    positions = 100 * 168 + 50 * 84 + 25 * 42 + 13 * 21 + 7 * 11
    macs = positions * 2 * 4 * (256 * 256 * 9 + 256)
    gflops = _run(capsys, "fcos.res50.1x")
    assert gflops == pytest.approx(macs / 2**30, abs=0.005)  # 98.48
    assert gflops == pytest.approx(98.0, rel=0.006)  # the paper's table


@pytest.mark.parametrize(
    "name, paper, printed",
    [("fcos.res50.1x.fix.d4", 198.6, 198.58), ("fcos.res50.1x.fix.d8", 397.2, 397.17)],
)
def test_deep_fixed_heads_match_the_paper(capsys, name, paper, printed):
    gflops = _run(capsys, name)
    assert gflops == pytest.approx(printed, abs=0.005)  # the README's measured value
    assert gflops == pytest.approx(paper, abs=0.05)
