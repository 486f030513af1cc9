"""Santurkar et al.'s probes (NeurIPS 2018, Sec. 3.1, Fig. 4): loss and gradient along the step.

At a probed step of one run, with w the weights before the step, g = grad L_B(w) on the step's
batch B and d the probe direction (the update the optimizer takes, u = w_{t+1} - w, or -lr * g),
the probe visits p_j = w + m_j d for each multiplier m_j and records
- the loss L_B(p_j) (loss variation),
- d_j = ||grad L_B(p_j) - g||_2 (gradient predictiveness),
- s_j = ||p_j - w||_2 = m_j ||d||, and beta = max_j d_j / s_j (effective beta-smoothness).
`probe_along` does the maths on any loss of a parameter dict; `ModelProbe` wraps a model so the
probe leaves training untouched: BatchNorm running statistics live in throw-away copies and the
random stream (dropout) is replayed from the training forward's state, then restored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from landscape.training.config import PROBE_DIRECTIONS
from landscape.errors import UsageError

Params = dict[str, torch.Tensor]


@dataclass
class ProbeResult:
    """One probe of one run: loss, grad_dist, distance [J] and beta (a 0-d tensor), on the device."""

    loss: torch.Tensor
    grad_dist: torch.Tensor
    distance: torch.Tensor
    beta: torch.Tensor
    grad_norm: torch.Tensor


def probe_along(loss_of: Callable[[Params], torch.Tensor], weights: Params, grad: Params, direction: Params,
                multipliers: tuple[float, ...], per_run_axis: bool = False, batched: bool = False) -> ProbeResult:
    """Loss and gradient distance at weights + m * direction for each multiplier m (one forward+backward each).

    With `per_run_axis`, every tensor carries R independent runs along axis 0 and `loss_of` returns
    their losses [R]; the results then have a leading run axis ([R, J] and [R]). With `batched`,
    `loss_of` gets all J points at once (each tensor stacked along a new axis 0) and returns [J].
    """
    names = list(weights)
    if batched:
        return probe_stacked(loss_of, weights, grad, direction, multipliers)

    def norm(tensors) -> torch.Tensor:
        squares = [t.double().pow(2) for t in tensors]
        return torch.sqrt(sum(s.flatten(1).sum(1) if per_run_axis else s.sum() for s in squares))

    grad_norm = norm(grad[n] for n in names)
    direction_norm = norm(direction[n] for n in names)
    losses, dists = [], []
    for m in multipliers:
        point = {n: (weights[n] + m * direction[n]).detach().requires_grad_(True) for n in names}
        loss = loss_of(point)
        grads = torch.autograd.grad(loss.sum(), [point[n] for n in names])
        dists.append(norm(gp - grad[n] for gp, n in zip(grads, names)))
        losses.append(loss.detach().double())
    grad_dist = torch.stack(dists, dim=-1)
    scale = torch.tensor(multipliers, dtype=torch.float64, device=direction_norm.device)
    distance = direction_norm.unsqueeze(-1) * scale
    return ProbeResult(loss=torch.stack(losses, dim=-1), grad_dist=grad_dist, distance=distance,
                       beta=(grad_dist / distance).max(dim=-1).values, grad_norm=grad_norm)


def probe_stacked(losses_of: Callable[[Params], torch.Tensor], weights: Params, grad: Params, direction: Params,
                  multipliers: tuple[float, ...]) -> ProbeResult:
    """`probe_along` with the J probe points stacked into one forward and one backward."""
    names = list(weights)
    scale = torch.tensor(multipliers, dtype=weights[names[0]].dtype, device=weights[names[0]].device)
    points = {n: (weights[n] + scale.view(-1, *[1] * weights[n].dim()) * direction[n]).detach().requires_grad_(True)
              for n in names}
    losses = losses_of(points)
    grads = torch.autograd.grad(losses.sum(), [points[n] for n in names])
    grad_dist = torch.sqrt(sum((g - grad[n]).double().pow(2).flatten(1).sum(1) for g, n in zip(grads, names)))
    grad_norm = torch.sqrt(sum(grad[n].double().pow(2).sum() for n in names))
    distance = torch.sqrt(sum(direction[n].double().pow(2).sum() for n in names)) * scale.double()
    return ProbeResult(loss=losses.detach().double(), grad_dist=grad_dist, distance=distance,
                       beta=(grad_dist / distance).max(), grad_norm=grad_norm)


class ModelProbe:
    """Probes one model at one step without disturbing its training (see module docstring)."""

    def __init__(self, multipliers: tuple[float, ...], direction: str, batched: bool = False):
        if direction not in PROBE_DIRECTIONS:
            raise UsageError(f"--probe-direction {direction!r} is unknown: choose update or gradient")
        self.multipliers = multipliers
        self.direction = direction
        self.batched = batched  # all multipliers in one vmapped forward and backward (J times the memory)

    def before_step(self, model: nn.Module) -> tuple[Params, Params]:
        """Snapshot (weights, gradients) after backward and before optimizer.step()."""
        weights, grads = {}, {}
        for name, p in model.named_parameters():
            if p.grad is not None:
                weights[name] = p.detach().clone()
                grads[name] = p.grad.detach().clone()
        return weights, grads

    def after_step(self, model: nn.Module, snapshot: tuple[Params, Params], lr: float, images: torch.Tensor,
                   labels: torch.Tensor, rng_state: "RngState", label_smoothing: float = 0.0) -> ProbeResult:
        """Probe around the snapshot on the step's batch, replaying the forward's random stream."""
        weights, grads = snapshot
        current = dict(model.named_parameters())
        if self.direction == "update":
            direction = {n: current[n].detach() - weights[n] for n in weights}
        else:
            direction = {n: -lr * grads[n] for n in grads}
        frozen = {n: p.detach() for n, p in current.items() if n not in weights}

        def loss_of(point: Params) -> torch.Tensor:
            buffers = {n: b.clone() for n, b in model.named_buffers()}  # BN running stats: throw-away copies
            rng_state.restore()  # the same dropout masks as the training forward
            logits = functional_call(model, {**frozen, **point, **buffers}, (images,))
            return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)  # the training loss

        def losses_of(points: Params) -> torch.Tensor:  # J stacked points, one vmapped pass
            count = len(self.multipliers)
            buffers = {n: b.expand(count, *b.shape).clone() for n, b in model.named_buffers()}
            rng_state.restore()  # randomness="same": one dropout draw, as the training forward's

            def one(point, buffer):
                return functional_call(model, {**frozen, **point, **buffer}, (images,))

            logits = vmap(one, randomness="same")(points, buffers)
            flat = F.cross_entropy(logits.flatten(0, 1), labels.repeat(count), reduction="none",
                                   label_smoothing=label_smoothing)
            return flat.view(count, -1).mean(dim=1)

        with rng_state.forked():
            return probe_along(losses_of if self.batched else loss_of, weights, grads, direction, self.multipliers,
                               batched=self.batched)


class RngState:
    """torch's global random state (CPU and the current CUDA device) at one moment."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)

    def forked(self):
        """A context that puts the random state back as it was on exit."""
        devices = [self.device] if self.device.type == "cuda" else []
        return torch.random.fork_rng(devices=devices)
