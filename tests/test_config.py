import pytest

from cvpods.configs import BaseConfig, ConfigError, FCOSConfig


def test_attribute_access_and_defaults():
    cfg = FCOSConfig()
    assert cfg.MODEL.FCOS.NUM_CONVS == 4
    assert cfg.MODEL.RESNETS.OUT_FEATURES == ["res3", "res4", "res5"]
    assert cfg.MODEL.FCOS.OBJECT_SIZES_OF_INTEREST[-1][1] == float("inf")
    cfg.MODEL.FCOS.NUM_CONVS = 8
    assert cfg["MODEL"]["FCOS"]["NUM_CONVS"] == 8


def test_merge_from_list_parses_and_checks_types():
    cfg = FCOSConfig()
    cfg.merge_from_list(
        [
            "MODEL.WEIGHTS",
            "a.pth",
            "SOLVER.BASE_LR",
            "0.02",
            "SOLVER.STEPS",
            "(10, 20)",
            "SOLVER.MAX_ITER",
            "100",
            "MODEL.FCOS.GATE_ACTIVATION_KARGS",
            "{'tau': 1.5}",
            "MODEL.PIXEL_STD",
            "[57.375, 57.12, 58.395]",
        ]
    )
    assert cfg.MODEL.WEIGHTS == "a.pth"
    assert cfg.SOLVER.BASE_LR == 0.02 and isinstance(cfg.SOLVER.BASE_LR, float)
    assert cfg.SOLVER.STEPS == (10, 20)
    assert cfg.SOLVER.MAX_ITER == 100
    assert cfg.MODEL.FCOS.GATE_ACTIVATION_KARGS == {"tau": 1.5}
    # An int where a float is expected is widened; a string where an int is expected is refused.
    cfg.merge_from_list(["SOLVER.BASE_LR", "1"])
    assert cfg.SOLVER.BASE_LR == 1.0 and isinstance(cfg.SOLVER.BASE_LR, float)
    with pytest.raises(ConfigError, match="SOLVER.MAX_ITER.*int"):
        cfg.merge_from_list(["SOLVER.MAX_ITER", "many"])
    with pytest.raises(ConfigError, match="MODEL.FCOS.CENTERNESS_ON_REG"):
        cfg.merge_from_list(["MODEL.FCOS.CENTERNESS_ON_REG", "1"])
    with pytest.raises(ConfigError, match="pairs"):
        cfg.merge_from_list(["SOLVER.MAX_ITER"])


def test_unknown_key_names_it_and_suggests():
    cfg = FCOSConfig()
    with pytest.raises(ConfigError) as info:
        cfg.merge_from_list(["MODEL.FCOS.NUM_CONV", "8"])
    message = str(info.value)
    assert "MODEL.FCOS.NUM_CONV" in message and "MODEL.FCOS.NUM_CONVS" in message
    with pytest.raises(ConfigError, match="SOLVER.BASE_LR"):
        cfg.merge_from_list(["SOLVER.BASE_LRR", "0.1"])


def test_dump_round_trip_and_diff():
    cfg = FCOSConfig()
    cfg.merge_from_list(["MODEL.FCOS.NUM_CONVS", "16", "DATASETS.TRAIN", "('shapes_train',)"])
    text = cfg.dump()
    assert "'NUM_CONVS': 16" in text and 'float("inf")' in text
    again = FCOSConfig.load_dump(text)
    assert again == cfg
    assert isinstance(again, FCOSConfig) and again.MODEL.FCOS.NUM_CONVS == 16
    diff = cfg.diff_from_defaults()
    assert "MODEL.FCOS.NUM_CONVS: 4 -> 16" in diff
    assert "DATASETS.TRAIN: () -> ('shapes_train',)" in diff
    assert "SOLVER.BASE_LR" not in diff


def test_load_dump_refuses_code():
    with pytest.raises(ConfigError, match="literal"):
        BaseConfig.load_dump("{'A': __import__('os').getcwd()}")
