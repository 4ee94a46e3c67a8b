"""DetectionCheckpointer / PeriodicCheckpointer: save, load, resume, atomic writes, retention."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from cvpods.checkpoint import DetectionCheckpointer, PeriodicCheckpointer
from cvpods.checkpoint import detection_checkpoint as checkpoint_module
from cvpods.checkpoint.file_io import atomic_save


def _tiny_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def _trained_state(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, object]:
    """A model, SGD-with-momentum optimizer and scheduler after two steps (non-empty states)."""
    model = _tiny_model(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[1, 5], gamma=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(2, 3, 8, 8)).square().mean().backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        elif isinstance(a[key], dict):
            _assert_same_state(a[key], b[key])
        else:
            assert a[key] == b[key], key


def test_save_load_round_trip_with_optimizer_scheduler_and_extra(tmp_path):
    model, optimizer, scheduler = _trained_state(0)
    saver = DetectionCheckpointer(model, str(tmp_path), optimizer=optimizer, scheduler=scheduler)
    rng = torch.get_rng_state()
    saver.save("model_0000009", iteration=9, rng=rng, note={"lr": [0.1, 0.05]})

    data = torch.load(tmp_path / "model_0000009.pth", weights_only=True)
    assert set(data) == {"model", "optimizer", "scheduler", "iteration", "rng", "note"}

    model2, optimizer2, scheduler2 = _trained_state(1)
    assert not torch.equal(model2[0].weight, model[0].weight)
    loader = DetectionCheckpointer(
        model2, str(tmp_path), optimizer=optimizer2, scheduler=scheduler2
    )
    rest = loader.load(str(tmp_path / "model_0000009.pth"))

    assert rest.keys() == {"iteration", "rng", "note"}
    assert rest["iteration"] == 9 and torch.equal(rest["rng"], rng)
    assert rest["note"] == {"lr": [0.1, 0.05]}
    _assert_same_state(model.state_dict(), model2.state_dict())
    torch.testing.assert_close(optimizer2.state_dict(), optimizer.state_dict(), rtol=0, atol=0)
    assert scheduler2.state_dict() == scheduler.state_dict()
    assert loader.last_report is not None and loader.last_report.complete


def test_load_only_the_named_checkpointables(tmp_path):
    model, optimizer, scheduler = _trained_state(0)
    DetectionCheckpointer(model, str(tmp_path), optimizer=optimizer, scheduler=scheduler).save("a")
    model2, optimizer2, scheduler2 = _trained_state(1)
    before = optimizer2.state_dict()
    loader = DetectionCheckpointer(model2, "", optimizer=optimizer2, scheduler=scheduler2)
    rest = loader.load(str(tmp_path / "a.pth"), checkpointables=["scheduler"])
    assert scheduler2.state_dict() == scheduler.state_dict()
    torch.testing.assert_close(optimizer2.state_dict(), before, rtol=0, atol=0)
    assert "optimizer" in rest  # not requested: handed back untouched
    with pytest.raises(KeyError, match="unknown checkpointables"):
        loader.load(str(tmp_path / "a.pth"), checkpointables=["ema"])


def test_empty_path_is_a_no_op(caplog):
    model = _tiny_model(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level("INFO"):
        assert DetectionCheckpointer(model).load("") == {}
    assert "No weights" in caplog.text
    _assert_same_state(before, model.state_dict())


def test_data_parallel_wrapper_is_unwrapped(tmp_path):
    model = _tiny_model(0)
    DetectionCheckpointer(nn.DataParallel(model), str(tmp_path)).save("m")
    data = torch.load(tmp_path / "m.pth", weights_only=True)
    assert set(data["model"]) == set(model.state_dict())
    other = nn.DataParallel(_tiny_model(1))
    DetectionCheckpointer(other, "").load(str(tmp_path / "m.pth"))
    _assert_same_state(model.state_dict(), other.module.state_dict())


def test_a_ddp_prefixed_state_dict_loads(tmp_path):
    model = _tiny_model(0)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "ddp.pth")
    other = _tiny_model(1)
    report_owner = DetectionCheckpointer(other)
    report_owner.load(str(tmp_path / "ddp.pth"))
    _assert_same_state(model.state_dict(), other.state_dict())
    assert report_owner.last_report.complete


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


class _BadState:
    def state_dict(self) -> dict:
        return {"x": _Unpicklable()}

    def load_state_dict(self, state: dict) -> None:  # pragma: no cover - never reached
        pass


def _listing(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_failing_save_keeps_previous_checkpoint_intact(tmp_path):
    model = _tiny_model(0)
    DetectionCheckpointer(model, str(tmp_path)).save("model_final", iteration=1)
    before = (tmp_path / "model_final.pth").read_bytes()
    files = _listing(tmp_path)

    bad = DetectionCheckpointer(_tiny_model(1), str(tmp_path), extra_state=_BadState())
    with pytest.raises(RuntimeError, match="cannot pickle"):
        bad.save("model_final", iteration=2)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        bad.save("model_0000004", iteration=4)

    assert _listing(tmp_path) == files  # no temporary or half-written file left behind
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


def test_partial_write_never_replaces_the_destination(tmp_path):
    target = tmp_path / "model.pth"
    target.write_bytes(b"previous")

    def write_half_then_fail(obj, f) -> None:
        f.write(b"half-written")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_save({"a": 1}, str(target), save_fn=write_half_then_fail)
    assert target.read_bytes() == b"previous"
    assert _listing(tmp_path) == ["model.pth"]


def test_extra_that_needs_unsafe_unpickling_is_refused_before_writing(tmp_path):
    saver = DetectionCheckpointer(_tiny_model(0), str(tmp_path))
    with pytest.raises(TypeError, match=r"\['numpy_state'\].*torch.from_numpy"):
        saver.save("model_0000001", numpy_state=np.random.get_state())
    assert _listing(tmp_path) == []


def test_last_checkpoint_discovery_and_resume(tmp_path):
    model, optimizer, scheduler = _trained_state(0)
    saver = DetectionCheckpointer(model, str(tmp_path), optimizer=optimizer, scheduler=scheduler)
    assert not saver.has_checkpoint() and saver.get_checkpoint_file() == ""
    saver.save("model_0000004", iteration=4)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    saver.save("model_0000009", iteration=9)

    assert saver.has_checkpoint()
    assert saver.get_checkpoint_file() == str(tmp_path / "model_0000009.pth")
    assert saver.get_all_checkpoint_files() == [
        str(tmp_path / "model_0000004.pth"),
        str(tmp_path / "model_0000009.pth"),
    ]

    model2, optimizer2, scheduler2 = _trained_state(1)
    resumer = DetectionCheckpointer(
        model2, str(tmp_path), optimizer=optimizer2, scheduler=scheduler2
    )
    rest = resumer.resume_or_load(str(tmp_path / "model_0000004.pth"), resume=True)
    assert rest["iteration"] == 9
    _assert_same_state(model.state_dict(), model2.state_dict())
    assert scheduler2.state_dict() == scheduler.state_dict()


def test_resume_false_loads_only_the_given_model_weights(tmp_path):
    model, optimizer, scheduler = _trained_state(0)
    DetectionCheckpointer(model, str(tmp_path), optimizer=optimizer).save("model_0000004")
    model2, optimizer2, _ = _trained_state(1)
    before = optimizer2.state_dict()
    other_dir = tmp_path / "fresh"
    loader = DetectionCheckpointer(model2, str(other_dir), optimizer=optimizer2)
    loader.resume_or_load(str(tmp_path / "model_0000004.pth"), resume=False)
    _assert_same_state(model.state_dict(), model2.state_dict())
    torch.testing.assert_close(optimizer2.state_dict(), before, rtol=0, atol=0)
    # resume=True without a checkpoint in save_dir falls back to the given path, model only.
    model3, optimizer3, _ = _trained_state(2)
    before3 = optimizer3.state_dict()
    DetectionCheckpointer(model3, str(other_dir), optimizer=optimizer3).resume_or_load(
        str(tmp_path / "model_0000004.pth"), resume=True
    )
    _assert_same_state(model.state_dict(), model3.state_dict())
    torch.testing.assert_close(optimizer3.state_dict(), before3, rtol=0, atol=0)


def test_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        DetectionCheckpointer(_tiny_model(0)).load(str(tmp_path / "nowhere.pth"))


def test_only_the_main_process_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_module.comm, "is_main_process", lambda: False)
    saver = DetectionCheckpointer(_tiny_model(0), str(tmp_path))
    saver.save("model_final")
    assert _listing(tmp_path) == []


def test_periodic_checkpointer_keeps_the_last_k_and_the_final(tmp_path):
    saver = DetectionCheckpointer(_tiny_model(0), str(tmp_path))
    periodic = PeriodicCheckpointer(saver, period=2, max_iter=9, max_to_keep=2)
    for iteration in range(9):
        periodic.step(iteration, note="x")
    assert _listing(tmp_path) == [
        "last_checkpoint",
        "model_0000005.pth",
        "model_0000007.pth",
        "model_final.pth",
    ]
    assert saver.get_checkpoint_file() == str(tmp_path / "model_final.pth")
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert final["iteration"] == 8 and final["note"] == "x"
    assert torch.load(tmp_path / "model_0000007.pth", weights_only=True)["iteration"] == 7

    # A resumed run counts the files already on disk.
    resumed = PeriodicCheckpointer(saver, period=2, max_iter=20, max_to_keep=2)
    resumed.step(9)
    resumed.step(11)
    names = _listing(tmp_path)
    assert "model_0000009.pth" in names and "model_0000011.pth" in names
    assert "model_0000005.pth" not in names and "model_0000007.pth" not in names
    assert "model_final.pth" in names


def test_periodic_checkpointer_keeps_all_by_default(tmp_path):
    saver = DetectionCheckpointer(_tiny_model(0), str(tmp_path))
    periodic = PeriodicCheckpointer(saver, period=3, max_iter=None, max_to_keep=0)
    for iteration in range(9):
        periodic.step(iteration)
    assert [f for f in _listing(tmp_path) if f.endswith(".pth")] == [
        "model_0000002.pth",
        "model_0000005.pth",
        "model_0000008.pth",
    ]
    with pytest.raises(ValueError, match="period"):
        PeriodicCheckpointer(saver, period=0)
