"""Learning-rate schedules as plain functions of the epoch.

``released``: the LATTICE/MICRO code's schedule, ``lr_e = lr_0 · 0.96^(e / 50)`` for the 0-based
epoch ``e``: a ``LambdaLR`` with that factor, stepped once at the end of every epoch, so epoch 0
trains at ``lr_0``, epoch 50 at ``0.96 lr_0``, epoch 100 at ``0.9216 lr_0`` (the exponent is a true
division: the decay is smooth, not a staircase). ``constant``: ``lr_e = lr_0`` (the ``latticerec``
protocol). Being functions of ``e`` alone, they need no scheduler state in a checkpoint: a
resumed run sets ``lr_e`` at the start of epoch ``e``.
"""

from __future__ import annotations

SCHEDULES = ("constant", "released")


def released_lr_factor(epoch: int) -> float:
    """``0.96^(e / 50)``: the factor of the released code's ``LambdaLR`` for 0-based epoch ``e``."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return 0.96 ** (epoch / 50)


def learning_rate(base_lr: float, epoch: int, schedule: str = "constant") -> float:
    """The learning rate of 0-based epoch ``epoch`` under ``schedule`` (one of :data:`SCHEDULES`)."""
    if schedule == "constant":
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        return base_lr
    if schedule == "released":
        return base_lr * released_lr_factor(epoch)
    raise ValueError(f"unknown lr schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")


def set_learning_rate(optimizer, lr: float) -> None:
    """Give every parameter group of ``optimizer`` the learning rate ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
