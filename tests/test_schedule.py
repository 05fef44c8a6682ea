import math

import pytest
import torch

from latticerec.train.schedule import learning_rate, released_lr_factor, set_learning_rate


def test_released_factor_by_hand():
    assert released_lr_factor(0) == 1.0
    assert released_lr_factor(50) == pytest.approx(0.96)
    assert released_lr_factor(100) == pytest.approx(0.9216)
    assert released_lr_factor(25) == pytest.approx(math.sqrt(0.96))  # smooth, not a staircase
    assert learning_rate(5e-4, 1, "released") == pytest.approx(5e-4 * 0.96 ** 0.02)
    assert learning_rate(1e-3, 500, "constant") == 1e-3
    with pytest.raises(ValueError, match="unknown lr schedule"):
        learning_rate(1e-3, 0, "cosine")
    with pytest.raises(ValueError, match="epoch"):
        released_lr_factor(-1)


def test_matches_the_released_lambdalr_stepped_per_epoch():
    """The released code builds ``LambdaLR(opt, lambda e: 0.96 ** (e / 50))`` and steps it after
    every epoch: the rate used during epoch e must equal ``learning_rate(lr0, e, "released")``."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=released_lr_factor)
    ours = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=5e-4)
    for epoch in range(120):
        set_learning_rate(ours, learning_rate(5e-4, epoch, "released"))
        assert opt.param_groups[0]["lr"] == pytest.approx(ours.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()
