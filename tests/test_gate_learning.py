"""The gate-learning settings of the short shapes schedules: SOLVER.GATE_LR_FACTOR puts the
spatial gates' parameters in their own optimizer group, and MODEL.FCOS.BUDGET_LOSS_WARMUP_ITERS
ramps the budget loss weight linearly with the trainer's iteration."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cvpods.configs import BaseDetectionConfig
from cvpods.layers import SpatialGate
from cvpods.layers.spatial_gate import GateCost
from cvpods.modeling.losses import budget_loss, budget_loss_weight
from cvpods.solver import build_lr_scheduler, build_optimizer, get_param_groups
from cvpods.utils.events import EventStorage


class _GatedBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.gate = SpatialGate(4, 1, "GeReTanH", dict(tau=1.5))


def test_gate_parameters_get_their_own_learning_rate() -> None:
    block = _GatedBlock()
    groups = {
        g["name"]: g
        for g in get_param_groups(block, base_lr=0.02, weight_decay=1e-4, weight_decay_norm=0.0,
                                  gate_lr_factor=10.0)
    }  # fmt: skip
    assert set(groups) == {"default", "bias", "norm", "gate"}
    gate_ids = {id(p) for p in block.gate.parameters()}
    assert {id(p) for p in groups["gate"]["params"]} == gate_ids
    assert groups["gate"]["lr"] == pytest.approx(0.2)
    assert groups["gate"]["weight_decay"] == 1e-4
    # The gate conv's weight and bias are in no other group.
    for name in ("default", "bias", "norm"):
        assert not gate_ids & {id(p) for p in groups[name]["params"]}
    assert groups["bias"]["params"] == [block.conv.bias]


def test_gate_lr_factor_one_keeps_the_release_groups() -> None:
    block = _GatedBlock()
    names = [g["name"] for g in get_param_groups(block, 0.01, 1e-4, 0.0)]
    assert names == ["default", "bias", "norm"]


def test_gate_lr_decay_off_keeps_the_gate_rate_after_the_steps() -> None:
    """SOLVER.GATE_LR_DECAY False: the gates get their own group (also at factor 1), which the
    schedule warms up but does not decay; every other group is decayed as before."""
    cfg = BaseDetectionConfig()
    cfg.merge_from_dict(
        {"SOLVER.BASE_LR": 0.1, "SOLVER.GATE_LR_DECAY": False, "SOLVER.STEPS": (4,),
         "SOLVER.MAX_ITER": 6, "SOLVER.WARMUP_ITERS": 2, "SOLVER.WARMUP_FACTOR": 0.5}
    )  # fmt: skip
    optimizer = build_optimizer(cfg, _GatedBlock())
    scheduler = build_lr_scheduler(cfg, optimizer)
    rates = {g["name"]: [] for g in optimizer.param_groups}
    for _ in range(6):
        for group in optimizer.param_groups:
            rates[group["name"]].append(group["lr"])
        optimizer.step()
        scheduler.step()
    assert set(rates) == {"default", "bias", "norm", "gate"}
    assert rates["gate"] == pytest.approx([0.05, 0.075, 0.1, 0.1, 0.1, 0.1])
    for name in ("default", "bias", "norm"):
        assert rates[name] == pytest.approx([0.05, 0.075, 0.1, 0.1, 0.01, 0.01])


@pytest.mark.parametrize(
    ("iteration", "expected"), [(0, 0.8 / 4), (1, 0.8 / 2), (3, 0.8), (10, 0.8)]
)
def test_budget_loss_weight_ramps_with_the_iteration(iteration: int, expected: float) -> None:
    with EventStorage(start_iter=iteration):
        assert budget_loss_weight(0.8, warmup_iters=4) == pytest.approx(expected)


def test_budget_loss_weight_without_warmup_or_trainer_is_lambda() -> None:
    assert budget_loss_weight(0.1, warmup_iters=0) == 0.1
    assert budget_loss_weight(0.1, warmup_iters=100) == 0.1  # no event storage: not training
    with EventStorage(start_iter=5):
        assert budget_loss_weight(0.1, warmup_iters=0) == 0.1


def test_budget_loss_is_weighted_mean_soft_ratio() -> None:
    cost = GateCost(
        soft=torch.tensor([10.0, 30.0]),
        used=torch.tensor([20.0, 40.0]),
        full=torch.tensor([40.0, 40.0]),
    )
    with EventStorage(start_iter=1):
        loss = budget_loss(cost, 0.5, warmup_iters=4)
    # mean(10/40, 30/40) = 0.5; weight 0.5 * 2/4.
    assert loss.item() == pytest.approx(0.5 * 0.25)
