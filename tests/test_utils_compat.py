"""The names cvpods code imports from ``cvpods.utils``, with the behaviour cvpods/detectron2 document."""

import json
import logging
import os

import pytest


def test_cvpods_style_imports():
    from cvpods.structures import Boxes, BoxMode, pairwise_iou  # noqa: F401
    from cvpods.utils import (  # noqa: F401
        CommonMetricPrinter,
        EventStorage,
        JSONWriter,
        PathManager,
        TensorboardXWriter,
        comm,
        get_event_storage,
        setup_logger,
    )


def test_event_storage_records_scalars_per_iteration():
    from cvpods.utils import EventStorage, get_event_storage

    with pytest.raises(AssertionError):  # cvpods asserts a storage is open
        get_event_storage()
    with EventStorage(start_iter=5) as storage:
        assert get_event_storage() is storage and storage.iter == 5 == storage.iteration
        storage.put_scalar("loss", 4.0)
        storage.step()
        storage.put_scalars(loss=2.0, lr=0.1)
        with storage.name_scope("eval"):
            storage.put_scalar("AP", 40.0, smoothing_hint=False)
        assert storage.history("loss").values() == [(4.0, 5), (2.0, 6)]
        assert storage.history("loss").global_avg() == 3.0
        assert storage.history("loss").median(2) == 3.0
        assert storage.latest()["eval/AP"] == (40.0, 6)
        with pytest.raises(KeyError):
            storage.history("nope")
    with pytest.raises(AssertionError):
        get_event_storage()


def test_json_writer_writes_one_json_object_per_line(tmp_path):
    from cvpods.utils import EventStorage, JSONWriter

    path = tmp_path / "metrics.json"
    writer = JSONWriter(str(path))
    with EventStorage() as storage:
        storage.put_scalar("loss", 1.0)
        storage.put_scalar("lr", 0.01, smoothing_hint=False)
        writer.write()
        storage.step()
        storage.put_scalar("loss", 3.0)
        writer.write()
        writer.write()  # nothing new: no line
    writer.close()
    lines = path.read_text().splitlines()
    # A log parser reads it line by line with json.loads (as for detectron2's metrics.json).
    records = [json.loads(line) for line in lines]
    assert records == [
        {"iteration": 0, "loss": 1.0, "lr": 0.01},
        {"iteration": 1, "loss": 2.0},  # smoothed: the median of the window (1, 3)
    ]


def test_tensorboard_and_console_writers(tmp_path, caplog):
    from cvpods.utils import CommonMetricPrinter, EventStorage, TensorboardXWriter

    tb = TensorboardXWriter(str(tmp_path / "tb"))
    printer = CommonMetricPrinter(max_iter=10)
    with caplog.at_level(logging.INFO), EventStorage(start_iter=3) as storage:
        storage.put_scalars(loss_cls=0.5, time=0.2, data_time=0.01)
        storage.put_scalar("lr", 0.02, smoothing_hint=False)
        tb.write()
        printer.write()
    tb.close()
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tb"))
    line = "\n".join(r.getMessage() for r in caplog.records)
    assert "iter: 3" in line and "loss_cls: 0.5" in line and "lr: 0.02" in line
    assert "eta: 0:00:01" in line  # 6 iterations left at 0.2 s


def test_setup_logger_writes_log_file(tmp_path):
    from cvpods.utils import setup_logger

    logger = setup_logger(str(tmp_path), name="cvpods_test_logger")
    logger.info("hello %d", 7)
    for handler in logger.handlers:
        handler.flush()
    assert "hello 7" in (tmp_path / "log.txt").read_text()


def test_comm_in_a_single_process():
    from cvpods.utils import comm

    assert comm.get_world_size() == 1 and comm.get_rank() == 0 and comm.is_main_process()
    assert comm.all_gather({"a": 1}) == [{"a": 1}]
    comm.synchronize()


def test_path_manager_file_helpers(tmp_path):
    from cvpods.utils import PathManager

    folder = tmp_path / "a" / "b"
    PathManager.mkdirs(str(folder))
    PathManager.mkdirs(str(folder))  # exists: fine
    assert PathManager.isdir(str(folder)) and not PathManager.isfile(str(folder))
    with PathManager.open(str(folder / "x.txt"), "w") as f:
        f.write("data")
    assert PathManager.exists(str(folder / "x.txt")) and PathManager.ls(str(folder)) == ["x.txt"]
    with PathManager.open("file://" + str(folder / "x.txt")) as f:
        assert f.read() == "data"
    assert PathManager.get_local_path(str(folder / "x.txt")) == str(folder / "x.txt")
    assert PathManager.copy(str(folder / "x.txt"), str(folder / "y.txt"))
    assert not PathManager.copy(str(folder / "x.txt"), str(folder / "y.txt"))
    PathManager.rm(str(folder / "x.txt"))
    assert PathManager.ls(str(folder)) == ["y.txt"]
