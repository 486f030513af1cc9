"""Optimizers by name.

`make_optimizer("ranger", params, lr=...)` maps `--optimizer` to a torch optimizer; Ranger
(RAdam + Lookahead + gradient centralization, reports 000-001) is defined here. The learning-rate
schedules (`--schedule`) live in `schedules.py`, without torch.
"""
from __future__ import annotations

from typing import Iterable

import torch

from landscape.errors import UsageError

OPTIMIZERS = ("sgd", "adam", "adamw", "radam", "ranger")


class Ranger(torch.optim.RAdam):
    """RAdam with gradient centralization and Lookahead (Wright's Ranger, 2019; Zhang et al. 2019).

    Each step: (1) centralize the gradient of every weight with more than one dimension,
    g <- g - mean of g over all axes but the first; (2) take a RAdam step (torch's RAdam: the rectified
    adaptive step once rho_t > 5, else the bias-corrected momentum step); (3) every k steps, move the
    slow weights alpha of the way to the fast weights and reset the fast weights to them.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.95, 0.999), eps: float = 1e-5,
                 weight_decay: float = 0.0, k: int = 6, alpha: float = 0.5):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decoupled_weight_decay=True)
        self.k, self.alpha = k, alpha
        self.lookahead_steps = 0

    @torch.no_grad()
    def step(self, closure=None):
        stepped = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        first_seen = {p: p.detach().clone() for p in stepped if "slow" not in self.state[p]}
        for p in stepped:
            if p.grad.dim() > 1:
                p.grad.sub_(p.grad.mean(dim=tuple(range(1, p.grad.dim())), keepdim=True))
        loss = super().step(closure)  # RAdam initialises its state lazily, so "slow" is added after it
        self.lookahead_steps += 1
        for p in stepped:
            state = self.state[p]
            if p in first_seen:
                state["slow"] = first_seen[p]  # slow weights start at the weights before the first step
            if self.lookahead_steps % self.k == 0:
                state["slow"].add_(p - state["slow"], alpha=self.alpha)
                p.copy_(state["slow"])
        return loss

    def state_dict(self):
        state = super().state_dict()
        state["lookahead_steps"] = self.lookahead_steps
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        self.lookahead_steps = state_dict.pop("lookahead_steps", 0)
        super().load_state_dict(state_dict)


def make_optimizer(name: str, params: Iterable[torch.nn.Parameter], *, lr: float, momentum: float = 0.9,
                   weight_decay: float = 0.0, nesterov: bool = False, eps: float | None = None) -> torch.optim.Optimizer:
    """Build optimizer `name` over `params`; `momentum` and `nesterov` apply to SGD, `eps` to the Adam family."""
    params = list(params)
    adaptive = {} if eps is None else {"eps": eps}
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov=nesterov and momentum > 0)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **adaptive)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **adaptive)
    if name == "radam":
        return torch.optim.RAdam(params, lr=lr, weight_decay=weight_decay, **adaptive)
    if name == "ranger":
        return Ranger(params, lr=lr, weight_decay=weight_decay, **adaptive)
    raise UsageError(f"--optimizer {name!r} is unknown: choose one of {', '.join(OPTIMIZERS)}")
