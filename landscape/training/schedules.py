"""Learning-rate schedules by epoch (no torch): what `landscape run` sets each epoch, and what the schedule figure
draws from a config alone."""
from __future__ import annotations

import math

from landscape.errors import UsageError
from landscape.training.config import SCHEDULES


def lr_at_epoch(base_lr: float, epoch: int, *, schedule: str = "constant", epochs: int = 1, step_size: int = 1,
                gamma: float = 0.1, milestones: tuple[int, ...] = (), cosine_extra: int = 0,
                warmup_epochs: int = 0) -> float:
    """The learning rate during epoch `epoch` (from 0), stepped once per epoch as torch's schedulers.

    step: base * gamma^(epoch // step_size); multistep: base * gamma^(milestones passed);
    cosine: base * (1 + cos(pi * epoch / T_max)) / 2 with T_max = epochs + cosine_extra (report 000
    anneals to zero 20 epochs after the end); warmup multiplies by (epoch + 1) / warmup_epochs for
    the first warmup_epochs epochs.
    """
    if schedule == "constant":
        lr = base_lr
    elif schedule == "step":
        lr = base_lr * gamma ** (epoch // step_size)
    elif schedule == "multistep":
        lr = base_lr * gamma ** sum(epoch >= m for m in milestones)
    elif schedule == "cosine":
        lr = base_lr * (1 + math.cos(math.pi * epoch / (epochs + cosine_extra))) / 2
    else:
        raise UsageError(f"--schedule {schedule!r} is unknown: choose one of {', '.join(SCHEDULES)}")
    if epoch < warmup_epochs:
        lr *= (epoch + 1) / warmup_epochs
    return lr
