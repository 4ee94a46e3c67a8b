"""The release's GPU-count scaling rule on the official configs (8 GPUs x 2 images as written)."""

from __future__ import annotations

import logging

import pytest
from conftest import load_experiment

from cvpods.configs import ConfigError
from cvpods.configs.scaling import adjust_config

OFFICIAL = "fcos.res50.1x.dynamic.d4.lambda-0_1"
KEYS = (
    "SOLVER.IMS_PER_BATCH",
    "SOLVER.BASE_LR",
    "SOLVER.MAX_ITER",
    "SOLVER.STEPS",
    "SOLVER.CHECKPOINT_PERIOD",
    "TEST.EVAL_PERIOD",
)
# Hand-computed: batch and lr times N/8, iterations times 8/N (as written: 16, 0.01, 90k,
# (60k, 80k), checkpoints every 5000, evaluation every 10000 here).
EXPECTED = {
    1: (2, 0.00125, 720000, (480000, 640000), 40000, 80000),
    2: (4, 0.0025, 360000, (240000, 320000), 20000, 40000),
    4: (8, 0.005, 180000, (120000, 160000), 10000, 20000),
    8: (16, 0.01, 90000, (60000, 80000), 5000, 10000),
}


def _official():
    cfg, _ = load_experiment(OFFICIAL)
    cfg.TEST.EVAL_PERIOD = 10000
    return cfg


def _values(cfg):
    return tuple(cfg.get_key(k) for k in KEYS)


@pytest.mark.parametrize("world_size", [1, 2, 4, 8])
def test_official_configs_scale_linearly_with_the_number_of_processes(world_size):
    cfg = _official()
    assert (cfg.SOLVER.IMS_PER_DEVICE, cfg.SOLVER.SCALE_WITH_WORLD_SIZE) == (2, True)
    warmup = cfg.SOLVER.WARMUP_ITERS
    changes = adjust_config(cfg, world_size)
    assert _values(cfg) == EXPECTED[world_size]
    assert cfg.SOLVER.IMS_PER_BATCH == world_size * cfg.SOLVER.IMS_PER_DEVICE
    assert cfg.SOLVER.WARMUP_ITERS == warmup  # warm-up is not scaled (as in the release)
    assert (changes == {}) == (world_size == 8)
    # Applying it again on the same number of processes changes nothing.
    assert adjust_config(cfg, world_size) == {}
    assert _values(cfg) == EXPECTED[world_size]


def test_all_official_experiments_use_the_rule():
    for name in (
        "fcos.res50.1x",
        "fcos.res50.1x.fix.d4",
        "fcos.res50.1x.fix.d8",
        "fcos.res50.1x.dynamic.d8.lambda-0",
        "fcos.res50.1x.dynamic.d8.lambda-0_1",
        "fcos.res50.1x.dynamic.d8.lambda-0_8",
    ):
        cfg, _ = load_experiment(name)
        adjust_config(cfg, 1)
        assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER) == (2, 720000), name


def test_switch_keeps_the_batch_fixed():
    cfg = _official()
    cfg.merge_from_list(["SOLVER.SCALE_WITH_WORLD_SIZE", "False"])
    before = _values(cfg)
    assert adjust_config(cfg, 1) == {}
    assert _values(cfg) == before


@pytest.mark.parametrize("world_size", [1, 2])
def test_shapes_experiments_are_unchanged(world_size):
    for name in ("shapes.res18.dynamic.d4.lambda-0_1", "shapes.res18.fix.d4", "shapes.res18.fcos"):
        cfg, _ = load_experiment(name)
        assert cfg.SOLVER.IMS_PER_DEVICE is None
        before = cfg.dump()
        assert adjust_config(cfg, world_size) == {}
        assert cfg.dump() == before


def test_inconsistent_batch_sizes_are_config_errors():
    cfg = _official()
    cfg.SOLVER.IMS_PER_DEVICE = 3
    with pytest.raises(ConfigError, match="IMS_PER_DEVICE"):
        adjust_config(cfg, 1)


def test_default_setup_scales_and_logs(tmp_path):
    from cvpods.engine import default_setup

    cfg = _official()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.SEED = 0
    default_setup(cfg)  # one process
    assert _values(cfg) == EXPECTED[1]
    for handler in logging.getLogger("cvpods").handlers:
        handler.flush()
    log = (tmp_path / "log.txt").read_text()
    assert "Scaled the solver from 8 to 1 process(es)" in log
    assert "SOLVER.IMS_PER_BATCH 16 -> 2" in log and "SOLVER.MAX_ITER 90000 -> 720000" in log
    assert "'IMS_PER_BATCH': 2," in (tmp_path / "config_dump.py").read_text()
