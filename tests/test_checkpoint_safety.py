"""Safe loading (malicious .pkl / .pth are refused, nothing runs) and the weights URL cache."""

from __future__ import annotations

import functools
import http.server
import os
import pickle
import subprocess
import threading

import pytest
import torch
from torch import nn

from cvpods.checkpoint import (
    DetectionCheckpointer,
    UnsafeCheckpointError,
    cached_path_of,
    resolve_weights_path,
)


class _ShellPayload:
    """Pickles as a call of ``function(*args)``: what a malicious weight file contains."""

    def __init__(self, function, *args) -> None:
        self.function = function
        self.args = args

    def __reduce__(self):
        return self.function, self.args


def _payloads(marker) -> dict[str, _ShellPayload]:
    return {
        "os.system": _ShellPayload(os.system, f"touch {marker}"),
        "subprocess": _ShellPayload(subprocess.call, ["touch", str(marker)]),
        "eval": _ShellPayload(eval, f"open({str(marker)!r}, 'w').close()"),
    }


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 2, 1))


@pytest.mark.parametrize("payload", ["os.system", "subprocess", "eval"])
def test_malicious_pkl_is_refused_and_nothing_runs(tmp_path, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "R-50.pkl"
    state = {"0.weight": _payloads(marker)[payload], "0.bias": torch.zeros(2).numpy()}
    path.write_bytes(pickle.dumps({"model": state}, protocol=4))
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsafeCheckpointError) as error:
        DetectionCheckpointer(model).load(str(path))
    message = str(error.value)
    assert str(path) in message and "refusing to load global" in message
    assert {"os.system": "posix.system", "subprocess": "subprocess.call", "eval": "eval"}[
        payload
    ] in message
    assert not marker.exists()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_malicious_pth_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model_final.pth"
    torch.save({"model": {"0.weight": _ShellPayload(os.system, f"touch {marker}")}}, path)
    with pytest.raises(UnsafeCheckpointError) as error:
        DetectionCheckpointer(_model()).load(str(path))
    message = str(error.value)
    assert str(path) in message and "refused" in message and "system" in message
    assert not marker.exists()


def test_a_pth_with_a_custom_class_is_refused(tmp_path):
    path = tmp_path / "weird.pth"
    torch.save({"model": _model().state_dict(), "cfg": functools.partial(print, "hi")}, path)
    with pytest.raises(UnsafeCheckpointError, match="weird.pth"):
        DetectionCheckpointer(_model()).load(str(path))


def test_corrupt_files_get_a_clear_error(tmp_path):
    truncated = tmp_path / "truncated.pth"
    buffer = tmp_path / "full.pth"
    torch.save({"model": _model().state_dict()}, buffer)
    truncated.write_bytes(buffer.read_bytes()[:100])
    with pytest.raises(RuntimeError, match="truncated.pth.*not a readable torch checkpoint"):
        DetectionCheckpointer(_model()).load(str(truncated))
    bad_pkl = tmp_path / "bad.pkl"
    bad_pkl.write_bytes(b"not a pickle at all")
    with pytest.raises(pickle.UnpicklingError, match="bad.pkl"):
        DetectionCheckpointer(_model()).load(str(bad_pkl))
    not_a_dict = tmp_path / "list.pth"
    torch.save([1, 2], not_a_dict)
    with pytest.raises(TypeError, match="list.pth.*expected a dict"):
        DetectionCheckpointer(_model()).load(str(not_a_dict))


# ----------------------------------------------------------------------------- URL cache


def test_detectron2_url_maps_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CVPODS_CACHE", str(tmp_path / "cache"))
    url = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    expected = tmp_path / "cache" / "detectron2" / "ImageNetPretrained" / "MSRA" / "R-50.pkl"
    assert cached_path_of(url) == str(expected)
    assert cached_path_of("https://example.com/models/r50/model.pth") == str(
        tmp_path / "cache" / "models" / "r50" / "model.pth"
    )
    expected.parent.mkdir(parents=True)
    model = _model()
    expected.write_bytes(
        pickle.dumps({"model": {k: v.numpy() for k, v in model.state_dict().items()}})
    )
    assert resolve_weights_path(url) == str(expected)
    other = nn.Sequential(nn.Conv2d(3, 2, 1))
    DetectionCheckpointer(other).load(url)
    assert torch.equal(other[0].weight, model[0].weight)


def test_missing_url_offline_names_the_url_and_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("CVPODS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CVPODS_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as error:
        DetectionCheckpointer(_model()).load("detectron2://ImageNetPretrained/MSRA/R-50.pkl")
    message = str(error.value)
    assert "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl" in message
    assert (
        str(tmp_path / "cache" / "detectron2" / "ImageNetPretrained" / "MSRA" / "R-50.pkl")
        in message
    )


def test_failed_download_names_the_url_and_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("CVPODS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CVPODS_OFFLINE", raising=False)
    url = "http://127.0.0.1:9/weights/missing.pth"  # the discard port: refused at once
    with pytest.raises(FileNotFoundError) as error:
        resolve_weights_path(url, timeout=2)
    message = str(error.value)
    assert url in message and str(tmp_path / "cache" / "weights" / "missing.pth") in message
    assert not (tmp_path / "cache" / "weights" / "missing.pth").exists()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass


def test_download_into_the_cache(tmp_path, monkeypatch):
    served = tmp_path / "served" / "zoo"
    served.mkdir(parents=True)
    model = _model()
    torch.save({"model": model.state_dict()}, served / "model.pth")
    handler = functools.partial(_QuietHandler, directory=str(tmp_path / "served"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("CVPODS_CACHE", str(tmp_path / "cache"))
        monkeypatch.delenv("CVPODS_OFFLINE", raising=False)
        url = f"http://127.0.0.1:{server.server_address[1]}/zoo/model.pth"
        other = _model()
        with torch.no_grad():
            other[0].weight.zero_()
        DetectionCheckpointer(other).load(url)
    finally:
        server.shutdown()
        server.server_close()
    cached = tmp_path / "cache" / "zoo" / "model.pth"
    assert cached.read_bytes() == (served / "model.pth").read_bytes()
    assert torch.equal(other[0].weight, model[0].weight)
    assert sorted(os.listdir(cached.parent)) == ["model.pth"]  # no temporary file left


def test_torch_files_named_pkl_use_the_weights_only_torch_load(tmp_path):
    model = _model()
    good = tmp_path / "good.pkl"
    torch.save({"model": model.state_dict()}, good)
    other = nn.Sequential(nn.Conv2d(3, 2, 1))
    DetectionCheckpointer(other).load(str(good))
    assert torch.equal(other[0].weight, model[0].weight)

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    torch.save({"model": {"0.weight": _ShellPayload(os.system, f"touch {marker}")}}, evil)
    with pytest.raises(UnsafeCheckpointError, match="evil.pkl"):
        DetectionCheckpointer(_model()).load(str(evil))
    assert not marker.exists()
