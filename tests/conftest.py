"""Shared test helpers: the reference fixtures and the playground experiments."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PLAYGROUND = REPO / "cvpods_playground"
REFERENCE = REPO.parent / "shared" / "fixtures" / "reference"

# Small ResNet so that full-model tests stay fast (the full-model fixtures use these widths).
THIN_BACKBONE = {
    "MODEL.RESNETS.WIDTH_PER_GROUP": 8,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 32,
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 16,
}


def reference_path(name: str) -> Path:
    path = REFERENCE / name
    if not path.exists():
        pytest.skip(f"reference fixture {path} is not available")
    return path


def load_reference(name: str) -> dict:
    return torch.load(reference_path(name), map_location="cpu", weights_only=True)


def load_experiment(name: str):
    """``(config, build_model)`` of ``cvpods_playground/<name>`` (a fresh config each call)."""
    folder = PLAYGROUND / name
    modules = []
    for stem in ("config", "net"):
        module_name = f"_playground_{name.replace('.', '_').replace('-', '_')}_{stem}"
        spec = importlib.util.spec_from_file_location(module_name, folder / f"{stem}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules.pop(module_name, None)
        spec.loader.exec_module(module)
        modules.append(module)
    return modules[0].config, modules[1].build_model
