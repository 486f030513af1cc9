"""Paths between two weight points A and B: the line, a quadratic Bezier curve and a polygonal chain with one bend,
and the training of the bend (Garipov et al. 2018).

A path maps t in [0, 1] to weights, A at 0 and B at 1: the line (1 - t) A + t B; the Bezier curve
(1 - t)^2 A + 2 t (1 - t) M + t^2 B; the chain A -> M -> B, straight on each half. Floating buffers (BatchNorm's
running statistics) follow the line between A's and B's. `train_bend` fits the bend M by SGD on the mean loss
along the path: each batch at a t drawn uniformly, the model in BatchNorm train mode (batch statistics), A and B
held fixed, from M = (A + B) / 2; its state after every epoch can be kept and resumed from.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from landscape.engine.batches import BatchSet, Objective
from landscape.engine.functional import FunctionalModel, Params

CURVES = ("line", "bezier", "polychain")


def on_line(a: Params, b: Params, t: float) -> Params:
    """(1 - t) a + t b for floating tensors; the others (integer counters) are a's."""
    return {n: torch.lerp(a[n], b[n], t) if a[n].is_floating_point() else a[n] for n in a}


def on_curve(curve: str, a: Params, b: Params, bend: Params | None, t) -> Params:
    """The weights at t of the `curve` through `bend` (t a float or a 0-d tensor)."""
    if curve == "line" or bend is None:
        return on_line(a, b, float(t)) if not isinstance(t, torch.Tensor) else \
            {n: a[n] + t * (b[n] - a[n]) for n in a}
    if curve == "bezier":
        return {n: (1 - t) ** 2 * a[n] + 2 * t * (1 - t) * bend[n] + t ** 2 * b[n] for n in a}
    first = t < 0.5
    return {n: torch.where(torch.as_tensor(first), a[n] + 2 * t * (bend[n] - a[n]),
                           bend[n] + (2 * t - 1) * (b[n] - bend[n])) for n in a}


def train_bend(module: nn.Module, a: Params, b: Params, buffers: Params, curve: str, batches: BatchSet,
               objective: Objective, *, epochs: int, lr: float, momentum: float = 0.9, seed: int = 0,
               state: dict | None = None, after_epoch: Callable[[dict], None] | None = None,
               should_stop: Callable[[], bool] = lambda: False) -> tuple[Params, list[float]]:
    """The bend of `curve` trained for `epochs` (continuing from `state`, as `after_epoch` received it); returns it
    and the mean training loss along the path of each epoch. `module` is a BatchNorm-train skeleton."""
    state = state or {}
    bend = {n: (state["bend"][n] if "bend" in state else (a[n] + b[n]) / 2).clone().requires_grad_(True) for n in a}
    optimizer = torch.optim.SGD(list(bend.values()), lr=lr, momentum=momentum)
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    losses = list(state.get("losses", []))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(len(losses)):  # the draws of the epochs already trained, so a resume continues the stream
        torch.rand(len(batches), generator=generator, dtype=torch.float64)
    device = next(iter(a.values())).device
    for epoch in range(len(losses), epochs):
        draws = torch.rand(len(batches), generator=generator, dtype=torch.float64)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for share, batch, t in zip(batches.shares, batches, draws):
            point = on_curve(curve, a, b, bend, torch.tensor(float(t), device=device))
            loss = objective.loss_only(FunctionalModel(module, point, buffers), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += share * loss.detach().double()
        losses.append(float(total))
        if after_epoch is not None:
            after_epoch({"bend": {n: p.detach().clone() for n, p in bend.items()},
                         "optimizer": copy.deepcopy(optimizer.state_dict()), "losses": list(losses)})
        if should_stop() and epoch + 1 < epochs:
            break
    return {n: p.detach() for n, p in bend.items()}, losses
