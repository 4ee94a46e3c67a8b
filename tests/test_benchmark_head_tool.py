"""tools/benchmark_head.py: the forced-gate table on a small input, and its per-round range."""

from __future__ import annotations

import re

import pytest
from conftest import load_tool

benchmark_head = load_tool("benchmark_head")


def test_per_round_range_pairs_each_dynamic_call_with_its_rounds_fixed_call() -> None:
    # Round ratios 0.2, 0.1 and 0.25: not the ratios of the sorted lists (0.1, 0.2, 0.2).
    low, high = benchmark_head.per_round_range([2.0, 2.0, 1.0], [10.0, 20.0, 4.0])
    assert (low, high) == pytest.approx((0.1, 0.25))


def test_forced_gate_table_on_a_small_input(capsys) -> None:
    """The official D4 heads at 64 channels on a 128x160 input: one row per density, with the
    FLOPs ratio the forced gates give, the time ratio, the target and the per-round range."""
    assert benchmark_head.main(
        ["--depths", "4", "--size", "128", "160", "--channels", "64", "--densities", "0.5",
         "1.0", "--repeats", "2"]
    ) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "D4: fixed head" in out and "levels 16x20 8x10 4x5 2x3 1x2" in out
    rows = re.findall(
        r"^\| (\d\.\d\d) \| (\d\.\d{3}) \| \d+ \| (\d+\.\d{3}) \| <= (\d\.\d{3})(?: \(missed\))? "
        r"\| (\d+\.\d{3})-(\d+\.\d{3}) \|$",
        out,
        flags=re.MULTILINE,
    )
    assert [row[0] for row in rows] == ["0.50", "1.00"]
    for density, flops, ratio, target, low, high in rows:
        assert float(low) <= float(high)
        # Of two rounds, the ratio of the medians (means) is the mediant of the two round ratios:
        # between them (up to the printed rounding).
        assert float(low) - 1e-3 <= float(ratio) <= float(high) + 1e-3
        expected = 1.10 if density == "1.00" else 1.15 * float(flops) + 0.05
        assert float(target) == pytest.approx(expected, abs=1e-3)
    # Every gate open computes the whole head; half-density object masks compute less of it.
    flops = {row[0]: float(row[1]) for row in rows}
    assert flops["1.00"] == 1.0 and 0.3 < flops["0.50"] < 0.9
