"""tools/profile_training.py on a tiny shapes set: the timing lines, the per-part table, and the
model's functions left as they were."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import PLAYGROUND, load_tool

from cvpods.layers import depth_cell, head_stage
from cvpods.modeling.meta_arch import fcos

TINY = [
    "DATASETS.SHAPES",
    "{'NUM_TRAIN': 8, 'NUM_VAL': 2, 'MIN_SIZE': 96, 'MAX_SIZE': 128, 'SEED': 5}",
    "INPUT.AUG.TRAIN_PIPELINES",
    "[('ResizeShortestEdge', {'short_edge_length': (96,), 'max_size': 128, "
    "'sample_style': 'choice'})]",
    "SOLVER.IMS_PER_BATCH",
    "2",
]


def _tool():
    return load_tool("profile_training")


@pytest.fixture
def tiny_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVPODS_DATASETS", str(tmp_path / "datasets"))


def test_timing_lines(tiny_data, capsys) -> None:
    experiment = str(PLAYGROUND / "shapes.res18.dynamic.d4.lambda-0_1")
    _tool().main(["--experiment", experiment, "--warmup", "1", "--iterations", "2", *TINY])
    out = capsys.readouterr().out
    assert "2 batches of 2 images, 1 thread(s)" in out
    assert len(re.findall(r"^iteration \d: wall [0-9.]+ s, CPU [0-9.]+ s$", out, re.M)) == 2
    assert re.search(r"mean over 2 iterations .*: wall [0-9.]+ s/it, CPU [0-9.]+ s/it", out)


def test_profile_table_by_part(tiny_data, capsys) -> None:
    originals = (fcos.FCOS.get_ground_truth, head_stage.gate_logits, depth_cell.dilated_gate)
    experiment = str(PLAYGROUND / "shapes.res18.dynamic.d4.lambda-0_1")
    _tool().main(
        ["--experiment", experiment, "--profile", "--warmup", "1", "--iterations", "1", *TINY]
    )
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^(\S.*?)\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+\s+([0-9.]+)%$", out, re.M))
    for part in (
        "backbone (ResNet)",
        "FPN",
        "head: gates",
        "head: cost accounting",
        "head: depth cells (3x3 convs)",
        "head: predictors",
        "target assignment",
        "losses",
        "gradient clipping",
        "optimizer step",
    ):
        assert float(rows[part]) > 0, (part, out)
    shares = [float(v) for k, v in rows.items() if not k.startswith("sum")]
    assert sum(shares) == pytest.approx(100.0, abs=0.5)
    # The labels are removed again.
    assert (
        fcos.FCOS.get_ground_truth,
        head_stage.gate_logits,
        depth_cell.dilated_gate,
    ) == originals
