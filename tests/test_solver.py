"""Optimizer parameter groups, gradient clipping and learning-rate schedules."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from cvpods.configs import BaseDetectionConfig, ConfigError
from cvpods.solver import (
    WarmupCosineLR,
    WarmupMultiStepLR,
    build_lr_scheduler,
    build_optimizer,
    get_param_groups,
)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)  # weight: default, bias: bias
        self.bn = nn.BatchNorm2d(4)  # weight and bias: norm
        self.gn = nn.GroupNorm(2, 4)  # norm
        self.fc = nn.Linear(4, 2)  # weight: default, bias: bias
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)
        self.shared = self.fc  # the same parameters reachable twice


def _cfg(**solver) -> BaseDetectionConfig:
    cfg = BaseDetectionConfig()
    cfg.merge_from_dict({f"SOLVER.{k}": v for k, v in solver.items()})
    return cfg


def _groups_by_name(optimizer: torch.optim.Optimizer) -> dict:
    return {g["name"]: g for g in optimizer.param_groups}


def test_param_groups_split_norm_bias_default() -> None:
    net = _Net()
    cfg = _cfg(
        BASE_LR=0.1,
        WEIGHT_DECAY=1e-4,
        WEIGHT_DECAY_NORM=0.0,
        BIAS_LR_FACTOR=2.0,
        WEIGHT_DECAY_BIAS=0.0,
        MOMENTUM=0.8,
    )
    optimizer = build_optimizer(cfg, net)
    assert isinstance(optimizer, torch.optim.SGD)
    groups = _groups_by_name(optimizer)
    assert set(groups) == {"default", "bias", "norm"}

    def ids(params):
        return {id(p) for p in params}

    assert ids(groups["default"]["params"]) == ids([net.conv.weight, net.fc.weight])
    assert ids(groups["bias"]["params"]) == ids([net.conv.bias, net.fc.bias])
    assert ids(groups["norm"]["params"]) == ids(
        [net.bn.weight, net.bn.bias, net.gn.weight, net.gn.bias]
    )
    assert groups["default"]["lr"] == pytest.approx(0.1)
    assert groups["default"]["weight_decay"] == pytest.approx(1e-4)
    assert groups["bias"]["lr"] == pytest.approx(0.2)
    assert groups["bias"]["weight_decay"] == 0.0
    assert groups["norm"]["lr"] == pytest.approx(0.1)
    assert groups["norm"]["weight_decay"] == 0.0
    assert all(g["momentum"] == pytest.approx(0.8) for g in optimizer.param_groups)
    # Frozen parameters are left out; shared ones appear once.
    all_params = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(all_params) == len({id(p) for p in all_params}) == 8


def test_norm_weight_decay_is_applied_by_sgd() -> None:
    """One step with zero gradients: only weight decay moves the parameters."""
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.GroupNorm(1, 2))
    nn.init.constant_(net[1].weight, 1.0)
    nn.init.constant_(net[0].weight, 1.0)
    cfg = _cfg(BASE_LR=0.5, WEIGHT_DECAY=0.1, WEIGHT_DECAY_NORM=0.0, MOMENTUM=0.0)
    optimizer = build_optimizer(cfg, net)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert torch.allclose(net[0].weight, torch.full_like(net[0].weight, 1.0 - 0.5 * 0.1))
    assert torch.equal(net[1].weight, torch.ones_like(net[1].weight))


def test_get_param_groups_drops_empty_groups() -> None:
    groups = get_param_groups(nn.Linear(3, 3, bias=False), 0.1, 1e-4, 0.0)
    assert [g["name"] for g in groups] == ["default"]


def _clip_step(clip_type: str, clip_value: float, grads: dict) -> dict:
    """One SGD step (lr 1, no momentum or decay) from zero weights: returns minus the weights,
    i.e. the clipped gradients."""
    net = nn.Linear(2, 1)
    nn.init.zeros_(net.weight)
    nn.init.zeros_(net.bias)
    cfg = _cfg(BASE_LR=1.0, MOMENTUM=0.0, WEIGHT_DECAY=0.0)
    cfg.merge_from_dict(
        {
            "SOLVER.CLIP_GRADIENTS.ENABLED": True,
            "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": clip_type,
            "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": clip_value,
        }
    )
    optimizer = build_optimizer(cfg, net)
    assert isinstance(optimizer, torch.optim.SGD)
    net.weight.grad = torch.tensor([grads["weight"]])
    net.bias.grad = torch.tensor(grads["bias"])
    optimizer.step()
    return {"weight": (-net.weight.detach())[0].tolist(), "bias": (-net.bias.detach()).tolist()}


GRADS = {"weight": [3.0, -4.0], "bias": [0.3]}  # norms 5 and 0.3; together sqrt(25.09)


def test_clip_value_clamps_each_element() -> None:
    update = _clip_step("value", 0.5, GRADS)
    assert update["weight"] == pytest.approx([0.5, -0.5])
    assert update["bias"] == pytest.approx([0.3])


def test_clip_norm_is_per_parameter_as_in_the_release() -> None:
    """ "norm" clips each parameter's gradient separately: the weight (norm 5) is scaled to norm 1,
    the bias (norm 0.3) is left alone."""
    update = _clip_step("norm", 1.0, GRADS)
    assert update["weight"] == pytest.approx([0.6, -0.8], abs=1e-6)
    assert update["bias"] == pytest.approx([0.3], abs=1e-7)


def test_clip_full_model_scales_all_gradients_together() -> None:
    """ "full_model": one norm over all gradients, sqrt(3^2 + 4^2 + 0.3^2) = 5.00899..."""
    total = (3.0**2 + 4.0**2 + 0.3**2) ** 0.5
    update = _clip_step("full_model", 1.0, GRADS)
    assert update["weight"] == pytest.approx([3.0 / total, -4.0 / total], abs=1e-6)
    assert update["bias"] == pytest.approx([0.3 / total], abs=1e-6)


def test_bad_clip_type_is_a_config_error() -> None:
    cfg = _cfg()
    cfg.merge_from_dict(
        {"SOLVER.CLIP_GRADIENTS.ENABLED": True, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "full"}
    )
    with pytest.raises(ConfigError, match="CLIP_TYPE"):
        build_optimizer(cfg, nn.Linear(2, 2))


def _decay_step(**solver) -> tuple[float, float]:
    """One SGD step with zero gradients from weight 1 and bias 2: only weight decay moves them."""
    net = nn.Linear(1, 1)
    nn.init.constant_(net.weight, 1.0)
    nn.init.constant_(net.bias, 2.0)
    optimizer = build_optimizer(_cfg(BASE_LR=0.5, MOMENTUM=0.0, **solver), net)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return float(net.weight), float(net.bias)


def test_bias_weight_decay_follows_weight_decay_by_default() -> None:
    """As in the release: biases decay with WEIGHT_DECAY unless WEIGHT_DECAY_BIAS is set.
    SGD: p <- p - lr * wd * p, so 1 -> 1 - 0.5 * 0.1 = 0.95 and 2 -> 2 - 0.5 * 0.1 * 2 = 1.9."""
    assert BaseDetectionConfig().SOLVER.WEIGHT_DECAY_BIAS is None
    weight, bias = _decay_step(WEIGHT_DECAY=0.1)
    assert weight == pytest.approx(0.95) and bias == pytest.approx(1.9)
    # Set explicitly, it wins: 2 -> 2 - 0.5 * 0.01 * 2 = 1.99.
    weight, bias = _decay_step(WEIGHT_DECAY=0.1, WEIGHT_DECAY_BIAS=0.01)
    assert weight == pytest.approx(0.95) and bias == pytest.approx(1.99)
    weight, bias = _decay_step(WEIGHT_DECAY=0.1, WEIGHT_DECAY_BIAS=0.0)
    assert bias == 2.0


def test_sgd_is_the_default_optimizer_as_in_the_release() -> None:
    assert BaseDetectionConfig().SOLVER.OPTIMIZER_NAME == "SGD"
    optimizer = build_optimizer(_cfg(), nn.Linear(2, 2))
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["momentum"] == 0.9


def test_adamw_step_by_hand_with_decoupled_weight_decay() -> None:
    """AdamW's first step with betas (0.5, 0.25): m = (1 - 0.5) g, v = (1 - 0.25) g^2, bias-corrected
    to g and g^2, so the update is lr * g / (|g| + eps) = lr * sign(g) (eps 1e-8 aside), after the
    decoupled decay p <- p * (1 - lr * wd). Weight 1, gradient 2, lr 0.1, wd 0.5:
    1 * (1 - 0.05) - 0.1 = 0.85. The per-kind groups and clipping apply as for SGD."""
    net = nn.Linear(1, 1)
    nn.init.constant_(net.weight, 1.0)
    nn.init.constant_(net.bias, 0.0)
    cfg = _cfg(OPTIMIZER_NAME="AdamW", BASE_LR=0.1, WEIGHT_DECAY=0.5, BETAS=(0.5, 0.25))
    cfg.merge_from_dict({"SOLVER.CLIP_GRADIENTS.ENABLED": True})
    optimizer = build_optimizer(cfg, net)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert type(optimizer).__name__ == "AdamWWithGradientClip"
    assert _groups_by_name(optimizer)["default"]["betas"] == (0.5, 0.25)
    net.weight.grad = torch.full_like(net.weight, 2.0)
    net.bias.grad = torch.zeros_like(net.bias)
    optimizer.step()
    assert float(net.weight) == pytest.approx(0.85, abs=1e-6)


@pytest.mark.parametrize(
    ("solver", "match"),
    [
        (dict(OPTIMIZER_NAME="Adam"), "OPTIMIZER_NAME must be one of 'SGD', 'AdamW', got 'Adam'"),
        (dict(OPTIMIZER_NAME="AdamW", BETAS=(0.9, 1.5)), "SOLVER.BETAS must be two numbers"),
        (dict(OPTIMIZER_NAME="AdamW", BETAS=(0.9,)), "SOLVER.BETAS must be two numbers"),
        # Not a pair at all: the config itself refuses it (a tuple key), naming the key.
        (dict(OPTIMIZER_NAME="AdamW", BETAS=0.9), "config key SOLVER.BETAS: expected a value"),
    ],
)
def test_bad_optimizer_settings_are_config_errors(solver: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_optimizer(_cfg(**solver), nn.Linear(2, 2))


def test_shapes_experiments_keep_whole_model_norm_clipping() -> None:
    from conftest import load_experiment

    for name in ("shapes.res18.dynamic.d4.lambda-0_1", "shapes.res18.fix.d4", "shapes.res18.fcos"):
        cfg, _ = load_experiment(name)
        assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model", name


def _lrs(scheduler, optimizer, iterations: int) -> list[float]:
    values = []
    for _ in range(iterations):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def _sgd(lr: float = 1.0) -> torch.optim.SGD:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)


def test_warmup_multistep_values() -> None:
    optimizer = _sgd(1.0)
    scheduler = WarmupMultiStepLR(
        optimizer, milestones=[6, 8], gamma=0.1, warmup_factor=0.2, warmup_iters=4
    )
    values = _lrs(scheduler, optimizer, 10)
    expected = [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    assert values == pytest.approx(expected)


def test_constant_warmup_and_cosine_values() -> None:
    optimizer = _sgd(2.0)
    scheduler = WarmupCosineLR(
        optimizer, max_iters=10, warmup_factor=0.1, warmup_iters=2, warmup_method="constant"
    )
    values = _lrs(scheduler, optimizer, 10)
    cosine = [2.0 * 0.5 * (1 + math.cos(math.pi * t / 10)) for t in range(10)]
    assert values[:2] == pytest.approx([0.1 * cosine[0], 0.1 * cosine[1]])
    assert values[2:] == pytest.approx(cosine[2:])


def test_build_lr_scheduler_from_config_and_state_dict_round_trip() -> None:
    cfg = _cfg(
        LR_SCHEDULER_NAME="WarmupMultiStepLR",
        BASE_LR=0.1,
        STEPS=(5,),
        MAX_ITER=10,
        WARMUP_ITERS=3,
        WARMUP_FACTOR=0.5,
    )
    net = nn.Linear(2, 2)
    optimizer = build_optimizer(cfg, net)
    scheduler = build_lr_scheduler(cfg, optimizer)
    _lrs(scheduler, optimizer, 4)
    buffer = io.BytesIO()
    torch.save({"scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["scheduler"]

    resumed_optimizer = build_optimizer(cfg, nn.Linear(2, 2))
    resumed = build_lr_scheduler(cfg, resumed_optimizer)
    resumed.load_state_dict(state)
    # The optimizer's lr is restored with the optimizer state; here we only check the schedule.
    for group, lr in zip(resumed_optimizer.param_groups, scheduler.get_last_lr()):
        group["lr"] = lr
    rest_a = _lrs(scheduler, optimizer, 6)
    rest_b = _lrs(resumed, resumed_optimizer, 6)
    assert rest_a == pytest.approx(rest_b)
    assert rest_a == pytest.approx([0.1, 0.01, 0.01, 0.01, 0.01, 0.01])


def test_unknown_scheduler_and_unsorted_steps_are_config_errors() -> None:
    optimizer = _sgd()
    with pytest.raises(ConfigError, match="LR_SCHEDULER_NAME"):
        build_lr_scheduler(_cfg(LR_SCHEDULER_NAME="Poly"), optimizer)
    with pytest.raises(ConfigError, match="STEPS"):
        build_lr_scheduler(_cfg(STEPS=(20, 10)), optimizer)
    with pytest.raises(ConfigError, match="WARMUP_METHOD"):
        build_lr_scheduler(_cfg(WARMUP_METHOD="exp"), optimizer)
