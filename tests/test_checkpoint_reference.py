"""Official full-model state dicts (reference fixtures), saved as files, load back exactly."""

from __future__ import annotations

import pickle

import pytest
import torch
from conftest import load_experiment, load_reference

from cvpods.checkpoint import DetectionCheckpointer

FULL_FIXTURES = [
    "full_fcos_seed11.pt",
    "full_fcos_fix_d8_seed12.pt",
    "full_fcos_dynamic_d8_lambda0_1_seed13.pt",
]


def _model_of(reference: dict) -> torch.nn.Module:
    cfg, build_model = load_experiment(reference["name"])
    cfg.merge_from_dict({"MODEL.DEVICE": "cpu", **reference["config_overrides"]})
    torch.manual_seed(123)
    return build_model(cfg)


def _assert_reproduces(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


# Every experiment as a model-zoo checkpoint; the other file layouts on one experiment.
CASES = [(name, "zoo_pth") for name in FULL_FIXTURES] + [
    (FULL_FIXTURES[0], "bare_pth"),
    (FULL_FIXTURES[0], "detectron2_pkl"),
]


@pytest.mark.parametrize("fixture,layout", CASES)
def test_reference_state_dict_round_trips_through_a_file(tmp_path, fixture, layout):
    reference = load_reference(fixture)
    expected = reference["state_dict"]
    if layout == "zoo_pth":
        path = tmp_path / "model_final.pth"
        torch.save({"model": expected, "__author__": "cvpods", "matching_heuristics": True}, path)
    elif layout == "bare_pth":
        path = tmp_path / "state_dict.pth"
        torch.save(expected, path)
    else:
        path = tmp_path / "model_final.pkl"
        arrays = {k: v.numpy() for k, v in expected.items()}
        path.write_bytes(pickle.dumps({"model": arrays, "__author__": "Detectron2 Model Zoo"}))

    model = _model_of(reference)
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in expected.items())
    checkpointer = DetectionCheckpointer(model)
    assert checkpointer.load(str(path)) == {}
    assert checkpointer.last_report.complete, checkpointer.last_report.table()
    _assert_reproduces(model, expected)
