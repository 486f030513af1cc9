"""Flatness and sharpness measures of one model, the numbers a generalization study correlates with accuracy.

`measures(model, data, ...)` computes, on the same fixed images (read once) and the same loss as every other
measurement (BatchNorm on batch statistics by default, dropout off, the model never changed):
- `hessian_top`, `hessian_trace`, `ggn_top`, `ggn_trace`: the top eigenvalue and the trace of the Hessian or the
  Gauss-Newton matrix (`engine.curvature`: the trace by `trace_samples` products of Hutchinson deflated by the
  top eigenvalue's Lanczos basis); the group `hessian_top` computes the top eigenvalue alone;
- `sharpness_worst_rho<r>`: max over ||delta|| <= r of L(w + delta) - L(w), by projected normalised gradient ascent
  (at most `steps` steps of length r, the first start along the top Hessian direction by at most `start_steps`
  Lanczos products, further `restarts` from random points of the sphere; the highest loss seen kept): a lower bound of the
  maximum, exact for a quadratic when the ascent has converged to its top eigenvector;
  `sharpness_worst_adaptive_rho<r>`: the same over delta = |w| * u, ||u|| <= r (Kwon et al. 2021);
  with `m`, the worst case is taken on every batch of m images and averaged (m-sharpness, Foret et al. 2021);
- `sharpness_average_rho<r>`: E[L(w + delta)] - L(w), delta ~ N(0, r^2 I), over `samples` draws (with its standard
  error); `sharpness_average_adaptive_rho<r>`: delta = |w| * N(0, r^2 I);
- `flatness_li_r<r>`: the mean over `directions` filter-normalised random directions d (Li et al. 2018) of
  L(w + r d) - L(w), with its standard error;
- `train_loss`, `train_acc` and, with `test_data`, `test_loss`, `test_acc`, `gap_loss` (test minus train loss) and
  `gap_acc` (train minus test accuracy), all with BatchNorm's running statistics (the model's own predictions);
- `param_norm` (the l2 norm of all parameters) and, with `init`, `distance_from_init`;
- `pacbayes_flatness` (1 / sigma^2, with `pacbayes_sigma`) and `pacbayes_mag_flatness`: the largest Gaussian noise
  whose expected training-error rise stays within `bound` (Jiang et al. 2019), plain and magnitude-aware;
  `jiang_sharpness` (1 / alpha^2, with `jiang_alpha`) and `jiang_mag_sharpness`: the largest box whose worst case
  stays within `bound` (`engine.bounds`);
- `log_spectral_product`, `spectral_sum` and `path_norm` (`engine.norms`);
- `grad_noise_scale` (B_simple of McCandlish et al. 2018, with `grad_noise_trace` and `grad_norm_sq`;
  `engine.noise_scale`);
- `barrier`, `barrier_aligned` (`ablate measure` only): the loss barrier and accuracy drop on the line between
  pairs of a cell's models, and after weight matching (`ablations.pairs`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from landscape.engine.batches import BatchSet, Objective, batch_set
from landscape.engine.bounds import pacbayes_sigma, values_at, worst_case_alpha
from landscape.engine.devices import with_threads
from landscape.engine.directions import normalize_direction, random_direction
from landscape.engine.functional import (FunctionalModel, Params, check_finite, check_forward, check_module,
                                         evaluate_points, expand_points, flatten, module_buffers, prepared_module,
                                         state_like, state_of, unflatten)
from landscape.engine.noise_scale import gradient_noise_scale
from landscape.engine.norms import path_norm, spectral_measures
from landscape.errors import UsageError
from landscape.options import check_seed, choose, in_range, positive

MEASURE_GROUPS = ("hessian", "ggn", "hessian_top", "worst", "worst_adaptive", "average", "average_adaptive", "li", "gap", "norms",
                  "pacbayes", "pacbayes_mag", "jiang", "jiang_mag", "spectral", "path_norm", "noise_scale",
                  "barrier", "barrier_aligned")  # between two models: `ablate measure` only (ablations.pairs)
DEFAULT_MEASURES = ("hessian", "worst", "worst_adaptive", "average", "average_adaptive", "li", "gap", "norms")


@dataclass
class MeasureOptions:
    """What to measure and how (the keyword arguments of `measures`, the options of `ablate measure`)."""

    measures: tuple[str, ...] = DEFAULT_MEASURES
    rho: tuple[float, ...] = (0.05,)
    radius: tuple[float, ...] = (0.1,)
    steps: int = 10
    restarts: int = 1
    samples: int = 10
    directions: int = 5
    m: int = 0  # 0: the worst case on all images at once
    trace_samples: int = 10  # after the top eigenvalue's Lanczos, Hutchinson deflated by its basis (`trace_after`)
    max_steps: int = 80
    bn: str = "train"
    seed: int = 0
    bound: float = 0.1  # the training-error rise the perturbation bounds (pacbayes, jiang) allow
    draws: int = 10  # Monte Carlo draws of the PAC-Bayes expectation (antithetic pairs)
    tolerance: float = 0.05  # relative width of the bracket at which the bound searches stop
    mag_eps: float = 1e-3  # the magnitude-aware bounds' additive noise (Jiang et al.)
    start_steps: int = 20  # worst case: Lanczos products for its start along the top Hessian direction (0: random)

    def validate(self) -> "MeasureOptions":
        if isinstance(self.measures, str):
            self.measures = tuple(m.strip() for m in self.measures.split(",") if m.strip())
        if not self.measures:
            raise UsageError(f"measures is empty: name one or more of {', '.join(MEASURE_GROUPS)}")
        for name in self.measures:
            choose("measures", name, MEASURE_GROUPS)
        for option in ("rho", "radius"):
            values = getattr(self, option)
            values = (values,) if isinstance(values, (int, float)) else tuple(values)
            if not values or any(not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0) for v in values):
                raise UsageError(f"{option} {values}: give positive finite numbers, e.g. {option}=(0.01, 0.05)")
            setattr(self, option, tuple(float(v) for v in values))
        for option in ("steps", "restarts", "samples", "directions", "trace_samples", "max_steps", "draws"):
            positive(option, getattr(self, option))
        if isinstance(self.start_steps, bool) or not isinstance(self.start_steps, int) or self.start_steps < 0:
            raise UsageError(f"start_steps {self.start_steps!r}: give a whole number, 0 for a random start")
        for option in ("bound", "tolerance", "mag_eps"):
            in_range(option, getattr(self, option), 0, math.inf, low_open=True)
        if self.m < 0:
            raise UsageError(f"m {self.m}: give the images per batch of m-sharpness, or 0 for all at once")
        choose("bn", self.bn, ("train", "eval"))
        check_seed("seed", self.seed)
        return self


@dataclass
class Measures:
    """Named scalars of one model (numpy floats), the standard errors of the stochastic ones, and attributes."""

    values: dict[str, float]
    stderr: dict[str, float] = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)

    def __getitem__(self, name: str) -> float:
        return self.values[name]

    def save(self, path) -> "object":
        """Write a measures file of this one model (see files/measures_file.py); return its path."""
        from pathlib import Path

        from landscape.files.measures_file import MeasuresTable, write_measures

        table = MeasuresTable(Path(path), dict(self.attrs), ["model"], {"model": {}})
        table.put("model", self, {})
        return write_measures(table)


class LossAt:
    """The mean loss of a model at given parameters over fixed batches: the value, and its gradient."""

    def __init__(self, module: nn.Module, params: Params, buffers: Params, batches: BatchSet, objective: Objective):
        self.module, self.params, self.buffers = module, params, buffers
        self.batches, self.objective = batches, objective
        self.evaluations = 0

    def value(self, params: Params | None = None, batches: BatchSet | None = None) -> torch.Tensor:
        point = {n: p[None] for n, p in (params or self.params).items()}
        batches = batches or self.batches
        self.evaluations += 1
        return evaluate_points(self.module, point, expand_points(self.buffers, 1), batches, self.objective)["loss"][0]

    def gradient(self, params: Params, batches: BatchSet | None = None) -> tuple[torch.Tensor, Params]:
        """The mean loss (float64) and its gradient at `params`."""
        values, grads = self.values_and_gradient(params, batches, metrics=False)
        return values["loss"], grads

    def values_and_gradient(self, params: Params, batches: BatchSet | None = None,
                            metrics: bool = True) -> tuple[dict[str, torch.Tensor], Params]:
        """The mean loss and, with `metrics`, the objective's metrics (e.g. acc) of the same forward pass (float64),
        and the loss's gradient at `params`."""
        batches = batches or self.batches
        leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        totals: dict[str, torch.Tensor] = {}
        grads = {n: torch.zeros_like(p) for n, p in params.items()}
        for share, batch in zip(batches.shares, batches):
            forward = FunctionalModel(self.module, leaves, self.buffers)
            values = self.objective.values(forward, batch) if metrics else \
                {"loss": self.objective.loss_only(forward, batch)}
            for n, g in zip(leaves, torch.autograd.grad(values["loss"], list(leaves.values()), allow_unused=True)):
                if g is not None:
                    grads[n] += share * g
            for name, value in values.items():
                totals[name] = totals.get(name, 0.0) + share * value.detach().double()
        self.evaluations += 1
        return totals, grads


def norm_of(tensors: Params) -> torch.Tensor:
    return torch.sqrt(sum(t.double().pow(2).sum() for t in tensors.values()))


def scaled_point(params: Params, u: Params, scale: Params | None) -> Params:
    """w + s * u (s elementwise, or 1)."""
    return {n: p + (scale[n] * u[n] if scale is not None else u[n]) for n, p in params.items()}


class ScaledOperator:
    """v -> S M S v for a curvature operator M and a diagonal S (the adaptive measures' coordinates u = w / s)."""

    def __init__(self, operator, scale: torch.Tensor):
        self.operator, self.scale = operator, scale
        self.size, self.device = operator.size, operator.device

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return self.scale * self.operator(self.scale * v)


def top_direction(loss: LossAt, scale: Params | None, steps: int, seed: int,
                  batches: BatchSet | None = None) -> Params:
    """The top eigenvector of the Hessian at w (of S H S with a scale), unit length, by Lanczos (at most `steps`
    products, stopped at convergence), shaped like the parameters."""
    from landscape.engine.curvature import top_eigenvalues
    from landscape.engine.operators import curvature_operator

    operator = curvature_operator("hessian", loss.module, loss.params, loss.buffers, batches or loss.batches,
                                  loss.objective)
    if scale is not None:
        operator = ScaledOperator(operator, flatten(scale, list(loss.params)).to(operator.device))
    eigen = top_eigenvalues(operator, 1, max_steps=steps, seed=seed, vectors=True)
    return unflatten(eigen.vectors[0], loss.params)


def worst_case(loss: LossAt, rho: float, scale: Params | None, steps: int, restarts: int,
               generator: torch.Generator, batches: BatchSet | None = None, start_steps: int = 0, seed: int = 0,
               tolerance: float = 1e-4, directions: dict | None = None) -> tuple[float, int]:
    """max over ||u|| <= rho of L(w + s * u) - L(w) (s = `scale`, elementwise, or 1) by projected normalised
    gradient ascent in u, and the ascent steps taken. The first start is rho times the top Hessian direction
    (`top_direction` by at most `start_steps` Lanczos products, when > 0; of its two signs the higher), which an
    ascent from a zero gradient at a minimum needs many steps to find; further restarts start at random points.
    An ascent stops after `steps` steps, or once a step raises the loss by less than `tolerance` (relative to the
    rise so far); the highest loss seen is kept: a lower bound of the maximum. `directions` caches the top direction
    by (scaled or not, batches), as it does not depend on rho."""
    base = float(loss.value(batches=batches))
    best, taken = -math.inf, 0
    params = loss.params
    for restart in range(restarts):
        if restart == 0 and start_steps:
            key = (scale is not None, id(batches))
            cache = directions if directions is not None else {}
            if key not in cache:
                cache[key] = top_direction(loss, scale, start_steps, seed, batches)
            v = cache[key]
            ends = [{n: sign * rho * t for n, t in v.items()} for sign in (1.0, -1.0)]
            u = max(ends, key=lambda end: float(loss.value(scaled_point(params, end, scale), batches)))
        else:
            u = random_direction(params, generator)
            u = {n: t * (rho / float(norm_of(u))) for n, t in u.items()}
        previous = -math.inf
        for _ in range(steps):
            total, grads = loss.gradient(scaled_point(params, u, scale), batches)
            taken += 1
            rise = float(total) - base
            best = max(best, rise)
            if abs(rise - previous) <= tolerance * max(abs(rise), 1e-12):
                break
            previous = rise
            if scale is not None:
                grads = {n: g * scale[n] for n, g in grads.items()}
            length = float(norm_of(grads))
            if length == 0.0:
                break
            u = {n: u[n] + rho * g / length for n, g in grads.items()}
            size = float(norm_of(u))
            if size > rho:
                u = {n: t * (rho / size) for n, t in u.items()}
        best = max(best, float(loss.value(scaled_point(params, u, scale), batches)) - base)
    return best, taken


def average_case(loss: LossAt, sigma: float, scale: Params | None, samples: int,
                 generator: torch.Generator) -> tuple[float, float]:
    """E[L(w + s * delta)] - L(w), delta ~ N(0, sigma^2 I), and the standard error of the mean of `samples` draws."""
    base = float(loss.value())
    rises = []
    for _ in range(samples):
        delta = random_direction(loss.params, generator)
        point = {n: p + sigma * (scale[n] * delta[n] if scale is not None else delta[n])
                 for n, p in loss.params.items()}
        rises.append(float(loss.value(point)) - base)
    return mean_stderr(rises)


def mean_stderr(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1) / math.sqrt(len(array))) if len(array) > 1 else float("nan")


def li_flatness(loss: LossAt, radius: float, directions: int, generator: torch.Generator) -> tuple[float, float]:
    """Mean over filter-normalised random directions d of L(w + r d) - L(w), and its standard error."""
    base = float(loss.value())
    rises = []
    for _ in range(directions):
        d = normalize_direction(random_direction(loss.params, generator), loss.params, "filter", "biasbn")
        rises.append(float(loss.value({n: p + radius * d[n] for n, p in loss.params.items()})) - base)
    return mean_stderr(rises)


TRACE_METHOD = "krylov"  # the trace after the top eigenvalue: Hutchinson deflated by its Lanczos basis
SEARCH_STEPS = 30  # the bound searches' bisection steps at most (engine.bounds), for the work estimate


def planned_evaluations(options: MeasureOptions, images: int) -> int:
    """At most how many loss or gradient evaluations of the images `options` asks for (a curvature product counts
    as two): what the budget check multiplies by the time of one."""
    radii, parts = len(options.rho), (-(-images // options.m) if options.m else 1)
    per_group = {
        "hessian": 2 * (options.max_steps + options.trace_samples), "hessian_top": 2 * options.max_steps,
        "worst": radii * parts * (options.restarts * (options.steps + 2) + 2) + 2 * options.start_steps,
        "average": radii * options.samples, "li": len(options.radius) * options.directions, "gap": 4,
        "pacbayes": SEARCH_STEPS * options.draws, "jiang": SEARCH_STEPS * options.restarts * (options.steps + 2),
        "noise_scale": images,
    }
    aliases = {"ggn": "hessian", "worst_adaptive": "worst", "average_adaptive": "average",
               "pacbayes_mag": "pacbayes", "jiang_mag": "jiang"}
    return sum(per_group.get(aliases.get(group, group), 1) for group in options.measures)


def m_batches(batches: BatchSet, m: int) -> list[BatchSet]:
    """The images cut into batches of m (the last may be smaller), each its own set."""
    out = []
    for inputs, targets in batches:
        for start in range(0, len(targets), m):
            out.append(BatchSet([(inputs[start:start + m], targets[start:start + m])]))
    return out


def compute_measures(model: nn.Module, params: Params, buffers: Params, batches: BatchSet, objective: Objective,
                     options: MeasureOptions, test_batches: BatchSet | None = None, init: Params | None = None,
                     on_measure: Callable[[str], None] | None = None, budget_hours: float | None = None) -> Measures:
    """Every measure asked for, of the model at `params` (see the module docstring). With `budget_hours`, one
    gradient evaluation is timed first and the work refused (OverBudget) when `planned_evaluations` of them
    would take longer."""
    from landscape.engine.curvature import top_eigenvalues, trace_after
    from landscape.engine.operators import curvature_operator

    started = time.perf_counter()
    generator = torch.Generator().manual_seed(options.seed)
    module = prepared_module(model, options.bn)
    kept = module_buffers(module, buffers)
    for checked, what in ((batches, "data"), (test_batches, "test_data")):
        if checked is not None:  # one line when the model cannot take the data, not a torch error from a measure
            check_forward(module, params, kept, next(iter(checked)), objective, f"the model on {what}")
    loss = LossAt(module, params, kept, batches, Objective(objective.loss, objective.closure, {}))
    if budget_hours is not None:
        from landscape.progress import check_budget

        timed = time.perf_counter()
        loss.gradient(params)
        planned = planned_evaluations(options, batches.samples)
        check_budget("measure", (time.perf_counter() - timed) * planned,
                     f"about {planned:,} loss or gradient evaluations of {batches.samples:,} images", budget_hours)
    values: dict[str, float] = {}
    stderr: dict[str, float] = {}
    products = {}
    attrs: dict = {}
    directions: dict = {}  # the worst cases' start directions, shared by their radii
    for group in options.measures:
        if group in ("hessian", "ggn", "hessian_top"):
            kind = group.removesuffix("_top")
            operator = curvature_operator(kind, module, params, kept, batches, objective)
            eigen = top_eigenvalues(operator, 1, max_steps=options.max_steps, seed=options.seed,
                                    keep_basis=group != "hessian_top")
            values[f"{kind}_top"] = float(eigen.values[0])
            if group != "hessian_top":  # the top eigenvalue alone: no trace
                values[f"{kind}_trace"], stderr[f"{kind}_trace"] = trace_after(eigen, operator, options.trace_samples,
                                                                               TRACE_METHOD, options.seed)
            del eigen
            products[group] = operator.products
        elif group in ("worst", "worst_adaptive"):
            scale = {n: p.abs() for n, p in params.items()} if group == "worst_adaptive" else None
            for rho in options.rho:
                name = f"sharpness_{group}_rho{rho:g}"
                ascent = dict(start_steps=options.start_steps, seed=options.seed, directions=directions)
                if options.m:
                    parts = [worst_case(loss, rho, scale, options.steps, options.restarts, generator, part, **ascent)
                             for part in m_batches(batches, options.m)]
                    values[name], stderr[name] = mean_stderr([value for value, _ in parts])
                    attrs[f"{name}_steps_taken"] = int(sum(taken for _, taken in parts))
                else:
                    values[name], attrs[f"{name}_steps_taken"] = worst_case(loss, rho, scale, options.steps,
                                                                            options.restarts, generator, **ascent)
        elif group in ("average", "average_adaptive"):
            scale = {n: p.abs() for n, p in params.items()} if group == "average_adaptive" else None
            for rho in options.rho:
                name = f"sharpness_{group}_rho{rho:g}"
                values[name], stderr[name] = average_case(loss, rho, scale, options.samples, generator)
        elif group == "li":
            for radius in options.radius:
                name = f"flatness_li_r{radius:g}"
                values[name], stderr[name] = li_flatness(loss, radius, options.directions, generator)
        elif group == "gap":
            evaluation = prepared_module(model, "eval")
            own = module_buffers(evaluation, buffers)
            train = values_at(evaluation, params, own, batches, objective)
            values.update({f"train_{k}": v for k, v in train.items()})
            if test_batches is not None:
                test = values_at(evaluation, params, own, test_batches, objective)
                values.update({f"test_{k}": v for k, v in test.items()})
                values["gap_loss"] = test["loss"] - train["loss"]
                if "acc" in train:
                    values["gap_acc"] = train["acc"] - test["acc"]
        elif group in ("pacbayes", "pacbayes_mag", "jiang", "jiang_mag"):
            values.update(bound_measures(group, module, params, kept, batches, objective, options, attrs))
        elif group == "spectral":
            values.update(spectral_measures(params))
        elif group == "path_norm":
            evaluation = prepared_module(model, "eval")
            values["path_norm"] = path_norm(evaluation, params, module_buffers(evaluation, buffers),
                                            first_inputs(batches))
        elif group == "noise_scale":
            evaluation = prepared_module(model, "eval")
            values.update(gradient_noise_scale(evaluation, params, module_buffers(evaluation, buffers), batches,
                                               Objective(objective.loss, objective.closure, {})))
        elif group in ("barrier", "barrier_aligned"):
            pass  # between two models: `ablations.pairs`
        elif group == "norms":
            values["param_norm"] = float(norm_of(params))
            if init is not None:
                values["distance_from_init"] = float(norm_of({n: params[n] - init[n] for n in params}))
        if on_measure is not None:
            on_measure(group)
    attrs = {"measures": ",".join(options.measures), "rho": ",".join(f"{r:g}" for r in options.rho),
             "radius": ",".join(f"{r:g}" for r in options.radius), "steps": options.steps,
             "restarts": options.restarts, "samples": options.samples, "directions": options.directions,
             "m": options.m, "bn": options.bn, "seed": options.seed, "images": batches.samples,
             "test_images": test_batches.samples if test_batches is not None else 0,
             "loss_evaluations": loss.evaluations, "seconds": time.perf_counter() - started,
             "bound": options.bound, "draws": options.draws, "tolerance": options.tolerance,
             "mag_eps": options.mag_eps, "start_steps": options.start_steps, "trace_samples": options.trace_samples,
             "trace_method": TRACE_METHOD, **attrs,
             **{f"{group}_products": count for group, count in products.items()}}
    return Measures(values, stderr, attrs)


def bound_measures(group: str, module: nn.Module, params: Params, buffers: Params, batches: BatchSet,
                   objective: Objective, options: MeasureOptions, attrs: dict) -> dict[str, float]:
    """The PAC-Bayes or worst-case perturbation bound of `group` (engine.bounds), as 1/scale^2 and the scale; what
    the deviation was measured on and the search's cost go into `attrs`."""
    magnitude = group.endswith("_mag")
    plain = Objective(objective.loss, objective.closure, None)
    common = dict(bound=options.bound, tolerance=options.tolerance, seed=options.seed, magnitude=magnitude,
                  eps=options.mag_eps)
    if group.startswith("pacbayes"):
        found = pacbayes_sigma(module, params, buffers, batches, plain, draws=options.draws, **common)
        scale_name, value_name = f"{group}_sigma", f"{group}_flatness"
    else:
        found = worst_case_alpha(module, params, buffers, batches, plain,
                                 LossAt(module, params, buffers, batches, plain).values_and_gradient,
                                 steps=options.steps, **common)
        scale_name, value_name = f"{group}_alpha", f"{group}_sharpness"
    attrs.update({f"{group}_deviation": found.deviation, f"{group}_evaluations": found.evaluations,
                  f"{group}_passes": found.passes})
    # capped: the search ended at the end of its range, so the scale is a limit, not the value (findings flag it)
    return {value_name: 1.0 / found.scale ** 2, scale_name: found.scale, f"{group}_capped": float(found.capped)}


def first_inputs(batches: BatchSet):
    """The inputs of the first batch (what an all-ones input is shaped like)."""
    batch = next(iter(batches))
    return batch[0] if isinstance(batch, (tuple, list)) else batch


@with_threads
def measures(model: nn.Module, data, *, test_data=None, loss=None, closure=None, init=None,
             measures: tuple[str, ...] | str = DEFAULT_MEASURES, rho=(0.05,), radius=(0.1,), steps: int = 10,
             restarts: int = 1, samples: int = 10, directions: int = 5, m: int = 0, trace_samples: int = 10,
             max_steps: int = 80, bn: str = "train", seed: int = 0, bound: float = 0.1, draws: int = 10,
             tolerance: float = 0.05, mag_eps: float = 1e-3, start_steps: int = 20, images: int | None = None,
             batch_size: int | None = None, device=None, threads: int | None = None) -> Measures:
    """Flatness and sharpness measures of `model` on `data` (see the module docstring): a `Measures` record of
    named scalars (`.values`, `.stderr`, `.save(path)`). `init`: the initial weights (a module or a state dict)
    for `distance_from_init`; `test_data` for the generalization gap. The model is never changed."""
    from landscape.engine.devices import resolve_device

    check_module(model)
    if {"barrier", "barrier_aligned"} & set(measures.split(",") if isinstance(measures, str) else measures):
        raise UsageError("the barrier measure is between two models: use `landscape ablate measure` (cells with two "
                         "seeds or more) or landscape.connect(model_a, model_b, data)")
    options = MeasureOptions(measures, rho, radius, steps, restarts, samples, directions, m, trace_samples,
                             max_steps, bn, seed, bound, draws, tolerance, mag_eps, start_steps).validate()
    device = resolve_device(device, "device", default=next(model.parameters()).device)
    objective = Objective(loss=loss, closure=closure)
    params, buffers = state_of(model, device)
    check_finite(params, "the model")
    batches = batch_set(data, device=device, objective=objective, images=images, batch_size=batch_size)
    test_batches = batch_set(test_data, device=device, objective=objective, images=images, batch_size=batch_size,
                             what="test_data") if test_data is not None else None
    start = None
    if init is not None:
        start = {n: v.to(device) for n, v in state_like(init, model, "init")[0].items()}
    result = compute_measures(model, params, buffers, batches, objective, options, test_batches, start)
    result.attrs.update({"source": "python", "model": type(model).__name__, "device": str(device),
                         "torch_version": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return result
