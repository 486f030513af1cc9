"""Loss surfaces around a weight snapshot (Li et al., "Visualizing the Loss Landscape of Neural Nets", 2018).

For a snapshot w (parameters of one run at one epoch) and directions d_x (, d_y), the surface is
L(w + x d_x + y d_y) and the accuracy there, over a fixed set of images, at every grid point.
Directions: `random` (Gaussian, seeded, then normalised: `filter` rescales each filter, i.e. each
slice along the output axis of a conv weight and each row of a Linear weight, to the norm of the
same filter of w, Li et al. Sec. 4; `layer` the whole tensor; `none`), zero on 1-D tensors (biases,
BatchNorm) with `ignore="biasbn"`; `pca` (the first principal components of the trajectory, the
snapshots minus w, centred as sklearn's PCA; Li et al. Sec. 7); `between` (towards other runs' final
weights or the initialisation: d = w_to - w, so x = 1 is the other end; buffers are interpolated too).
Grid points are evaluated C at a time in one vmapped pass over images kept on the device
(`evaluation.evaluate_points`), without autograd; the file is rewritten atomically as points are
done, so an interrupted surface resumes where it stopped.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from landscape.errors import RunFailed, UsageError
from landscape.progress import bar
from landscape.engine.functional import (BN_MODES, ImageSet, Params, evaluate_points, expand_points, flatten, module_buffers,
                                  prepared_module, recompute_statistics, snapshot_model, unflatten)
from landscape.files.weights_file import Weights, resolve_epoch, resolve_run, weights_of_run
from landscape.files.run_file import Run, read_run
from landscape.files.surface_file import Surface, read_surface, write_surface

DIRECTIONS = ("random", "pca", "between")
NORMS = ("filter", "layer", "none")
IGNORES = ("biasbn", "none")
DEFAULT_GRID = "-1:1:51"
DEFAULT_BETWEEN_GRID = "-0.25:1.25:31"
DEFAULT_IMAGES = 10_000
FLUSH_SECONDS = 10.0


@dataclass
class SurfaceOptions:
    """Every option of `landscape surface` (stored as JSON in the surface file)."""

    lr: float | None = None
    run: int | None = None
    epoch: int | None = None
    dims: int = 2
    grid: str | None = None  # start:stop:count; default -1:1:51 (between: -0.25:1.25:31; pca: around the path)
    grid_y: str | None = None  # default: as grid
    directions: str = "random"
    norm: str = "filter"
    ignore: str = "biasbn"
    seed: int = 0
    to: str = ""  # between: rates of the same file, or "init"
    data: str = "train"
    images: int | None = None  # default min(10,000, the split)
    bn: str = "eval"
    bn_images: int = 2048
    batch_size: int = 0  # 0: 1000 on CUDA, 128 on CPU, or the run's training batch size with --bn train
    points_per_pass: int = 0  # 0: 1 on CPU, from free memory on CUDA
    precision: str = "auto"
    device: str = "auto"
    data_root: str | None = None

    def validate(self) -> "SurfaceOptions":
        from landscape.training.config import choose

        if self.dims not in (1, 2):
            raise UsageError(f"--dims {self.dims} is unknown: choose 1 (a line) or 2 (a plane)")
        choose("--directions", self.directions, DIRECTIONS)
        choose("--norm", self.norm, NORMS)
        choose("--ignore", self.ignore, IGNORES)
        choose("--data", self.data, ("train", "test"))
        choose("--bn", self.bn, BN_MODES)
        choose("--precision", self.precision, ("auto", "fp32", "bf16"))
        for grid in (self.grid, self.grid_y):
            if grid is not None:
                parse_grid(grid)
        for option, value in (("--images", self.images), ("--bn-images", self.bn_images)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UsageError(f"{option} must be a positive integer, got {value}")
        for option, value in (("--batch-size", self.batch_size), ("--points-per-pass", self.points_per_pass)):
            if value < 0:
                raise UsageError(f"{option} must be 0 (automatic) or a positive integer, got {value}")
        if self.directions == "between":
            targets = parse_targets(self.to)
            if len(targets) != self.dims:
                raise UsageError(f"--directions between with --dims {self.dims} needs {self.dims} end point(s) in --to "
                                 f"(rates of the run file, or init), e.g. --to 2e-3" + (",5e-4" if self.dims == 2 else ""))
        elif self.to:
            raise UsageError("--to applies to --directions between only")
        return self


def parse_grid(text: str) -> np.ndarray:
    """'-1:1:51' (start:stop:count, both ends included) into coordinates; UsageError if malformed."""
    try:
        start, stop, count = text.split(":")
        start, stop, count = float(start), float(stop), int(count)
    except ValueError:
        raise UsageError(f"grid {text!r} is malformed: write start:stop:count, e.g. -1:1:51") from None
    if count < 1 or not (math.isfinite(start) and math.isfinite(stop)) or (count > 1 and not stop > start):
        raise UsageError(f"grid {text!r} is empty or reversed: give start < stop and a count of 1 or more, "
                         f"e.g. -1:1:51")
    return np.linspace(start, stop, count)


def parse_targets(text: str) -> list[str | float]:
    """--to '2e-3,init' into [0.002, 'init']."""
    targets: list[str | float] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part == "init":
            targets.append(part)
            continue
        try:
            targets.append(float(part))
        except ValueError:
            raise UsageError(f"--to entry {part!r} is neither a learning rate of the run file nor init") from None
    return targets


# ---------------------------------------------------------------- directions


def random_direction(params: Params, generator: torch.Generator) -> Params:
    """A Gaussian direction shaped like `params`, drawn on the CPU (the same on every device)."""
    return {n: torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.device) for n, p in params.items()}


def normalize_direction(direction: Params, weights: Params, norm: str, ignore: str) -> Params:
    """Li et al.'s normalisation: per filter (each slice along axis 0), per layer, or none.

    1-D tensors (biases, BatchNorm) get zero with `ignore="biasbn"`, else the weights themselves (as
    the reference code does).
    """
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
        raise UsageError(f"the trajectory spans fewer than {count} direction(s): --directions pca needs more "
                         f"snapshots (rerun `landscape run` with --snapshot-every 1, at least {count + 2} snapshots)")
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


# ---------------------------------------------------------------- the computation


@dataclass
class Setup:
    """Everything a surface needs once resolved: model, centre, directions, data, output."""

    run: Run
    weights: Weights
    index: int
    epoch: int
    module: nn.Module
    origin: Params
    buffers: Params
    directions: list[Params]
    buffer_directions: list[Params] | None
    xs: np.ndarray
    ys: np.ndarray | None
    trajectory: dict[str, np.ndarray] | None
    explained: np.ndarray | None


def default_surface_path(run_path: Path, lr: float, epoch: int, options: SurfaceOptions) -> Path:
    what = options.directions + (f"_to{options.to.replace(',', '_')}" if options.directions == "between" else "")
    return run_path.with_name(f"{run_path.stem}_surface_lr{lr:g}_e{epoch}_{what}_{options.dims}d.h5")


def compute_surface(run_path: str | Path, options: SurfaceOptions, out: str | Path | None = None, *,
                    overwrite: bool = False, resume: bool = False, progress: bool = True) -> Path:
    """Compute (or, with `resume`, finish) a surface of one snapshot of `run_path`; return the file written."""
    from landscape.training.checkpoint import RunLock
    from landscape.training.runner import StopSignals, check_output, resolve_device

    options.validate()
    run = read_run(run_path)
    weights = weights_of_run(run)
    index = resolve_run(run.lrs, options.lr, options.run, run.path)
    epoch = resolve_epoch(weights, options.epoch)
    out = Path(out) if out else default_surface_path(run.path, float(run.lrs[index]), epoch, options)
    previous = None
    if resume:
        previous = read_surface(out)
        if previous.options != stored_options(options, index, epoch):
            raise UsageError(f"{out} was computed with other options; resume it with the same options, "
                             f"or choose another --out")
    else:
        check_output(out, overwrite)
    device = resolve_device(options.device)
    setup = prepare_surface(run, weights, index, epoch, options, device)
    images = ImageSet(run, device, options.data_root)
    split = images.split(options.data, options.images if options.images is not None else None)
    if options.images is None and len(split) > DEFAULT_IMAGES:
        split = images.split(options.data, DEFAULT_IMAGES)
    batch_size = options.batch_size or (images.batch_size if options.bn == "train" else
                                        (1000 if device.type == "cuda" else 128))  # 128: measured fastest on CPU
    batches = images.batches(split, batch_size)
    bn_batches = (images.batches(images.split("train", min(options.bn_images, len(images.dataset.train)),
                                              "--bn-images"), images.batch_size)
                  if options.bn == "recompute" else None)
    autocast = torch.bfloat16 if (options.precision == "bf16" or (options.precision == "auto"
                                                                  and device.type == "cuda")) else None
    shape = (len(setup.ys), len(setup.xs)) if setup.ys is not None else (len(setup.xs),)
    surface = previous or Surface(
        path=out, attrs={}, x=setup.xs, y=setup.ys, loss=np.full(shape, np.nan), acc=np.full(shape, np.nan),
        done=np.zeros(shape, dtype=bool), trajectory=setup.trajectory, explained_variance=setup.explained)
    surface.attrs.update({
        "status": "running", "options": json.dumps(stored_options(options, index, epoch), sort_keys=True),
        "run_file": run.path.name, "weights_file": weights.path.name, "model": run.model,
        "lr": float(run.lrs[index]), "run": index, "epoch": epoch, "dims": options.dims,
        "directions": options.directions, "norm": options.norm, "ignore": options.ignore, "seed": options.seed,
        "to": options.to, "data": options.data, "images": len(split), "bn": options.bn,
        "bn_images": options.bn_images if options.bn == "recompute" else 0, "batch_size": batch_size,
        "precision": "bf16" if autocast else "fp32", "device": str(device), "torch_version": torch.__version__,
        "created": surface.attrs.get("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))})
    out.parent.mkdir(parents=True, exist_ok=True)
    with RunLock(out), StopSignals() as signals:
        write_surface(surface)
        per_pass = options.points_per_pass or default_points_per_pass(setup, batches, autocast, device)
        surface.attrs["points_per_pass"] = per_pass
        todo = np.flatnonzero(~surface.done.reshape(-1))
        started, flushed, elapsed = time.perf_counter(), time.perf_counter(), float(surface.attrs.get("seconds", 0))
        points = bar(len(todo), "surface", "point", progress)
        for start in range(0, len(todo), per_pass):
            chunk = todo[start:start + per_pass]
            loss, acc = evaluate_chunk(setup, chunk, options.bn, batches, bn_batches, autocast)
            surface.loss.reshape(-1)[chunk], surface.acc.reshape(-1)[chunk] = loss, acc
            surface.done.reshape(-1)[chunk] = True
            now = time.perf_counter()
            points.update(len(chunk))
            report_progress(start + len(chunk), len(todo), now - started)
            if signals.received is not None and start + len(chunk) < len(todo):
                surface.attrs.update(status="interrupted", seconds=elapsed + now - started)
                write_surface(surface)
                raise RunFailed(f"stopped after {int(surface.done.sum())} of {surface.done.size} points; "
                                f"resume with: landscape surface {run.path} --resume --out {out} (same options)")
            if now - flushed > FLUSH_SECONDS:
                surface.attrs["seconds"] = elapsed + now - started
                write_surface(surface)
                flushed = now
        surface.attrs.update(status="complete", seconds=elapsed + time.perf_counter() - started)
        write_surface(surface)
        points.close()
    return out


def stored_options(options: SurfaceOptions, index: int, epoch: int) -> dict:
    """The options as stored (the run and epoch resolved; where the data is and the device do not matter)."""
    values = asdict(options)
    values.update(lr=None, run=index, epoch=epoch)
    for machine_only in ("device", "data_root", "points_per_pass"):
        values.pop(machine_only)
    return values


def report_progress(done: int, total: int, seconds: float) -> None:
    """Called after every pass (points done of the total); the progress bar draws itself, tests hook in here."""


def prepare_surface(run: Run, weights: Weights, index: int, epoch: int, options: SurfaceOptions,
                    device: torch.device) -> Setup:
    """Build the model at the snapshot, the directions and the grid."""
    model, origin, buffers = snapshot_model(run, weights, index, epoch, device)
    module = prepared_module(model, options.bn)
    buffers = module_buffers(module, buffers)
    trajectory = explained = buffer_directions = None
    if options.directions == "random":
        generator = torch.Generator().manual_seed(options.seed)
        directions = [normalize_direction(random_direction(origin, generator), origin, options.norm, options.ignore)
                      for _ in range(options.dims)]
    elif options.directions == "pca":
        others = [e for e in weights.epochs if e != epoch]
        states = [snapshot_model(run, weights, index, e, device)[1] for e in others]
        directions, explained = pca_directions(states, origin, options.ignore, options.dims)
        coords = project([*states, origin], origin, directions)
        trajectory = {"epoch": np.asarray([*others, epoch], dtype=np.int64), "x": coords[:, 0]}
        if options.dims == 2:
            trajectory["y"] = coords[:, 1]
    else:
        directions, buffer_directions = [], []
        for target in parse_targets(options.to):
            if target == "init":
                other, other_epoch = index, weights.epochs[0]
                if other_epoch != 0:
                    raise UsageError(f"{weights.path} has no snapshot at epoch 0 (the initialisation) for --to init")
            else:
                other, other_epoch = resolve_run(run.lrs, float(target), None, run.path), weights.epochs[-1]
            _, end, end_buffers = snapshot_model(run, weights, other, other_epoch, device)
            directions.append({n: end[n] - origin[n] for n in origin})
            buffer_directions.append({n: (end_buffers[n] - buffers[n]) if buffers[n].is_floating_point()
                                      else torch.zeros_like(buffers[n]) for n in buffers})
    xs, ys = grids(options, trajectory)
    return Setup(run, weights, index, epoch, module, origin, buffers, directions, buffer_directions, xs, ys,
                 trajectory, explained)


def grids(options: SurfaceOptions, trajectory: dict[str, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The x (and y) coordinates: as given, else the default of the direction kind (PCA: the path and a margin)."""
    default = DEFAULT_BETWEEN_GRID if options.directions == "between" else DEFAULT_GRID

    def around(values: np.ndarray, count: int = 51) -> np.ndarray:
        low, high = float(values.min()), float(values.max())
        margin = 0.25 * max(high - low, 1e-3)
        return np.linspace(low - margin, high + margin, count)

    if trajectory is not None and options.grid is None:
        xs = around(trajectory["x"])
    else:
        xs = parse_grid(options.grid or default)
    if options.dims == 1:
        return xs, None
    if trajectory is not None and options.grid_y is None and options.grid is None:
        return xs, around(trajectory["y"])
    return xs, parse_grid(options.grid_y or options.grid or default)


def grid_coordinates(setup: Setup, chunk: np.ndarray) -> list[torch.Tensor]:
    """The coordinates along each direction of the flat point indices `chunk` (row-major [ny, nx])."""
    device = next(iter(setup.origin.values())).device
    nx = len(setup.xs)
    coords = [torch.as_tensor(setup.xs[chunk % nx], dtype=torch.float32, device=device)]
    if setup.ys is not None:
        coords.append(torch.as_tensor(setup.ys[chunk // nx], dtype=torch.float32, device=device))
    return coords


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
            point += c.view(-1, *[1] * value.dim()) * d[name]
        out[name] = point
    return out


def evaluate_chunk(setup: Setup, chunk: np.ndarray, bn: str, batches, bn_batches,
                   autocast: torch.dtype | None) -> tuple[np.ndarray, np.ndarray]:
    """Mean loss and accuracy at the grid points `chunk`, all in one pass over the images."""
    coords = grid_coordinates(setup, chunk)
    points = along(setup.origin, setup.directions, coords)
    if setup.buffer_directions is not None:
        buffers = along(setup.buffers, setup.buffer_directions, coords)
    else:
        buffers = expand_points(setup.buffers, len(chunk))
    if bn == "recompute":
        buffers = recompute_statistics(setup.module, points, buffers, bn_batches)
    loss, acc = evaluate_points(setup.module, points, buffers, batches, autocast)
    return loss.cpu().numpy(), acc.cpu().numpy()


def default_points_per_pass(setup: Setup, batches, autocast: torch.dtype | None, device: torch.device) -> int:
    """1 on CPU (vmap turns convolutions into slower grouped ones there); on CUDA, as many points as half
    the free memory holds, measured with one point on one batch."""
    if device.type != "cuda":
        return 1
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    images, labels = next(iter(batches))
    evaluate_points(setup.module, along(setup.origin, setup.directions, [torch.zeros(1, device=device)] *
                                        len(setup.directions)),
                    expand_points(setup.buffers, 1), [(images, labels)], autocast)
    per_point = max(torch.cuda.max_memory_allocated(device) - before, 1)
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(64, 0.5 * free // per_point)))
