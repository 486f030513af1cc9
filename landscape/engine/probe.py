"""Santurkar et al.'s probes (NeurIPS 2018, Sec. 3.1, Fig. 4): loss and gradient along the step.

At a probed step of one run, with w the weights before the step, g = grad L_B(w) on the step's
batch B and d the probe direction (the update the optimizer takes, u = w_{t+1} - w, or -lr * g),
the probe visits p_j = w + m_j d for each multiplier m_j and records
- the loss L_B(p_j) (loss variation),
- d_j = ||grad L_B(p_j) - g||_2 (gradient predictiveness),
- s_j = ||p_j - w||_2 = m_j ||d||, and beta = max_j d_j / s_j (effective beta-smoothness).
`probe_along` does the maths on any loss of a parameter dict. `ModelProbe` wraps a model of
`landscape run` so the probe leaves training untouched: BatchNorm running statistics live in throw-away
copies and the random stream (dropout) is replayed from the training forward's state, then restored.
`probe_step` (and the API `probe`) probes any model along a direction the caller gives, on a stateless
copy: dropout off, BatchNorm on the batch's statistics (`bn="train"`) or the running ones (`"eval"`),
the gradient at w recomputed with that same function.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from landscape.engine.batches import Objective
from landscape.engine.devices import with_threads
from landscape.engine.functional import FunctionalModel, module_buffers
from landscape.errors import UsageError
from landscape.options import PROBE_DIRECTIONS

Params = dict[str, torch.Tensor]


@dataclass
class ProbeResult:
    """One probe of one run: loss, grad_dist, distance [J] and beta (a 0-d tensor), on the device."""

    loss: torch.Tensor
    grad_dist: torch.Tensor
    distance: torch.Tensor
    beta: torch.Tensor
    grad_norm: torch.Tensor

    def numpy(self) -> "ProbeResult":
        """The same result as numpy arrays (beta and grad_norm as floats), copied to the host."""
        return ProbeResult(*(v.detach().cpu().numpy() if v.dim() else float(v) for v in
                             (self.loss, self.grad_dist, self.distance, self.beta, self.grad_norm)))


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


DEFAULT_MULTIPLIERS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)


def probe_step(module: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], batch,
               direction: dict[str, torch.Tensor] | str, multipliers=DEFAULT_MULTIPLIERS,
               objective: Objective | None = None, lr: float | None = None) -> ProbeResult:
    """Santurkar's probe at weights `params` on one batch of a prepared (stateless) module; on the device.

    `direction`: a dict of tensors over (some of) the parameters, or "gradient" for -lr * grad."""
    objective = objective or Objective()
    kept = module_buffers(module, buffers)

    def loss_of(point: Params) -> torch.Tensor:
        fresh = {n: b.clone() for n, b in kept.items()}  # running statistics: throw-away copies
        return objective.loss_only(FunctionalModel(module, {**params, **point}, fresh), batch)

    if isinstance(direction, str):
        if direction != "gradient" or lr is None or not lr > 0:
            raise UsageError("direction must be a dict of tensors (e.g. the optimizer's update, after - before) or "
                             "'gradient' with lr > 0 given")
    else:
        unknown = [n for n in direction if n not in params]
        if unknown:
            raise UsageError(f"the direction names {unknown[0]!r}, which is not a parameter of the model")
    names = [n for n in params if isinstance(direction, str) or n in direction]
    weights = {n: params[n].detach() for n in names}
    point = {n: w.clone().requires_grad_(True) for n, w in weights.items()}
    grad = dict(zip(names, torch.autograd.grad(loss_of(point), list(point.values()), allow_unused=True)))
    grad = {n: g if g is not None else torch.zeros_like(weights[n]) for n, g in grad.items()}
    if isinstance(direction, str):
        steps = {n: -lr * g for n, g in grad.items()}
    else:
        steps = {n: torch.as_tensor(direction[n]).detach().to(weights[n]) for n in names}
        if any(tuple(steps[n].shape) != tuple(weights[n].shape) for n in names):
            bad = next(n for n in names if tuple(steps[n].shape) != tuple(weights[n].shape))
            raise UsageError(f"the direction's {bad} has shape {tuple(steps[bad].shape)}, the parameter "
                             f"{tuple(weights[bad].shape)}")
    if all(float(d.abs().max()) == 0 for d in steps.values()):
        raise UsageError("the probe direction is zero: there is no step to probe along")
    return probe_along(loss_of, weights, grad, steps, tuple(float(m) for m in multipliers))


@with_threads
def probe(model: nn.Module, batch, direction, multipliers=DEFAULT_MULTIPLIERS, *, loss=None, closure=None,
          bn: str = "train", lr: float | None = None, device=None, threads: int | None = None) -> ProbeResult:
    """Santurkar et al.'s probe of one step of `model` on `batch`, along `direction` (a dict of tensors, e.g. the
    optimizer's update `after - before`, or "gradient" with `lr`): loss, gradient distance and distance [J] at
    w + m_j d, beta and the gradient norm, as numpy. Dropout off; `bn` train (batch statistics) or eval. The
    model is never changed."""
    from landscape.engine.batches import check_pair, to_device
    from landscape.engine.devices import resolve_device
    from landscape.engine.functional import check_finite, check_module, prepared_module, state_of
    from landscape.options import choose

    check_module(model)
    choose("bn", bn, ("train", "eval"))
    if not multipliers or any(not (0 < float(m) < float("inf")) for m in multipliers):
        raise UsageError("multipliers must be positive finite numbers, e.g. (0.5, 1, 2)")
    device = resolve_device(device, "device", default=next(model.parameters()).device)
    objective = Objective(loss=loss, closure=closure, metrics={})
    check_pair(batch, objective)
    params, buffers = state_of(model, device)
    check_finite(params, "the model")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        result = probe_step(prepared_module(model, bn), params, buffers, to_device(batch, device), direction,
                            multipliers, objective, lr)
    return result.numpy()
