"""Directions in weight space for surfaces (Li et al., "Visualizing the Loss Landscape of Neural Nets", 2018).

- `random_direction` + `normalize_direction`: Gaussian, seeded, drawn on the CPU (the same on every
  device), then `filter` (each filter, i.e. each slice along the output axis of a conv weight and each row
  of a Linear weight, rescaled to the norm of the same filter of w; Li et al. Sec. 4), `layer` (the whole
  tensor) or `none`; 1-D tensors (biases, normalisation) get zero with `ignore="biasbn"`, else the weights;
- `pca_directions`: the first principal components of a trajectory minus w, centred as sklearn's PCA
  (Li et al. Sec. 7), and `project` to place the trajectory in the plane;
- `towards`: d = w_to - w (x = 1 is the other end), floating buffers interpolated too;
- `given_direction`: a direction the user supplies, as a state dict or one flat vector.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from landscape.engine.functional import Params, flatten, unflatten
from landscape.errors import UsageError

NORMS = ("filter", "layer", "none")
IGNORES = ("biasbn", "none")


def random_direction(params: Params, generator: torch.Generator) -> Params:
    """A Gaussian direction shaped like `params`, drawn on the CPU (the same on every device)."""
    return {n: torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.device) for n, p in params.items()}


def normalize_direction(direction: Params, weights: Params, norm: str, ignore: str) -> Params:
    """Li et al.'s normalisation: per filter (each slice along axis 0), per layer, or none (see module docstring)."""
    out = {}
    for name, d in direction.items():
        w = weights[name]
        if d.dim() <= 1:
            out[name] = torch.zeros_like(d) if ignore == "biasbn" else w.clone()
        elif norm == "filter":
            scale = w.flatten(1).norm(dim=1) / (d.flatten(1).norm(dim=1) + 1e-10)
            out[name] = d * scale.view(-1, *[1] * (d.dim() - 1))
        elif norm == "layer":
            out[name] = d * (w.norm() / (d.norm() + 1e-10))
        else:
            out[name] = d.clone()
    return out


def pca_directions(trajectory: list[Params], origin: Params, ignore: str,
                   count: int) -> tuple[list[Params], np.ndarray]:
    """The first `count` principal components of the snapshots minus `origin` (centred, as sklearn's PCA),
    1-D tensors zeroed with `ignore="biasbn"`; and the fraction of the variance each explains."""
    names = list(origin)
    rows = torch.stack([flatten({n: s[n] - origin[n] for n in names}, names) for s in trajectory])
    if ignore == "biasbn":
        mask = torch.cat([torch.full((origin[n].numel(),), float(origin[n].dim() > 1), dtype=torch.float64,
                                     device=rows.device) for n in names])
        rows = rows * mask
    centred = rows - rows.mean(dim=0, keepdim=True)
    gram = centred @ centred.T  # [K, K]: the SVD of a short, very wide matrix through its Gram matrix
    values, vectors = torch.linalg.eigh(gram)
    order = torch.argsort(values, descending=True)
    values, vectors = values[order].clamp(min=0), vectors[:, order]
    if values.shape[0] < count or values[count - 1] <= 1e-12 * max(float(values[0]), 1e-300):
        raise UsageError(f"the trajectory spans fewer than {count} direction(s): PCA directions need more snapshots "
                         f"(at least {count + 2} that differ; `landscape run --snapshot-every 1` saves one per epoch)")
    components = [(centred.T @ vectors[:, i]) / values[i].sqrt() for i in range(count)]
    explained = (values[:count] / values.sum()).cpu().numpy()
    return [unflatten(c.float(), origin) for c in components], explained


def project(points: list[Params], origin: Params, directions: list[Params]) -> np.ndarray:
    """Least-squares coordinates [K, dims] of each point minus `origin` in the span of `directions`."""
    names = list(origin)
    basis = torch.stack([flatten(d, names) for d in directions], dim=1)  # [P, dims]
    gram = basis.T @ basis
    coords = [torch.linalg.solve(gram, basis.T @ flatten({n: p[n] - origin[n] for n in names}, names))
              for p in points]
    return torch.stack(coords).cpu().numpy()


def towards(origin: Params, buffers: Params, end: Params, end_buffers: Params) -> tuple[Params, Params]:
    """d = end - origin for parameters and floating buffers (integer buffers stay): x = 1 is the other end."""
    direction = {n: end[n] - origin[n] for n in origin}
    if all(float(d.abs().max()) == 0 for d in direction.values()):
        raise UsageError("the end point of the interpolation is the centre itself: the direction is zero; choose "
                         "another end point")
    buffer_direction = {n: (end_buffers[n] - buffers[n]) if buffers[n].is_floating_point() and n in end_buffers
                        else torch.zeros_like(buffers[n]) for n in buffers}
    return direction, buffer_direction


def state_dict_of(target, model: nn.Module, device: torch.device, what: str) -> tuple[Params, Params]:
    """(parameters, buffers) of `target`, a module or a state dict shaped like `model`, on `device`."""
    if isinstance(target, nn.Module):
        state = dict(target.state_dict())
    elif isinstance(target, dict):
        state = target
    else:
        raise UsageError(f"{what} must be an nn.Module or a state dict, got {type(target).__name__}")
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    missing = [n for n in params if n not in state]
    wrong = [n for n, p in params.items() if n in state and tuple(torch.as_tensor(state[n]).shape) != tuple(p.shape)]
    if missing or wrong:
        detail = (f"missing {', '.join(missing[:3])}" if missing else "") + \
                 ("; " if missing and wrong else "") + (f"other shapes for {', '.join(wrong[:3])}" if wrong else "")
        raise UsageError(f"{what} does not fit the model ({detail}): give weights of the same architecture")
    to = lambda v, like: torch.as_tensor(v).detach().to(device=device, dtype=like.dtype)  # noqa: E731
    return ({n: to(state[n], p) for n, p in params.items()},
            {n: to(state[n], b) for n, b in buffers.items() if n in state})


def given_direction(direction, origin: Params, what: str) -> Params:
    """A user's direction: a state dict (or module) over the parameters, or one flat vector of all of them in
    `named_parameters` order; names it lacks get zero."""
    if isinstance(direction, nn.Module):
        direction = dict(direction.named_parameters())
    if isinstance(direction, torch.Tensor):
        size = sum(p.numel() for p in origin.values())
        if direction.dim() != 1 or direction.numel() != size:
            raise UsageError(f"{what} is a tensor of shape {tuple(direction.shape)}: give one flat vector of the "
                             f"{size:,} parameters, or a state dict")
        return unflatten(direction.detach().to(next(iter(origin.values())).device), origin)
    if not isinstance(direction, dict):
        raise UsageError(f"{what} must be a state dict, a module or a flat tensor, got {type(direction).__name__}")
    unknown = [n for n in direction if n not in origin]
    out = {}
    for name, value in origin.items():
        if name not in direction:
            out[name] = torch.zeros_like(value)
            continue
        tensor = torch.as_tensor(direction[name]).detach()
        if tuple(tensor.shape) != tuple(value.shape):
            raise UsageError(f"{what}: {name} has shape {tuple(tensor.shape)}, the parameter {tuple(value.shape)}")
        out[name] = tensor.to(device=value.device, dtype=value.dtype)
    if unknown and len(unknown) == len(direction):
        raise UsageError(f"{what} names no parameter of the model (e.g. {unknown[0]}): give a state dict of its "
                         f"parameters")
    if all(float(v.abs().max()) == 0 for v in out.values()):
        raise UsageError(f"{what} is zero: a surface along it is flat")
    return out
