"""tools/collect_results.py, tools/results_table.py and tools/plot_results.py on hand-made rows.

The fixtures under tests/fixtures/results/ (invented numbers, see its README) follow the real
formats: ``results.json`` of cvpods_test, the rows collect_results writes, an OUTPUT_DIR's
log.txt / metrics.json and the output of ``tools/benchmark_head.py --trained``.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

import pytest
from conftest import load_tool

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "results"
ROWS = sorted((FIXTURES / "rows").glob("*.json"))
#: Faster R-CNN rows (dynamic RPN head, standard RPN head), in the format of ROWS.
RPN_ROWS = sorted((FIXTURES / "rpn_rows").glob("*.json"))


collect_results = load_tool("collect_results")
results_table = load_tool("results_table")
plot_results = load_tool("plot_results")

#: The table of the five rows, checked by hand (e.g. % of full: 0.7634 / 1.70251 = 44.8 % -> 45).
EXPECTED_TABLE = (FIXTURES / "expected_table.md").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# results_table
# ---------------------------------------------------------------------------------------------


def test_table_is_exact(capsys):
    assert len(ROWS) == 5
    assert results_table.main([str(p) for p in ROWS]) == 0
    assert capsys.readouterr().out == EXPECTED_TABLE


def test_table_keeps_the_order_of_its_arguments(capsys):
    results_table.main([str(ROWS[3]), str(ROWS[0])])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("| `shapes.res18.fcos` |")
    assert lines[3].startswith("| `shapes.res18.dynamic.d4.lambda-0` |")


def test_readme_markers_replaced_and_nothing_else(tmp_path, capsys):
    readme = tmp_path / "README.md"
    before = "# Title\n\nText before.\n\n## Results on the embedded shapes data\n\n"
    after = "\n\n## Next section\n\nText after, kept as it is.\n"
    readme.write_text(f"{before}{results_table.START}\nold table\n{results_table.END}{after}")
    for _ in range(2):  # a second run gives the same file
        assert results_table.main([*map(str, ROWS), "--readme", str(readme)]) == 0
        assert readme.read_text() == (
            f"{before}{results_table.START}\n{EXPECTED_TABLE.rstrip()}\n{results_table.END}{after}"
        )
    assert capsys.readouterr().out == EXPECTED_TABLE * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]  # no temporary left


def test_table_of_faster_rcnn_rows_names_the_rpn_head(tmp_path, capsys):
    assert [p.name for p in RPN_ROWS] == [
        "shapes.res18.faster_rcnn.dynamic_rpn.d4.lambda-0_1.json",
        "shapes.res18.faster_rcnn.json",
    ]
    assert results_table.main([str(ROWS[3]), *map(str, RPN_ROWS)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == EXPECTED_TABLE.splitlines()[:2] + [EXPECTED_TABLE.splitlines()[5]]
    # % of full: 1.2131 / 3.105 = 39.1 % -> 39; the standard RPN head's GFLOPs are its full cost.
    assert lines[3:5] == [
        "| `shapes.res18.faster_rcnn.dynamic_rpn.d4.lambda-0_1` | `DynamicRPNHead` | 50.2 | 84.1 "
        "| 47.5 | 58.3 | 51.9 | 1.213 | 0.988 | 1.601 | 3.105 | 39 | 71.3 | 33.5 |",
        "| `shapes.res18.faster_rcnn` | `StandardRPNHead` | 48.7 | 82.0 | 45.0 | 56.6 | – "
        "| 0.388 | 0.334 | 0.485 | 0.388 | 100 | 45.5 | 17.3 |",
    ]
    # The note says what an RPN head's GFLOPs count (only when the table has such a row).
    assert lines[6].startswith(f"_{results_table.RPN_NOTE}; ms / image: whole model")
    assert "RPN" not in EXPECTED_TABLE

    # A row written before rows named their head has no head cell.
    old = json.loads(RPN_ROWS[1].read_text())
    del old["head"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert results_table.main([str(tmp_path / "old.json")]) == 0
    out = capsys.readouterr().out
    assert "| `shapes.res18.faster_rcnn` | – | 48.7 |" in out and "RPN head" not in out


@pytest.mark.parametrize(
    "text, message",
    [
        ("# no markers\n", "no <!-- results:shapes:start --> marker; add the two lines"),
        (
            f"{results_table.END}\n{results_table.START}\n",
            "<!-- results:shapes:end --> comes before <!-- results:shapes:start -->",
        ),
        (
            f"{results_table.START}\n{results_table.END}\n{results_table.START}\n",
            "the markers must appear once each (2 start, 1 end)",
        ),
    ],
)
def test_readme_marker_errors(tmp_path, capsys, text, message):
    readme = tmp_path / "README.md"
    readme.write_text(text)
    assert results_table.main([str(ROWS[0]), "--readme", str(readme)]) == 1
    err = capsys.readouterr().err
    assert f"results_table: error: {readme}: {message}" in err
    assert readme.read_text() == text


def test_table_errors_name_the_file_and_what_is_missing(tmp_path, capsys):
    missing = tmp_path / "nothing.json"
    assert results_table.main([str(missing)]) == 1
    assert f"{missing}: no such file (make it with tools/collect_results.py)" in (
        capsys.readouterr().err
    )

    raw = FIXTURES / "output_dir" / "inference" / "shapes_val" / "results.json"
    assert results_table.main([str(raw)]) == 1
    assert f"{raw}: no 'experiment', 'full_gflops': not a row of tools/collect_results.py" in (
        capsys.readouterr().err
    )

    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert results_table.main([str(broken)]) == 1
    assert f"{broken}: not valid JSON" in capsys.readouterr().err

    no_ap = tmp_path / "no_ap.json"
    no_ap.write_text(json.dumps({"experiment": "x", "bbox": {"AP50": 1.0}, "full_gflops": 1.0}))
    assert results_table.main([str(no_ap)]) == 1
    assert f"{no_ap}: 'bbox' has no 'AP'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# collect_results: the parts that read a run
# ---------------------------------------------------------------------------------------------


def test_train_minutes_sums_the_sessions_of_a_resumed_run():
    minutes, source = collect_results.train_minutes(FIXTURES / "output_dir")
    assert minutes == pytest.approx((9 * 60 + 30 + 4 * 60 + 30) / 60)  # 14.0
    assert source == "log.txt: Total training time"


def test_train_minutes_from_metrics_without_a_log(tmp_path):
    shutil.copy(FIXTURES / "output_dir" / "metrics.json", tmp_path)
    minutes, source = collect_results.train_minutes(tmp_path)
    assert minutes == pytest.approx((20 * 2.0 + 20 * 3.0) / 60)  # iterations 0-19 and 20-39
    assert "metrics.json" in source and "estimate" in source


def test_train_minutes_error_names_both_files(tmp_path):
    (tmp_path / "log.txt").write_text("nothing about time\n")
    with pytest.raises(collect_results.CollectError) as error:
        collect_results.train_minutes(tmp_path)
    assert str(error.value).startswith(
        f"{tmp_path / 'log.txt'}: no 'Total training time' line, and "
        f"{tmp_path / 'metrics.json'} has no 'time' entries"
    )


def test_read_results_errors(tmp_path):
    path = tmp_path / "results.json"
    with pytest.raises(collect_results.CollectError, match="no such file"):
        collect_results.read_results(path)
    path.write_text(json.dumps({"segm": {}}))
    with pytest.raises(collect_results.CollectError) as error:
        collect_results.read_results(path)
    assert str(error.value) == f"{path}: no 'bbox' entry (it has: segm)"
    path.write_text(json.dumps({"bbox": {"AP": 1.0}}))
    with pytest.raises(collect_results.CollectError, match=r"'bbox' has no AP50"):
        collect_results.read_results(path)
    path.write_text(json.dumps({"bbox": {"AP": 1.0, "AP50": 2.0}, "head_complexity": {}}))
    with pytest.raises(collect_results.CollectError, match="'head_complexity' has no avg_gflops"):
        collect_results.read_results(path)
    real = collect_results.read_results(
        FIXTURES / "output_dir" / "inference" / "shapes_val" / "results.json"
    )
    assert real["head_complexity"]["avg_gflops"] == 0.957 and real["bbox"]["APl"] is None


def test_ms_from_file_formats(tmp_path):
    bench = FIXTURES / "benchmark_head_trained.txt"
    found = collect_results.ms_from_file(bench, "shapes.res18.fcos")
    assert found == {"source": str(bench), "threads": 1, "clock": "cpu", "ms": 41.2}
    with pytest.raises(collect_results.CollectError, match="has no ms per image"):
        collect_results.ms_from_file(bench, "shapes.res18.fix.d4")  # skipped there
    with pytest.raises(collect_results.CollectError) as error:
        collect_results.ms_from_file(bench, "shapes.res18.other")
    assert "no row for 'shapes.res18.other'" in str(error.value)
    assert "rows found: shapes.res18.dynamic.d4.lambda-0_1, shapes.res18.fcos" in str(error.value)

    mapping = tmp_path / "ms.json"
    mapping.write_text(json.dumps({"a": 12.5, "b": {"ms_per_image": 3}}))
    assert collect_results.ms_from_file(mapping, "a")["ms"] == 12.5
    assert collect_results.ms_from_file(mapping, "b")["ms"] == 3.0
    with pytest.raises(collect_results.CollectError, match=r"no entry for 'c' \(it has: a, b\)"):
        collect_results.ms_from_file(mapping, "c")

    row = FIXTURES / "rows" / "shapes.res18.fcos.json"
    found = collect_results.ms_from_file(row, "shapes.res18.fcos")
    assert found["ms"] == 41.23 and found["threads"] == 1 and found["source"] == str(row)
    with pytest.raises(collect_results.CollectError, match="a row of 'shapes.res18.fcos'"):
        collect_results.ms_from_file(row, "shapes.res18.fix.d4")
    with pytest.raises(collect_results.CollectError, match="no such file"):
        collect_results.ms_from_file(tmp_path / "none.txt", "a")


def _small_experiment(
    tmp_path: Path, monkeypatch, name: str = "shapes.res18.dynamic.d4.lambda-0_1"
) -> Path:
    """The dynamic shapes experiment ``name`` with the fixture's OUTPUT_DIR and a tiny test set
    (the config dump holds the run's overrides, as cvpods_train writes it)."""
    from cvpods.engine.launcher import load_experiment

    folder = tmp_path / name
    source = REPO / "cvpods_playground" / folder.name
    folder.mkdir()
    for name in ("config.py", "net.py"):
        shutil.copy(source / name, folder / name)
    shutil.copytree(FIXTURES / "output_dir", folder / "log")
    cfg, _ = load_experiment(str(folder))
    cfg.merge_from_list(
        [
            "DATASETS.SHAPES",
            "{'NUM_TRAIN': 2, 'NUM_VAL': 3, 'MIN_SIZE': 96, 'MAX_SIZE': 128, 'SEED': 3}",
            "INPUT.AUG.TEST_PIPELINES",
            "[('ResizeShortestEdge', {'short_edge_length': 96, 'max_size': 128, "
            "'sample_style': 'choice'})]",
        ]
    )
    (folder / "log" / "config_dump.py").write_text(cfg.dump())
    monkeypatch.setenv("CVPODS_DATASETS", str(tmp_path / "datasets"))
    return folder


def test_collect_writes_a_row(tmp_path, monkeypatch, capsys):
    folder = _small_experiment(tmp_path, monkeypatch)
    out = tmp_path / "rows"
    ms = FIXTURES / "benchmark_head_trained.txt"
    assert collect_results.main([str(folder), "--out", str(out), "--ms-from", str(ms)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{folder.name}.json"]  # no temporary left
    row = json.loads((out / f"{folder.name}.json").read_text())
    results = json.loads((folder / "log" / "inference" / "shapes_val" / "results.json").read_text())
    for key, value in results.items():  # the results.json of cvpods_test, unchanged
        assert row[key] == value
    assert row["experiment"] == folder.name and row["dataset"] == "shapes_val"
    assert row["head"] == "FCOSDynamicHead" and row["dynamic"] is True
    assert row["full_gflops_images"] == 3
    assert 0 < row["full_gflops_min"] <= row["full_gflops"] <= row["full_gflops_max"]
    assert row["ms_per_image"] == 38.5 and row["threads"] == 1
    assert row["timing"] == {"source": str(ms), "threads": 1, "clock": "cpu"}
    assert row["train_minutes"] == pytest.approx(14.0)
    assert len(row["load_average"]) == 3 and len(row["git_commit"]) == 40
    assert row["config"] == "log/config_dump.py"
    assert row["results_file"] == "log/inference/shapes_val/results.json"
    assert "-> " in capsys.readouterr().out

    # The full cost is the head's, on the test images at their test-time size.
    from cvpods.engine.launcher import load_experiment
    from cvpods.modeling.meta_arch.head_complexity import MACS_PER_GFLOP, head_full_cost

    cfg, build_model = load_experiment(str(folder))
    model = build_model(cfg)
    smallest = head_full_cost(model.head, (96, 96), 32) / MACS_PER_GFLOP
    largest = head_full_cost(model.head, (128, 128), 32) / MACS_PER_GFLOP
    assert smallest <= row["full_gflops_min"] and row["full_gflops_max"] <= largest


def test_collect_errors_name_the_missing_file(tmp_path, monkeypatch, capsys):
    folder = _small_experiment(tmp_path, monkeypatch)
    results = folder / "log" / "inference" / "shapes_val" / "results.json"
    results.unlink()
    out = tmp_path / "rows"
    assert collect_results.main([str(folder), "--out", str(out), "--no-timing"]) == 1
    err = capsys.readouterr().err
    assert f"collect_results: error: {results}: no such file (evaluate the experiment first" in err
    assert not out.exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    assert collect_results.main([str(empty), "--no-timing"]) == 1
    assert "config.py is missing" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# plot_results
# ---------------------------------------------------------------------------------------------


def _needs_matplotlib() -> None:
    """Fail (never skip): the dev install has matplotlib (setup.py extras "dev" and "plot")."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pytest.fail("matplotlib is missing: pip install -e '.[dev]' (or '.[plot]')")


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_writes_a_png(tmp_path, capsys):
    _needs_matplotlib()
    out = tmp_path / "sub" / "tradeoff.png"
    assert plot_results.main([*map(str, ROWS), "--out", str(out)]) == 0
    assert _png_size(out) == (1440, 600)  # 12 x 5 inches at 120 dpi
    assert out.stat().st_size > 20_000
    assert sorted(p.name for p in out.parent.iterdir()) == ["tradeoff.png"]
    assert f"wrote {out} (5 experiment(s))" in capsys.readouterr().out


def test_plot_of_experiment_folders(tmp_path, monkeypatch):
    _needs_matplotlib()
    folder = _small_experiment(tmp_path, monkeypatch)
    out = tmp_path / "tradeoff.png"
    points = plot_results.load_points([folder], FIXTURES / "rows")
    assert points == [
        {
            "name": folder.name,
            "ap": 55.8,
            "gflops": 0.957,
            "ms": 38.46,
            "dynamic": True,
            "rpn": False,
        }
    ]
    assert plot_results.main([str(folder), "--collected", str(tmp_path), "--out", str(out)]) == 0
    assert _png_size(out) == (1440, 600)


def test_plot_marks_rpn_heads(tmp_path, capsys):
    _needs_matplotlib()
    points = plot_results.load_points([ROWS[3], ROWS[1], *RPN_ROWS], None)
    assert [(p["name"], p["gflops"], p["dynamic"], p["rpn"]) for p in points] == [
        ("shapes.res18.fcos", 0.8234, False, False),
        ("shapes.res18.dynamic.d4.lambda-0_1", 0.7634, True, False),
        ("shapes.res18.faster_rcnn.dynamic_rpn.d4.lambda-0_1", 1.2131, True, True),
        ("shapes.res18.faster_rcnn", 0.3881, False, True),
    ]
    fcos, dynamic, dynamic_rpn, rpn = points
    assert plot_results.style("shapes.res18.fcos", [fcos]) == {
        "marker": "s", "linestyle": "none", "label": "shapes.res18.fcos",
    }  # fmt: skip
    assert plot_results.style("shapes.res18.dynamic.d4", [dynamic, dynamic]) == {
        "marker": "o", "linestyle": "-", "label": "shapes.res18.dynamic.d4 (dynamic)",
    }  # fmt: skip
    family = plot_results.family(dynamic_rpn["name"])
    assert plot_results.style(family, [dynamic_rpn]) == {
        "marker": "^", "linestyle": "none", "label": f"{family} (dynamic, RPN head)",
    }  # fmt: skip
    assert plot_results.style(rpn["name"], [rpn])["label"] == "shapes.res18.faster_rcnn (RPN head)"
    # A dynamic point is named by its lambda on a line of several, by its experiment when alone.
    assert plot_results.point_text(dynamic, 3) == "lambda-0_1"
    assert plot_results.point_text(dynamic_rpn, 1) == dynamic_rpn["name"]
    assert plot_results.point_text(rpn, 1) == "shapes.res18.faster_rcnn"

    out = tmp_path / "tradeoff.png"
    assert plot_results.main([*map(str, ROWS + RPN_ROWS), "--out", str(out)]) == 0
    assert _png_size(out) == (1440, 600)
    assert f"wrote {out} (7 experiment(s))" in capsys.readouterr().out


def test_plot_of_a_faster_rcnn_folder(tmp_path, monkeypatch):
    """An experiment folder of the dynamic RPN head: its head is read from its config."""
    folder = _small_experiment(
        tmp_path, monkeypatch, "shapes.res18.faster_rcnn.dynamic_rpn.d4.lambda-0_1"
    )
    points = plot_results.load_points([folder], None)
    assert points == [
        {"name": folder.name, "ap": 55.8, "gflops": 0.957, "ms": None, "dynamic": True, "rpn": True}
    ]


def test_plot_labels_avoid_each_other_and_the_points():
    place = plot_results.label_offsets
    # Alone: above the point, on the side away from the panel's edge.
    assert place([(100.0, 100.0)], [40.0], 8.0, [False]) == [(5.0, 5.0, "left")]
    assert place([(100.0, 100.0)], [40.0], 8.0, [True]) == [(-5.0, 5.0, "right")]
    # A second point whose label above-right would cover the first label: above-left when that
    # is free, else below.
    assert place([(100.0, 100.0), (80.0, 101.0)], [40.0, 40.0], 8.0, [False, False]) == [
        (5.0, 5.0, "left"),
        (-5.0, 5.0, "right"),
    ]
    # A point just under a label's first place (nearer to that label than its own point): the
    # label takes its other side, and the second point's label its first place.
    assert place([(100.0, 100.0), (115.0, 101.0)], [40.0, 40.0], 8.0, [False, False]) == [
        (-5.0, 5.0, "right"),
        (5.0, 5.0, "left"),
    ]
    # A label does not cover another point when a free place exists.
    offsets = place([(100.0, 100.0), (120.0, 108.0)], [40.0, 10.0], 8.0, [False, True])
    assert offsets[0] == (-5.0, 5.0, "right")
    # Two points one above the other: each label on its own point's far side, not between them
    # where it would read as the other's (above the upper point, below the lower one).
    pair = place([(100.0, 100.0), (100.0, 112.0)], [40.0, 40.0], 8.0, [False, False])
    assert pair == [(5.0, -13.0, "left"), (5.0, 5.0, "left")]
    # Nowhere free: the first candidate.
    crowd = [(100.0, 100.0), (110.0, 108.0), (90.0, 108.0), (110.0, 88.0), (90.0, 88.0)]
    assert place(crowd, [40.0] * 5, 8.0, [False] * 5)[0] == (5.0, 5.0, "left")


def test_plot_groups_dynamic_heads_by_family():
    assert plot_results.family("shapes.res18.dynamic.d4.lambda-0_8") == "shapes.res18.dynamic.d4"
    assert plot_results.family("shapes.res18.fix.d4") == "shapes.res18.fix.d4"


def test_plot_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    out = tmp_path / "tradeoff.png"
    assert plot_results.main([str(ROWS[0]), "--out", str(out)]) == 2
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert "pip install '.[plot]'" in plot_results.MISSING_MATPLOTLIB
    assert not out.exists()


def test_plot_error_for_a_bad_row(tmp_path, capsys):
    _needs_matplotlib()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"bbox": {"AP": 1.0}}))
    assert plot_results.main([str(bad), "--out", str(tmp_path / "x.png")]) == 1
    assert f"plot_results: error: {bad}: no 'experiment', 'full_gflops'" in capsys.readouterr().err


def test_run_config_of_a_dump_older_than_the_builder_keys(tmp_path):
    """A run dumped before MODEL.META_ARCHITECTURE / MODEL.FCOS.HEAD_NAME existed (its net.py
    named the head) is rebuilt with the experiment's current head, not the default one."""
    folder = tmp_path / "shapes.res18.dynamic.d4.lambda-0_1"
    source = REPO / "cvpods_playground" / folder.name
    folder.mkdir()
    for name in ("config.py", "net.py"):
        shutil.copy(source / name, folder / name)
    cfg, _, _, _ = collect_results.run_config(folder)
    del cfg.MODEL["META_ARCHITECTURE"], cfg.MODEL.FCOS["HEAD_NAME"]
    cfg.MODEL.FCOS.NUM_CLASSES = 4  # a dumped value wins over config.py's
    (folder / "log").mkdir()
    (folder / "log" / "config_dump.py").write_text(cfg.dump())

    cfg, build_model, _, config_source = collect_results.run_config(folder)
    assert config_source == folder / "log" / "config_dump.py"
    assert cfg.MODEL.META_ARCHITECTURE == "FCOS" and cfg.MODEL.FCOS.HEAD_NAME == "FCOSDynamicHead"
    model = build_model(cfg)
    assert type(model.head).__name__ == "FCOSDynamicHead" and model.num_classes == 4
