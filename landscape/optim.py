"""Optimizers by name: `make_optimizer("adam", params, lr=..., ...)`.

The one place that maps `--optimizer` to a torch optimizer and its options.
"""
from __future__ import annotations

from typing import Iterable

import torch

from landscape.errors import UsageError


def make_optimizer(name: str, params: Iterable[torch.nn.Parameter], *, lr: float, momentum: float = 0.9,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Build optimizer `name` (adam or sgd) over `params`; `momentum` applies to SGD only."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise UsageError(f"--optimizer {name!r} is unknown: choose adam or sgd")
