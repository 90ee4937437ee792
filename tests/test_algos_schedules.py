"""The EMA teacher's weight schedule and in-place update, and the learning-rate schedules, against
numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from corewarding.algos import build_lr_scheduler, ema_update_, ema_weight, lr_lambda

from hand_values import close


# --------------------------------------------------------------------------- EMA teacher

def test_ema_weight_schedule():
    assert ema_weight(0, 100) == pytest.approx(0.99, abs=1e-12)
    assert ema_weight(100, 100) == pytest.approx(0.9999, abs=1e-12)
    assert ema_weight(50, 100) == pytest.approx((0.99 + 0.9999) / 2, abs=1e-12)  # 0.99495
    # k = K/4: cos(pi/4) = 0.7071068 -> 0.9999 - 0.00495 * 1.7071068 = 0.99144982
    assert ema_weight(25, 100) == pytest.approx(0.9999 - 0.00495 * (1 + math.sqrt(0.5)), abs=1e-12)
    assert ema_weight(25, 100) == pytest.approx(0.9914498, abs=1e-7)
    # clamped to [0, K]
    assert ema_weight(-3, 100) == pytest.approx(0.99, abs=1e-12)
    assert ema_weight(250, 100) == pytest.approx(0.9999, abs=1e-12)
    # custom ends, K = 3, k = 1: cos(pi/3) = 0.5 -> 1.0 - 0.25 * 1.5 = 0.625
    assert ema_weight(1, 3, start=0.5, end=1.0) == pytest.approx(0.625, abs=1e-12)
    weights = [ema_weight(k, 10) for k in range(11)]
    assert all(a < b for a, b in zip(weights, weights[1:]))
    with pytest.raises(ValueError):
        ema_weight(0, 0)


def test_ema_update_in_place():
    teacher = torch.tensor([1.0, 2.0])
    policy = torch.tensor([3.0, 6.0])
    storage = teacher.data_ptr()
    ema_update_([teacher], [policy], 0.75)
    close(teacher, [1.5, 3.0])  # 0.75*1 + 0.25*3, 0.75*2 + 0.25*6
    assert teacher.data_ptr() == storage
    close(policy, [3.0, 6.0])
    # a view (like a local shard) updates its base; twice with w = 0.5: 0 -> 2 -> 3
    full = torch.zeros(4)
    ema_update_([full[1:3]], [torch.tensor([4.0, 8.0])], 0.5)
    ema_update_([full[1:3]], [torch.tensor([4.0, 8.0])], 0.5)
    close(full, [0.0, 3.0, 6.0, 0.0])
    # mappings are matched by name; module parameters (requires_grad) work
    lin_t, lin_p = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        lin_t.weight.fill_(1.0), lin_t.bias.fill_(0.0), lin_p.weight.fill_(-1.0), lin_p.bias.fill_(10.0)
    ema_update_(dict(lin_t.named_parameters()), dict(reversed(list(lin_p.named_parameters()))), 0.9)
    close(lin_t.weight.detach(), [[0.8, 0.8]])  # 0.9*1 + 0.1*(-1)
    close(lin_t.bias.detach(), [1.0])  # 0.9*0 + 0.1*10
    with pytest.raises(ValueError):
        ema_update_([teacher], [policy, policy], 0.5)


# --------------------------------------------------------------------------- LR schedules

def test_lr_lambda_cosine_and_constant():
    # total 110, warm-up 10: linear 0 -> 1, then 0.5 (1 + cos(pi p)), p = (step - 10) / 100
    assert lr_lambda(0, 110, 10) == 0.0
    assert lr_lambda(5, 110, 10) == pytest.approx(0.5)
    assert lr_lambda(10, 110, 10) == pytest.approx(1.0)
    assert lr_lambda(35, 110, 10) == pytest.approx(0.5 * (1 + math.sqrt(0.5)))  # p=1/4: 0.853553
    assert lr_lambda(60, 110, 10) == pytest.approx(0.5)  # p = 1/2
    assert lr_lambda(110, 110, 10) == pytest.approx(0.0, abs=1e-12)  # p = 1
    # min_lr_ratio 0.1: 0.1 + 0.9 * 0.5 (1 + cos(pi p)) -> p=1/2: 0.55, p=1: 0.1
    assert lr_lambda(60, 110, 10, min_lr_ratio=0.1) == pytest.approx(0.55)
    assert lr_lambda(110, 110, 10, min_lr_ratio=0.1) == pytest.approx(0.1)
    # constant: warm-up, then 1
    assert lr_lambda(5, 110, 10, style="constant") == pytest.approx(0.5)
    assert lr_lambda(80, 110, 10, style="constant") == 1.0
    # no warm-up: step 0 already gives full LR
    assert lr_lambda(0, 100, 0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        lr_lambda(0, 100, 0, style="linear")


def test_build_lr_scheduler():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=2.0)
    sched = build_lr_scheduler(opt, total_steps=20, warmup_steps_ratio=0.1, style="cosine")  # warm-up 2
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(20):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    # step 0: 0; 1: 2 * 1/2; 2: 2 * 1; 11: p = 9/18 -> 2 * 0.5; 20: 0
    close([lrs[0], lrs[1], lrs[2], lrs[11], lrs[20]], [0.0, 1.0, 2.0, 1.0, 0.0], tol=1e-9)
    # explicit warm-up steps override the ratio; constant style
    opt = torch.optim.SGD([param], lr=1.0)
    sched = build_lr_scheduler(opt, 20, warmup_steps_ratio=0.5, warmup_steps=4, style="constant")
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(6):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    close(lrs, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0], tol=1e-9)
