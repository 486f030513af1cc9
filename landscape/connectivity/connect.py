"""Mode connectivity between two models of one architecture: loss and metrics along paths, and the barriers.

`connect(model_a, model_b, data, ...)` evaluates the line from A to B at `points` values of t; with
`align="weights"` it first permutes B's hidden units to match A (`connectivity.matching`; the aligned B computes
B's function) and evaluates the line to the aligned B too; with `curve="bezier"|"polychain"` it trains the bend of
that curve (`connectivity.paths`) between A and the (aligned) B and evaluates it. Each path on the training data
and, if given, the test data, through the shared evaluation (`engine.functional.evaluate_points`).

The barrier is Frankle et al.'s: max over t of L(t) - ((1 - t) L(0) + t L(1)), and for each metric (accuracy) the
largest drop below the interpolation of its end values. BatchNorm: interpolated weights do not fit either end's
running statistics, so `bn="recompute"` (the default for models with BatchNorm) re-estimates them at every point
from `bn_images` training images (Garipov et al.'s update_bn); `eval` interpolates the two ends' statistics;
`train` normalises with each batch's own. The models are never changed.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from landscape.connectivity.matching import Matching, weight_matching
from landscape.connectivity.paths import CURVES, on_curve, on_line, train_bend
from landscape.connectivity.permutations import apply_permutation, permutation_spec
from landscape.engine.batches import BatchSet, Objective, batch_set
from landscape.engine.devices import with_threads
from landscape.engine.functional import (Params, check_finite, check_forward, check_module, evaluate_points,
                                         expand_points, module_buffers, prepared_module, recompute_statistics,
                                         state_like)
from landscape.errors import UsageError
from landscape.options import choose, positive

ALIGNMENTS = ("none", "weights")
MAX_POINTS = 10_001
BN_CHOICES = ("auto", "recompute", "eval", "train")


@dataclass
class Connection:
    """What `connect` measured: t [T], per path (line, aligned_line, curve) and split (train, test) the values
    of each metric [T] and the barriers; the alignment's summary and orders; the trained bend; attributes."""

    t: np.ndarray
    values: dict[str, dict[str, dict[str, np.ndarray]]]
    barriers: dict[str, dict[str, dict[str, float]]]
    attrs: dict = field(default_factory=dict)
    alignment: Matching | None = None
    bend: dict[str, np.ndarray] | None = None
    curve_losses: list[float] = field(default_factory=list)

    def save(self, path) -> "object":
        """Write the path file (see files/path_file.py); return its path."""
        from pathlib import Path

        from landscape.files.path_file import write_path

        return write_path(Path(path), self)


def barrier(values: np.ndarray, t: np.ndarray, higher_is_worse: bool = True) -> float:
    """Frankle et al.'s barrier: the largest excess over the straight interpolation of the end values (a loss
    above it; for a metric such as accuracy, the largest drop below it)."""
    straight = values[0] + t * (values[-1] - values[0])  # exactly values[0] everywhere when the ends are equal
    excess = values - straight if higher_is_worse else straight - values
    return float(np.max(excess))


class PathEvaluator:
    """Loss and metrics of points (weights and buffers) on the splits, BatchNorm as chosen."""

    def __init__(self, model: nn.Module, bn: str, splits: dict[str, BatchSet], bn_batches: BatchSet,
                 objective: Objective):
        self.bn, self.splits, self.bn_batches, self.objective = bn, splits, bn_batches, objective
        self.module = prepared_module(model, bn)

    def __call__(self, params: Params, buffers: Params) -> dict[str, dict[str, float]]:
        points = {n: p[None] for n, p in params.items()}
        stacked = expand_points(module_buffers(self.module, buffers), 1)
        if self.bn == "recompute":
            stacked = recompute_statistics(self.module, points, stacked, self.bn_batches, self.objective)
        return {split: {name: float(value[0]) for name, value in
                        evaluate_points(self.module, points, stacked, batches, self.objective).items()}
                for split, batches in self.splits.items()}


def evaluate_path(evaluator: PathEvaluator, t: np.ndarray, point, on_point=None) -> dict[str, dict[str, np.ndarray]]:
    """Every split's metrics [T] along a path given as t -> (params, buffers)."""
    rows = []
    for value in t:
        rows.append(evaluator(*point(float(value))))
        if on_point is not None:
            on_point()
    return {split: {name: np.array([row[split][name] for row in rows]) for name in rows[0][split]}
            for split in rows[0]}


def path_barriers(values: dict[str, dict[str, np.ndarray]], t: np.ndarray) -> dict[str, dict[str, float]]:
    return {split: {name: barrier(series, t, higher_is_worse=name == "loss") for name, series in metrics.items()}
            for split, metrics in values.items()}


def check_same_function(module: nn.Module, state_b: Params, aligned: Params, inputs: torch.Tensor) -> None:
    """The aligned B must compute B's function (a permutation of hidden units changes nothing else): checked on a
    batch, so that an operation the permutation tracing does not understand is caught, never silently used."""
    from torch.func import functional_call

    with torch.no_grad():
        before = functional_call(module, state_b, (inputs,)).float()
        after = functional_call(module, aligned, (inputs,)).float()
    scale = float(before.abs().max()) or 1.0
    if not torch.allclose(before, after, rtol=1e-4, atol=1e-4 * scale):
        worst = float((before - after).abs().max()) / scale
        raise UsageError(f"weight matching would change B's function (outputs differ by {worst:.2g} of their "
                         f"largest): this architecture has an operation on hidden units that the alignment does not "
                         f"handle; connect without weight alignment")


# the BatchNorm statistics every point of a path, its two ends included, is evaluated with
END_STATISTICS = {"recompute": "recomputed", "eval": "running", "train": "batch"}


@with_threads
def connect(model_a: nn.Module, model_b, data, *, test_data=None, loss=None, metrics=None, points: int = 25,
            align: str = "none", curve: str = "line", bn: str = "auto", bn_data=None, bn_images: int = 1024,
            images: int | None = None, batch_size: int | None = None, curve_epochs: int = 1, curve_lr: float = 0.01,
            curve_state: dict | None = None, after_epoch=None, bend: Params | None = None, seed: int = 0,
            device=None, progress: bool = False, threads: int | None = None,
            budget_hours: float | None = None) -> Connection:
    """Loss and metrics along the line from `model_a` to `model_b` (a module or a state dict of A's architecture),
    and along the line to the aligned B (`align="weights"`) and a trained curve (`curve`), with their barriers
    (see the module docstring). `data`: the training data (also what BatchNorm is recomputed on and the curve is
    trained on, unless `bn_data`); `test_data`: a second split. `bend`: a trained bend to evaluate instead of
    training one. Returns a `Connection`; `.save(path)` writes a path file."""
    from landscape.engine.devices import resolve_device
    from landscape.progress import Progress

    check_module(model_a, "model_a")
    choose("align", align, ALIGNMENTS)
    choose("curve", curve, CURVES)
    choose("bn", bn, BN_CHOICES)
    positive("points", points)
    if points < 2:
        raise UsageError(f"points {points}: a path needs at least 2 points (its two ends)")
    if points > MAX_POINTS:
        raise UsageError(f"points {points:,}: a path of more than {MAX_POINTS:,} points (t finer than 1e-4) measures "
                         f"nothing more and could take days; give at most {MAX_POINTS:,}")
    positive("bn_images", bn_images)
    positive("curve_epochs", curve_epochs)
    if not curve_lr > 0 or not np.isfinite(curve_lr):
        raise UsageError(f"curve_lr {curve_lr}: give a positive learning rate for the bend")
    device = resolve_device(device, "device", default=next(model_a.parameters()).device)
    has_bn = any(isinstance(m, _BatchNorm) for m in model_a.modules())
    bn = ("recompute" if has_bn else "eval") if bn == "auto" else bn
    params_a, buffers_a = state_like(model_a, model_a, "model_a")
    params_b, buffers_b = state_like(model_b, model_a, "model_b")
    to = lambda state: {n: v.to(device) for n, v in state.items()}  # noqa: E731
    params_a, buffers_a, params_b, buffers_b = map(to, (params_a, buffers_a, params_b, buffers_b))
    check_finite(params_a, "model_a")
    check_finite(params_b, "model_b")
    objective = Objective(loss=loss, metrics=metrics)
    train = batch_set(data, device=device, objective=objective, images=images, batch_size=batch_size)
    splits = {"train": train}
    if test_data is not None:
        splits["test"] = batch_set(test_data, device=device, objective=objective, images=images,
                                   batch_size=batch_size, what="test_data")
    bn_batches = batch_set(bn_data, device=device, objective=objective, images=bn_images, batch_size=batch_size,
                           what="bn_data") if bn_data is not None else \
        batch_set(data, device=device, objective=objective, images=bn_images, batch_size=batch_size)
    evaluator = PathEvaluator(model_a, bn, splits, bn_batches, objective)
    check_forward(evaluator.module, params_a, module_buffers(evaluator.module, buffers_a), next(iter(train)),
                  objective, "model_a")
    t = np.linspace(0.0, 1.0, points)
    started = time.perf_counter()
    matching = None
    if align == "weights":
        example = next(iter(train))[0]
        spec = permutation_spec(prepared_module(model_a, "eval"), example[:2].to("meta"))  # shapes only
        matching = weight_matching(spec, {**params_a, **buffers_a}, {**params_b, **buffers_b}, seed=seed)
        aligned = apply_permutation(spec, {**params_b, **buffers_b}, matching.orders)
        aligned_params = {n: aligned[n] for n in params_b}
        aligned_buffers = {n: aligned[n] for n in buffers_b}
        check_same_function(evaluator.module, {**params_b, **buffers_b}, aligned, example[:64])
    paths = ["line"] + (["aligned_line"] if align == "weights" else []) + (["curve"] if curve != "line" else [])
    shown = Progress(points * len(paths), "connect", "point", progress,  # the first point says the time for all
                     budget_hours=budget_hours)

    def step() -> None:
        shown.update(shown.done + 1)

    end_b = (aligned_params, aligned_buffers) if align == "weights" else (params_b, buffers_b)
    values = {"line": evaluate_path(evaluator, t, lambda x: (on_line(params_a, params_b, x),
                                                             on_line(buffers_a, buffers_b, x)), step)}
    if align == "weights":
        values["aligned_line"] = evaluate_path(evaluator, t, lambda x: (on_line(params_a, end_b[0], x),
                                                                        on_line(buffers_a, end_b[1], x)), step)
    curve_losses: list[float] = []
    if curve != "line":
        if bend is None:
            trainer = prepared_module(model_a, "train")
            bend, curve_losses = train_bend(trainer, params_a, end_b[0], module_buffers(trainer, buffers_a), curve,
                                            train, objective, epochs=curve_epochs, lr=curve_lr, seed=seed,
                                            state=curve_state, after_epoch=after_epoch)
        else:
            bend = {n: torch.as_tensor(np.asarray(bend[n])).to(device, params_a[n].dtype) for n in params_a}
        values["curve"] = evaluate_path(evaluator, t, lambda x: (on_curve(curve, params_a, end_b[0], bend, x),
                                                                 on_line(buffers_a, end_b[1], x)), step)
    shown.close()
    attrs = {"source": "python", "model": type(model_a).__name__, "bn": bn, "end_statistics": END_STATISTICS[bn]
             if has_bn else "none", "align": align, "curve": curve,
             "points": points, "images": train.samples, "test_images": splits["test"].samples if "test" in splits
             else 0, "bn_images": bn_batches.samples if bn == "recompute" else 0, "seed": seed,
             "curve_epochs": curve_epochs if curve != "line" else 0, "curve_lr": curve_lr if curve != "line" else 0.0,
             "options": json.dumps({"points": points, "align": align, "curve": curve, "bn": bn,
                                    "bn_images": bn_images, "curve_epochs": curve_epochs, "curve_lr": curve_lr,
                                    "seed": seed}, sort_keys=True),
             "seconds": time.perf_counter() - started, "device": str(device), "torch_version": torch.__version__,
             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return Connection(t, values, {name: path_barriers(v, t) for name, v in values.items()}, attrs, matching,
                      {n: v.cpu().numpy() for n, v in bend.items()} if curve != "line" else None, curve_losses)
