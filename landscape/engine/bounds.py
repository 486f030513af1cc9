"""Perturbation bounds: the largest perturbation a model tolerates before its training error rises by a bound
(Jiang et al. 2019, "Fantastic Generalization Measures", sec. 5 and appendix C; Keskar et al. 2017).

- PAC-Bayes flatness: the largest sigma with E_u[err(w + u)] - err(w) <= bound, u ~ N(0, sigma^2 I), reported as
  1 / sigma^2; magnitude-aware: u_i ~ N(0, sigma^2 w_i^2 + eps^2). The expectation is a Monte Carlo mean over `draws`
  antithetic draws (z and -z), the same draws at every sigma (so the search sees one smooth curve).
- Worst-case ("sharpness" in Jiang et al.): the largest alpha with max_{|u_i| <= alpha} err(w + u) - err(w) <= bound,
  the maximum taken over the points of a projected sign-gradient ascent on the loss (`steps` steps from a random
  point of the box, the same start at every alpha; each gradient's forward pass gives its point's error too);
  magnitude-aware: |u_i| <= alpha |w_i| + eps. Reported as 1 / alpha^2.

err is the training error when the objective has an accuracy (classification), else the mean loss; the search
brackets the scale by factors of 4 in [1e-8, 1e4], then bisects in log scale until the bracket is within
`tolerance` (relative). Each step of the search only asks whether the bound is exceeded, and stops its work as soon
as that is settled: the worst case at the first point of the ascent above the bound, the PAC-Bayes mean once the
draws so far put it above the bound whatever the rest give (no draw's error rise is below -err(w)), which leaves
its answer what all draws would give. The model is never changed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from landscape.engine.batches import BatchSet, Objective
from landscape.engine.functional import Params, evaluate_points, expand_points

SMALLEST, LARGEST = 1e-8, 1e4  # the scales a search may return
# Where each search starts (plain, magnitude-aware): about the scales found on trained CIFAR networks. Any start
# brackets the same answer (within the tolerance); a near one saves bracketing steps.
PACBAYES_START, WORST_CASE_START = (1e-2, 1e-1), (1e-3, 1e-2)


@dataclass
class Bound:
    """The result of one search: the largest scale within the bound, what it was measured on, its cost."""

    scale: float
    deviation: str  # "error" or "loss"
    evaluations: int  # steps of the search (each asks whether the bound is exceeded at one scale)
    passes: int  # forward passes and gradients over the images that the search took
    capped: bool  # the deviation stayed below the bound up to the largest scale searched (or above it down to the
    # smallest): the scale is then that end


def values_at(module: nn.Module, params: Params, buffers: Params, batches: BatchSet,
              objective: Objective) -> dict[str, float]:
    """The objective's loss and metrics (e.g. acc) of one point over all batches, as floats."""
    values = evaluate_points(module, {n: p[None] for n, p in params.items()}, expand_points(buffers, 1), batches,
                             objective)
    return {name: float(value[0]) for name, value in values.items()}


def deviation_of(values: dict[str, float], base: dict[str, float]) -> float:
    """The rise of the training error (1 - accuracy) from `base`, or of the loss when there is no accuracy."""
    if "acc" in base:
        return base["acc"] - values["acc"]
    return values["loss"] - base["loss"]


def lowest_deviation(base: dict[str, float]) -> float:
    """The smallest rise any point can have: -err(w) for the error (no error is below 0); a loss has no floor."""
    return base["acc"] - 1.0 if "acc" in base else -math.inf


def largest_within(exceeds: Callable[[float], bool], tolerance: float, start: float) -> tuple[float, int, bool]:
    """The largest scale s at which `exceeds(s)` (the deviation is above the bound, taken as rising with s) is
    false, searched from `start`: (s, evaluations, capped)."""
    low, high, scale, calls = None, None, start, 0
    while low is None or high is None:
        calls += 1
        if not exceeds(scale):
            low = scale
            if scale >= LARGEST:
                return LARGEST, calls, True
            scale = min(scale * 4, LARGEST)
        else:
            high = scale
            if scale <= SMALLEST:
                return SMALLEST, calls, True
            scale = max(scale / 4, SMALLEST)
    while high / low > 1 + tolerance:
        middle = math.sqrt(low * high)
        calls += 1
        if exceeds(middle):
            high = middle
        else:
            low = middle
    return math.sqrt(low * high), calls, False


def noise_std(params: Params, magnitude: bool, eps: float) -> Callable[[float], Params]:
    """sigma -> the per-entry standard deviation of the noise: sigma, or sqrt(sigma^2 w^2 + eps^2)."""
    if not magnitude:
        return lambda sigma: {n: torch.full_like(p, sigma) for n, p in params.items()}
    return lambda sigma: {n: torch.sqrt(sigma ** 2 * p.double() ** 2 + eps ** 2).to(p.dtype) for n, p in params.items()}


def pacbayes_sigma(module: nn.Module, params: Params, buffers: Params, batches: BatchSet, objective: Objective, *,
                   bound: float, draws: int, tolerance: float, seed: int, magnitude: bool = False,
                   eps: float = 1e-3) -> Bound:
    """The largest sigma whose expected deviation under Gaussian noise stays within `bound` (module docstring)."""
    base = values_at(module, params, buffers, batches, objective)
    spread, lowest = noise_std(params, magnitude, eps), lowest_deviation(base)
    pairs = max(1, (draws + 1) // 2)
    passes = 1

    def exceeds(sigma: float) -> bool:
        nonlocal passes
        generator = torch.Generator().manual_seed(seed)  # the same draws at every sigma
        std = spread(sigma)
        total = 0.0
        for pair in range(pairs):
            z = {n: torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.device)
                 for n, p in params.items()}
            for sign in (1.0, -1.0):
                point = {n: p + sign * std[n] * z[n] for n, p in params.items()}
                total += deviation_of(values_at(module, point, buffers, batches, objective), base)
                passes += 1
            left = 2 * (pairs - pair - 1)
            if left and (total + left * lowest) / (2 * pairs) > bound:
                return True  # above the bound whatever the remaining draws give
        return total / (2 * pairs) > bound

    scale, calls, capped = largest_within(exceeds, tolerance, PACBAYES_START[magnitude])
    return Bound(scale, "error" if "acc" in base else "loss", calls, passes, capped)


def worst_case_alpha(module: nn.Module, params: Params, buffers: Params, batches: BatchSet, objective: Objective,
                     ascent: Callable[[Params], tuple[dict, Params]], *, bound: float, steps: int, tolerance: float,
                     seed: int, magnitude: bool = False, eps: float = 1e-3) -> Bound:
    """The largest box half-width alpha whose worst case (by ascent on the loss) stays within `bound`. `ascent(point)`:
    the objective's values at `point` (loss and accuracy) and the loss's gradient, from one pass."""
    base = values_at(module, params, buffers, batches, objective)
    passes = 1

    def deviation_at(u: Params) -> float:
        nonlocal passes
        passes += 1
        return deviation_of(values_at(module, {n: p + u[n] for n, p in params.items()}, buffers, batches, objective),
                            base)

    def exceeds(alpha: float) -> bool:
        nonlocal passes
        radius = {n: alpha * p.abs() + eps if magnitude else torch.full_like(p, alpha) for n, p in params.items()}
        generator = torch.Generator().manual_seed(seed)  # the same start at every alpha
        u = {n: (2 * torch.rand(p.shape, generator=generator, dtype=torch.float32).to(p.device) - 1) * radius[n]
             for n, p in params.items()}
        step = 2.5 / steps  # of the radius: PGD's usual step, enough to cross the box
        for _ in range(steps):
            values, grads = ascent({n: p + u[n] for n, p in params.items()})
            passes += 1
            if deviation_of({name: float(value) for name, value in values.items()}, base) > bound:
                return True  # a point of the box already exceeds the bound: so does its worst case
            u = {n: torch.maximum(torch.minimum(u[n] + step * radius[n] * torch.sign(grads[n]), radius[n]), -radius[n])
                 for n in params}
        return deviation_at(u) > bound

    scale, calls, capped = largest_within(exceeds, tolerance, WORST_CASE_START[magnitude])
    return Bound(scale, "error" if "acc" in base else "loss", calls, passes, capped)
