"""Loss surfaces of any model around its weights (Li et al., "Visualizing the Loss Landscape of Neural Nets", 2018).

For weights w and directions d_x (, d_y), the surface is L(w + x d_x + y d_y) and the metrics there, over a
fixed set of samples, at every grid point. `plan_surface` resolves the directions (`engine.directions`)
and the grid; a `PointEvaluator` evaluates chunks of grid points, C at a time in one vmapped pass over the
batches, without autograd; an executor (`engine.executors`: this process, or an actor pool on Ray) hands
it the chunks. `surface(model, data, ...)` is the Python API; `landscape surface` (`commands.surface`)
calls the same plan and evaluator for run files and foreign models and writes the file as points land.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from landscape.engine.batches import BatchSet, Objective, batch_set
from landscape.engine.directions import (IGNORES, NORMS, given_direction, normalize_direction, pca_directions,
                                         project, random_direction, state_dict_of, towards)
from landscape.engine.devices import with_threads
from landscape.engine.functional import (BN_MODES, FunctionalModel, Params, check_finite, check_forward, check_module,
                                         evaluate_points, expand_points, module_buffers, prepared_module,
                                         recompute_statistics, state_of)
from landscape.engine.memory import available_bytes, largest_output_bytes
from landscape.errors import UsageError
from landscape.files.surface_file import Surface
from landscape.options import check_seed, choose, non_negative

DIRECTIONS = ("random", "pca", "between")
DEFAULT_GRID = "-1:1:51"
DEFAULT_BETWEEN_GRID = "-0.25:1.25:31"
PRECISIONS = ("auto", "fp32", "bf16")
GRID_MEMORY_SHARE = 0.25  # the grid's arrays may take at most this share of the host's memory


def parse_grid(grid, option: str = "grid") -> np.ndarray:
    """'start:stop:count' (both ends included), a (start, stop, count) tuple, or the coordinates themselves (a bare
    count, the default extent with that many points, is `axis_grid`'s)."""
    if isinstance(grid, str):
        try:
            start, stop, count = grid.split(":")
            start, stop, count = float(start), float(stop), int(count)
        except ValueError:
            raise UsageError(f"{option} {grid!r} is malformed: write start:stop:count, e.g. -1:1:51") from None
        return linear_grid(start, stop, count, option, grid)
    if isinstance(grid, tuple) and len(grid) == 3 and isinstance(grid[2], int) and not isinstance(grid[2], bool):
        return linear_grid(float(grid[0]), float(grid[1]), grid[2], option, grid)
    try:
        values = np.asarray(grid, dtype=np.float64)
    except (TypeError, ValueError):
        values = np.zeros(0)
    if values.ndim != 1 or not values.size or not np.isfinite(values).all() or (np.diff(values) <= 0).any():
        raise UsageError(f"{option} must be 'start:stop:count', a (start, stop, count) tuple or increasing finite "
                         f"coordinates, got {grid!r}")
    return values


def linear_grid(start: float, stop: float, count: int, option: str, given) -> np.ndarray:
    if count < 1 or not (math.isfinite(start) and math.isfinite(stop)) or (count > 1 and not stop > start):
        raise UsageError(f"{option} {given!r} is empty or reversed: give start < stop and a count of 1 or more, "
                         f"e.g. -1:1:51")
    with np.errstate(over="ignore", invalid="ignore"):
        values = np.linspace(start, stop, count)
    if not np.isfinite(values).all():
        raise UsageError(f"{option} {given!r}: its coordinates overflow to infinity or NaN; give a range a float "
                         f"can hold, e.g. -1:1:51")
    return values


def check_grid_fits(points: int, metrics: int) -> None:
    """Refuse a grid whose loss, metric and done arrays alone cannot be held in memory."""
    need = points * 8 * (2 + metrics)
    have = available_bytes(torch.device("cpu"))
    if need > GRID_MEMORY_SHARE * have:
        raise UsageError(f"a grid of {points:,} points needs {need / 2 ** 30:,.1f} GiB for its values alone, more than "
                         f"this machine can hold ({have / 2 ** 30:,.1f} GiB available): use fewer grid points")


@dataclass
class SurfacePlan:
    """A resolved surface: the module, the centre, the directions, the grid (and PCA's trajectory)."""

    module: nn.Module
    origin: Params
    buffers: Params
    directions: list[Params]
    buffer_directions: list[Params] | None
    xs: np.ndarray
    ys: np.ndarray | None
    kind: str
    trajectory: dict[str, np.ndarray] | None = None
    explained: np.ndarray | None = None
    scratch: Params | None = field(default=None, repr=False)  # one point's weights, reused (see `points`)
    scratch_layout: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.xs),) if self.ys is None else (len(self.ys), len(self.xs))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def coordinates(self, chunk: np.ndarray) -> list[torch.Tensor]:
        """The coordinates along each direction of the flat point indices `chunk` (row-major [ny, nx])."""
        device = next(iter(self.origin.values())).device
        nx = len(self.xs)
        coords = [torch.as_tensor(self.xs[chunk % nx], dtype=torch.float32, device=device)]
        if self.ys is not None:
            coords.append(torch.as_tensor(self.ys[chunk // nx], dtype=torch.float32, device=device))
        return coords

    def points(self, chunk: np.ndarray, channels_last: bool = False) -> tuple[Params, Params]:
        """Stacked parameters and buffers [C, ...] of the grid points `chunk`. One point (the CPU's default) is
        written into buffers kept from the last call: no weight-sized allocation per point."""
        coords = self.coordinates(chunk)
        if len(chunk) == 1 and self.buffer_directions is None:
            return self.one_point([float(c[0]) for c in coords], channels_last), expand_points(self.buffers, 1)
        params = along(self.origin, self.directions, coords)
        if self.buffer_directions is None:
            return params, expand_points(self.buffers, len(chunk))
        return params, nonnegative_variances(along(self.buffers, self.buffer_directions, coords))

    def one_point(self, coords: list[float], channels_last: bool) -> Params:
        """origin + sum_i coords_i directions_i into the plan's scratch tensors [1, ...]."""
        if self.scratch is None or self.scratch_layout != channels_last:
            layout = lambda v: torch.channels_last if channels_last and v.dim() == 4 else torch.contiguous_format  # noqa: E731
            self.scratch = {n: torch.empty_like(v, memory_format=layout(v)) for n, v in self.origin.items()}
            self.scratch_layout = channels_last
        for name, value in self.origin.items():
            out = self.scratch[name]
            if not value.is_floating_point():
                out.copy_(value)
                continue
            torch.add(value, self.directions[0][name], alpha=coords[0], out=out)
            for c, d in zip(coords[1:], self.directions[1:]):
                out.add_(d[name], alpha=c)
        return {n: v.unsqueeze(0) for n, v in self.scratch.items()}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "scratch": None}  # a worker makes its own

    def to(self, device: torch.device) -> "SurfacePlan":
        move = lambda d: {n: v.to(device) for n, v in d.items()}  # noqa: E731
        return SurfacePlan(self.module, move(self.origin), move(self.buffers), [move(d) for d in self.directions],
                           [move(d) for d in self.buffer_directions] if self.buffer_directions is not None else None,
                           self.xs, self.ys, self.kind, self.trajectory, self.explained)


def along(base: Params, directions: list[Params], coords: list[torch.Tensor]) -> Params:
    """Stacked points base + sum_i coords_i * directions_i, [C, ...] (integer tensors: base repeated)."""
    count = coords[0].shape[0]
    out = {}
    for name, value in base.items():
        if not value.is_floating_point():
            out[name] = value.expand(count, *value.shape)
            continue
        point = value.unsqueeze(0).expand(count, *value.shape).clone()
        for c, d in zip(coords, directions):
            point += c.view(-1, *[1] * value.dim()).to(point.dtype) * d[name]
        out[name] = point
    return out


def nonnegative_variances(buffers: Params) -> Params:
    """Interpolated BatchNorm variances beyond the end points can fall below zero: clamp them at zero."""
    return {n: b.clamp(min=0) if n.endswith("running_var") else b for n, b in buffers.items()}


def plan_surface(model: nn.Module, *, params: Params | None = None, buffers: Params | None = None,
                 directions="random", dims: int = 2, grid=None, grid_y=None, norm: str = "filter",
                 ignore: str = "biasbn", seed: int = 0, to=None, trajectory=None, trajectory_labels=None,
                 bn: str = "eval", device: torch.device | None = None, what: str = "the model") -> SurfacePlan:
    """Resolve the centre (`params`/`buffers`, default the model's own), the directions and the grid."""
    check_module(model)
    if dims not in (1, 2):
        raise UsageError(f"dims {dims} is unknown: choose 1 (a line) or 2 (a plane)")
    choose("norm", norm, NORMS)
    choose("ignore", ignore, IGNORES)
    choose("bn", bn, BN_MODES)
    check_seed("seed", seed)
    device = device or next(model.parameters()).device
    if params is None:
        params, own_buffers = state_of(model)
        buffers = own_buffers if buffers is None else buffers
    origin = {n: p.to(device) for n, p in params.items()}
    buffers = {n: b.to(device) for n, b in (buffers or {}).items()}
    check_finite(origin, what)
    module = prepared_module(model, bn)
    kept = module_buffers(module, buffers)
    trajectory_coords = explained = buffer_directions = None
    if isinstance(directions, str):
        choose("directions", directions, DIRECTIONS)
        kind = directions
    else:
        kind = "given"
        if not isinstance(directions, (list, tuple)) or len(directions) != dims:
            raise UsageError(f"directions must be 'random', 'pca', 'between' or a list of {dims} direction(s) (state "
                             f"dicts or flat tensors), got {type(directions).__name__}")
    if kind != "between" and to is not None:
        raise UsageError("to applies to directions='between' only")
    if kind != "pca" and trajectory is not None:
        raise UsageError("trajectory applies to directions='pca' only")
    if kind == "random":
        generator = torch.Generator().manual_seed(seed)
        found = [normalize_direction(random_direction(origin, generator), origin, norm, ignore) for _ in range(dims)]
    elif kind == "given":
        found = [given_direction(d, origin, f"direction {i + 1}") for i, d in enumerate(directions)]
    elif kind == "pca":
        if not isinstance(trajectory, (list, tuple)) or len(trajectory) < dims + 1:
            raise UsageError(f"directions='pca' needs trajectory=[state dicts or models along the training], at least "
                             f"{dims + 2} of them")
        states = [state_dict_of(t, model, device, f"trajectory entry {i}")[0] for i, t in enumerate(trajectory)]
        found, explained = pca_directions(states, origin, ignore, dims)
        coords = project([*states, origin], origin, found)
        labels = list(trajectory_labels) if trajectory_labels is not None else list(range(len(states) + 1))
        trajectory_coords = {"epoch": np.asarray(labels, dtype=np.int64), "x": coords[:, 0]}
        if dims == 2:
            trajectory_coords["y"] = coords[:, 1]
    else:
        targets = to if isinstance(to, (list, tuple)) else [to] if to is not None else []
        if len(targets) != dims:
            raise UsageError(f"directions='between' with dims={dims} needs to=[{dims} end point(s)] (models or state "
                             f"dicts)")
        found, buffer_directions = [], []
        for i, target in enumerate(targets):
            end, end_buffers = state_dict_of(target, model, device, f"end point {i + 1}")
            check_finite(end, f"end point {i + 1}")
            d, bd = towards(origin, kept, end, end_buffers)
            found.append(d)
            buffer_directions.append(bd)
    xs = axis_grid(grid, kind, trajectory_coords, "x", "grid")
    ys = axis_grid(grid_y if grid_y is not None else grid, kind, trajectory_coords, "y", "grid_y") if dims == 2 \
        else None
    return SurfacePlan(module, origin, kept, found, buffer_directions, xs, ys, kind, trajectory_coords, explained)


def axis_grid(given, kind: str, trajectory: dict | None, axis: str, option: str) -> np.ndarray:
    """The coordinates of one axis: as given, or the default extent with `given` points when it is a bare count
    ("21"), or the default."""
    count = given if isinstance(given, int) and not isinstance(given, bool) else \
        int(given) if isinstance(given, str) and given.strip().isdigit() else None
    if given is None or count is not None:
        return parse_grid(default_grid(kind, trajectory, axis, count or None), option)
    return parse_grid(given, option)


def default_grid(kind: str, trajectory: dict | None, axis: str, count: int | None = None):
    """-1:1:51, between -0.25:1.25:31, PCA: the trajectory with a 25% margin, 51 points; `count` points instead."""
    if kind == "pca" and trajectory is not None:
        values = trajectory[axis]
        low, high = float(values.min()), float(values.max())
        margin = 0.25 * max(high - low, 1e-3)
        return np.linspace(low - margin, high + margin, count or 51)
    grid = DEFAULT_BETWEEN_GRID if kind == "between" else DEFAULT_GRID
    return grid if count is None else f"{grid.rsplit(':', 1)[0]}:{count}"


class PointEvaluator:
    """Evaluates chunks of a plan's grid points on fixed batches: what each executor's workers run."""

    def __init__(self, plan: SurfacePlan, batches: BatchSet, objective: Objective, bn: str = "eval",
                 bn_batches: BatchSet | None = None, autocast: torch.dtype | None = None,
                 channels_last: bool | None = None):
        self.plan, self.batches, self.objective, self.bn = plan, batches, objective, bn
        self.bn_batches = bn_batches if bn_batches is not None else batches
        self.autocast = autocast
        self.channels_last = bool(channels_last)  # channels_last convolutions: what the caller measured faster

    @property
    def device(self) -> torch.device:
        return next(iter(self.plan.origin.values())).device

    def evaluate(self, chunk: np.ndarray) -> dict[str, np.ndarray]:
        """Mean loss and metrics at the grid points `chunk`, all in one pass over the batches."""
        params, buffers = self.plan.points(np.asarray(chunk), self.channels_last)
        if self.bn == "recompute":
            buffers = recompute_statistics(self.plan.module, params, buffers, self.bn_batches, self.objective)
        values = evaluate_points(self.plan.module, params, buffers, self.batches, self.objective, self.autocast,
                                 self.channels_last)
        return {name: value.cpu().numpy() for name, value in values.items()}

    def to(self, device: torch.device) -> "PointEvaluator":
        """The same evaluator on `device` (for a worker on another device)."""
        if device == self.device:
            return self
        return PointEvaluator(self.plan.to(device), self.batches.to(device), self.objective, self.bn,
                              self.bn_batches.to(device) if self.bn_batches is not self.batches else None,
                              self.autocast if device.type == "cuda" else None,
                              self.channels_last and device.type == "cpu")

    def first_point(self) -> tuple[Params, Params]:
        """The parameters and buffers of the grid's first point, unstacked."""
        params, buffers = self.plan.points(np.zeros(1, dtype=np.int64))
        return {n: p[0] for n, p in params.items()}, {n: b[0] for n, b in buffers.items()}

    @torch.no_grad()
    def largest_activation_bytes(self) -> int:
        """The largest activation of one point on one batch (measured by one forward pass at the first point)."""
        model = FunctionalModel(self.plan.module, *self.first_point())
        batch = next(iter(self.batches))
        return largest_output_bytes(lambda: self.objective.values(model, batch))

    def points_per_pass(self, requested: int = 0) -> int:
        """Points per vmapped pass: as asked (at most the grid, and what memory holds), else 1 on CPU (vmap's
        grouped convolutions are slower there) and on CUDA as many as half the free memory holds."""
        non_negative("points_per_pass", requested)
        have = available_bytes(self.device)
        if requested:
            chosen = min(requested, self.plan.size)
            point_bytes = sum(p.numel() * p.element_size() for p in self.plan.origin.values())
            if chosen > 1:  # each point also holds its own activations of a batch
                point_bytes += 2 * self.largest_activation_bytes()
            if chosen * point_bytes > 0.5 * have:
                raise UsageError(f"points_per_pass {requested:,} would need {chosen * point_bytes / 2 ** 30:,.1f} GiB "
                                 f"(each point's weights and activations of a batch), more than half of the "
                                 f"{have / 2 ** 30:,.1f} GiB free on {self.device.type}: give at most "
                                 f"{max(1, int(0.5 * have // point_bytes)):,}")
            return chosen
        if self.device.type != "cuda" or self.objective.closure is not None:
            return 1
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        one = BatchSet([next(iter(self.batches))], [self.batches.sizes[0]])
        params, buffers = self.plan.points(np.zeros(1, dtype=np.int64))
        evaluate_points(self.plan.module, params, buffers, one, self.objective, self.autocast, False)
        per_point = max(torch.cuda.max_memory_allocated(self.device) - before, 1)
        free, _ = torch.cuda.mem_get_info(self.device)
        return int(max(1, min(64, self.plan.size, 0.5 * free // per_point)))


def chunks_of(todo: np.ndarray, per_pass: int) -> list[np.ndarray]:
    """The flat indices still to do, cut into passes of `per_pass` points (the same cut for every executor)."""
    return [todo[i:i + per_pass] for i in range(0, len(todo), per_pass)]


def autocast_for(precision: str, device: torch.device, option: str = "precision") -> torch.dtype | None:
    """bf16 autocast for `bf16`, and for `auto` on CUDA; none otherwise."""
    choose(option, precision, PRECISIONS)
    return torch.bfloat16 if precision == "bf16" or (precision == "auto" and device.type == "cuda") else None


def empty_surface(plan: SurfacePlan, metric_names: list[str], attrs: dict) -> Surface:
    """A surface of the plan's grid with nothing computed yet (NaN values, nothing done)."""
    check_grid_fits(plan.size, len(metric_names))
    return Surface(path=None, attrs=dict(attrs), x=plan.xs, y=plan.ys, loss=np.full(plan.shape, np.nan),
                   metrics={name: np.full(plan.shape, np.nan) for name in metric_names},
                   done=np.zeros(plan.shape, dtype=bool), trajectory=plan.trajectory,
                   explained_variance=plan.explained)


def metric_names(evaluator: PointEvaluator, what: str = "the model") -> list[str]:
    """The metrics the objective gives, found on one point of one batch (which also checks that the model takes
    the data: one line if not)."""
    values = check_forward(evaluator.plan.module, *evaluator.first_point(), next(iter(evaluator.batches)),
                           evaluator.objective, what)
    return [name for name in values if name != "loss"]


def store_values(surface: Surface, chunk: np.ndarray, values: dict[str, np.ndarray]) -> None:
    """Put a chunk's results into the surface's grids and mark the points done."""
    surface.loss.reshape(-1)[chunk] = values["loss"]
    for name, grid in surface.metrics.items():
        grid.reshape(-1)[chunk] = values[name]
    surface.done.reshape(-1)[chunk] = True


def fill_surface(surface: Surface, evaluator: PointEvaluator, per_pass: int, executor=None,
                 on_chunk: Callable[[int, int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> None:
    """Compute the points of `surface` not done yet, through `executor` (default: this process); `on_chunk(done,
    total)` after each chunk lands; `should_stop()` is asked between chunks (Ctrl-C keeps what is done)."""
    from landscape.engine.executors import InProcess

    todo = np.flatnonzero(~surface.done.reshape(-1))
    total, landed = len(todo), [0]

    def take(chunk: np.ndarray, values: dict[str, np.ndarray]) -> None:
        store_values(surface, chunk, values)
        landed[0] += len(chunk)
        if on_chunk is not None:
            on_chunk(landed[0], total)

    (executor or InProcess()).map_points(evaluator, chunks_of(todo, per_pass), take, should_stop or (lambda: False))


def describe_callable(function) -> str | None:
    """A loss or closure by name, as the options record it."""
    if function is None:
        return None
    return getattr(function, "__qualname__", None) or type(function).__name__


@with_threads
def surface(model: nn.Module, data, *, loss=None, closure=None, metrics=None, directions="random", dims: int = 2,
            grid=None, grid_y=None, norm: str = "filter", ignore: str = "biasbn", seed: int = 0, to=None,
            trajectory=None, bn: str = "eval", bn_data=None, images: int | None = None, batch_size: int | None = None,
            device=None, precision: str = "auto", points_per_pass: int = 0, executor=None,
            progress: bool = False, threads: int | None = None) -> Surface:
    """The loss (and metrics) of `model` on `data` around its weights, on a 1D line or a 2D grid.

    `directions`: "random" (Gaussian, normalised by `norm` = filter | layer | none, zero on 1-D tensors with
    `ignore="biasbn"`), "pca" (of `trajectory`, a list of state dicts or models), "between" (towards `to`, a
    model or state dict per dimension), or a list of `dims` directions (state dicts or flat tensors).
    `grid`/`grid_y`: "start:stop:count", (start, stop, count) or coordinates. `data`: a DataLoader, an iterable
    of (inputs, targets), or an (inputs, targets) pair, read once (the first `images` samples). `loss(outputs,
    targets)` (default cross-entropy) or `closure(model, batch)`; `metrics` (default accuracy when it applies).
    `bn`: eval | train | recompute (on `bn_data`, default `data`). The model is never changed. Returns a
    `Surface` with numpy `.loss`, `.x`, `.y`, `.metrics`, `.acc` and `.save(path)`.
    """
    from landscape.engine.devices import resolve_device
    from landscape.progress import bar

    check_module(model)
    device = resolve_device(device, "device", default=next(model.parameters()).device)
    objective = Objective(loss=loss, closure=closure, metrics=metrics)
    plan = plan_surface(model, directions=directions, dims=dims, grid=grid, grid_y=grid_y, norm=norm, ignore=ignore,
                        seed=seed, to=to, trajectory=trajectory, bn=bn, device=device)
    batches = batch_set(data, device=device, objective=objective, images=images, batch_size=batch_size)
    bn_batches = batch_set(bn_data, device=device, objective=objective, batch_size=batch_size, what="bn_data") \
        if bn == "recompute" and bn_data is not None else None
    evaluator = PointEvaluator(plan, batches, objective, bn, bn_batches, autocast_for(precision, device))
    per_pass = evaluator.points_per_pass(points_per_pass)
    options = dict(directions=plan.kind, dims=dims, grid=grid if isinstance(grid, str) else None, norm=norm,
                   ignore=ignore, seed=seed, bn=bn, images=batches.samples, precision=precision,
                   loss=describe_callable(loss) or ("closure " + describe_callable(closure) if closure else
                                                    "cross_entropy"))
    result = empty_surface(plan, metric_names(evaluator), {
        "status": "running", "options": json.dumps(options, sort_keys=True), "source": "python",
        "model": type(model).__name__, "dims": dims, "directions": plan.kind, "norm": norm, "ignore": ignore,
        "seed": seed, "images": batches.samples, "bn": bn, "precision": "bf16" if evaluator.autocast else "fp32",
        "points_per_pass": per_pass, "device": str(device), "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    started = time.perf_counter()
    points = bar(plan.size, "surface", "point", progress)
    fill_surface(result, evaluator, per_pass, executor, on_chunk=lambda done, total: points.update(done - points.n))
    points.close()
    result.attrs.update(status="complete", seconds=time.perf_counter() - started)
    return result
