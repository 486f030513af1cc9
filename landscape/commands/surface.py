"""`landscape surface`: a surface around a snapshot of a run file, or around a foreign model, into a surface file.

The model and images come from `sources`; the directions, grid and evaluation are the engine's
(`engine.surface`), the same code as the Python API. The output is locked for one writer, written
atomically every few seconds as chunks land (through this process or Ray workers: `engine.executors`),
and on Ctrl-C or SIGTERM saved as `interrupted` with the line that resumes it (`--resume`, same options).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from landscape.commands.resume_line import resume_line
from landscape.commands.sources import (MACHINE_ONLY, ImageSet, SourceOptions, build_from_definition, fit_state,
                                        load_state_dict, run_architecture, snapshot_state)
from landscape.engine.batches import Objective
from landscape.engine.devices import resolve_device, set_threads
from landscape.engine.directions import IGNORES, NORMS
from landscape.engine.executors import InProcess
from landscape.engine.functional import BN_MODES
from landscape.engine.surface import (DIRECTIONS, PRECISIONS, PointEvaluator, autocast_for, empty_surface,
                                      axis_grid, fill_surface, metric_names, plan_surface)
from landscape.errors import OverBudget, RunFailed, UsageError
from landscape.files.atomic import check_output, withdraw_output
from landscape.files.lock import WriterLock
from landscape.files.run_file import read_run
from landscape.files.surface_file import read_surface, write_surface
from landscape.files.weights_file import resolve_epoch, resolve_run, weights_of_run
from landscape.options import check_seed, choose, non_negative
from landscape.progress import Progress
from landscape.stopping import StopSignals, ignore_file_size_signal

DEFAULT_IMAGES = 10_000
FLUSH_SECONDS = 10.0


@dataclass
class SurfaceOptions(SourceOptions):
    """Every option of `landscape surface` (stored as JSON in the surface file, less MACHINE_ONLY)."""

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
    to: str = ""  # between: rates of the same file or init; for a foreign model, state-dict files
    data: str = "train"
    images: int | None = None  # default min(10,000, the split)
    bn: str = "eval"
    bn_images: int = 2048
    batch_size: int = 0  # 0: 1000 on CUDA, 128 on CPU, or the run's training batch size with --bn train
    points_per_pass: int = 0  # 0: 1 on CPU, from free memory on CUDA
    precision: str = "auto"

    def validate(self) -> "SurfaceOptions":
        if self.dims not in (1, 2):
            raise UsageError(f"--dims {self.dims} is unknown: choose 1 (a line) or 2 (a plane)")
        choose("--directions", self.directions, DIRECTIONS)
        choose("--norm", self.norm, NORMS)
        choose("--ignore", self.ignore, IGNORES)
        choose("--data", self.data, ("train", "test"))
        choose("--bn", self.bn, BN_MODES)
        choose("--precision", self.precision, PRECISIONS)
        check_seed("--seed", self.seed)
        self.validate_source()
        for option, grid in (("--grid", self.grid), ("--grid-y", self.grid_y)):
            if grid is not None:
                axis_grid(grid, self.directions, None, "x", option)
        for option, value in (("--images", self.images), ("--bn-images", self.bn_images)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UsageError(f"{option} must be a positive integer, got {value}")
        non_negative("--batch-size", self.batch_size)
        non_negative("--points-per-pass", self.points_per_pass)
        if self.directions == "between":
            ends = [t for t in self.to.split(",") if t.strip()]
            if len(ends) != self.dims:
                raise UsageError(f"--directions between with --dims {self.dims} needs {self.dims} end point(s) in --to "
                                 f"(rates of the run file, or init), e.g. --to 2e-3" + (",5e-4" if self.dims == 2 else ""))
        elif self.to:
            raise UsageError("--to applies to --directions between only")
        return self

    def stored(self, index: int, epoch: int) -> dict:
        """The options as stored: the run and epoch resolved; where the data is and the machine do not matter."""
        values = asdict(self)
        values.update(lr=None, run=index, epoch=epoch)
        for machine_only in (*MACHINE_ONLY, "points_per_pass"):
            values.pop(machine_only)
        if values["num_classes"] is None:  # the default: stored as files from before the option were
            values.pop("num_classes")
        return values


@dataclass
class Centre:
    """The model a surface is around, its samples and what names it."""

    model: torch.nn.Module
    params: dict
    buffers: dict
    images: ImageSet
    attrs: dict
    index: int
    epoch: int
    default_out: Path
    trajectory: list | None = None
    trajectory_labels: list | None = None
    ends: list | None = None
    registry: bool = False  # the architecture is one of the model registry's


def parse_ends(text: str) -> list[str | float]:
    """--to '2e-3,init' into [0.002, 'init']."""
    ends: list[str | float] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part == "init":
            ends.append(part)
            continue
        try:
            ends.append(float(part))
        except ValueError:
            raise UsageError(f"--to entry {part!r} is neither a learning rate of the run file nor init") from None
    return ends


def kind_name(options: SurfaceOptions) -> str:
    return options.directions + (f"_to{options.to.replace(',', '_')}" if options.directions == "between" else "")


def run_centre(source: Path, options: SurfaceOptions, device: torch.device) -> Centre:
    """A snapshot of a run file, with the trajectory (PCA) or the end points (between) it asks for."""
    run = read_run(source)
    weights = weights_of_run(run)
    index = resolve_run(run.lrs, options.lr, options.run, run.path)
    epoch = resolve_epoch(weights, options.epoch)
    model = run_architecture(run, options.model_def)
    params, buffers = snapshot_state(model, weights, index, epoch, device)
    images = ImageSet.of_run(run, device, options.data_root, options.dataset)
    lr = float(run.lrs[index])
    registry = not (options.model_def or run.attrs.get("model_def") or run.attrs.get("source") == "recorder")
    centre = Centre(model, params, buffers, images, {
        "run_file": run.path.name, "weights_file": weights.path.name, "model": run.model, "lr": lr, "run": index,
        "epoch": epoch}, index, epoch,
        run.path.with_name(f"{run.path.stem}_surface_lr{lr:g}_e{epoch}_{kind_name(options)}_{options.dims}d.h5"),
        registry=registry)
    if options.directions == "pca":
        others = [e for e in weights.epochs if e != epoch]
        centre.trajectory = [snapshot_state(model, weights, index, e, device)[0] for e in others]
        centre.trajectory_labels = [*others, epoch]
    if options.directions == "between":
        centre.ends = []
        for end in parse_ends(options.to):
            if end == "init":
                other, other_epoch = index, weights.epochs[0]
                if other_epoch != 0:
                    raise UsageError(f"{weights.path} has no snapshot at epoch 0 (the initialisation) for --to init")
            else:
                other, other_epoch = resolve_run(run.lrs, end, None, run.path), weights.epochs[-1]
            if (other, other_epoch) == (index, epoch):
                raise UsageError(f"--to {end}: that is the centre itself (run {index} at epoch {epoch}), so the "
                                 f"direction would be zero; give another rate, or init")
            end_params, end_buffers = snapshot_state(model, weights, other, other_epoch, device)
            centre.ends.append({**end_params, **end_buffers})
    return centre


def foreign_centre(options: SurfaceOptions, device: torch.device) -> Centre:
    """A user's model (--model-def) with its state dict (--weights), and images of --dataset."""
    if not options.model_def or not options.weights:
        raise UsageError("give a run file, or a foreign model as --model-def FILE.py:FACTORY --weights MODEL.pt")
    if options.directions == "pca":
        raise UsageError("--directions pca needs a trajectory: a run file with snapshots (or the Python API's "
                         "landscape.surface(..., directions='pca', trajectory=[...]))")
    images = ImageSet(options.dataset or "cifar10", options.data_root or "data", device)
    model = build_from_definition(options.model_def, options.classes(images))
    weights = Path(options.weights)
    params, buffers = fit_state(model, load_state_dict(weights), f"--weights {weights}", device)
    from landscape.engine.functional import check_finite

    check_finite(params, f"--weights {weights}")
    centre = Centre(model, params, buffers, images, {
        "run_file": "", "weights_file": weights.name, "model": options.model_def.rpartition(":")[2],
        "lr": float("nan"), "run": 0, "epoch": -1, "source": "foreign model"}, 0, -1,
        weights.with_name(f"{weights.stem}_surface_{kind_name(options)}_{options.dims}d.h5"))
    if options.directions == "between":
        centre.ends = [fit_state(model, load_state_dict(path), f"--to {path}", device) for path in
                       filter(None, (p.strip() for p in options.to.split(",")))]
        centre.ends = [{**p, **b} for p, b in centre.ends]
    return centre


def compute_surface(source: str | Path | None, options: SurfaceOptions, out: str | Path | None = None, *,
                    overwrite: bool = False, resume: bool = False, progress: bool = True, executor=None) -> Path:
    """Compute (or, with `resume`, finish) the surface of a run file's snapshot or of a foreign model."""
    options.validate()
    ignore_file_size_signal()
    threads = set_threads(options.threads, hint=progress)
    device = resolve_device(options.device)
    if source is not None and options.weights:
        raise UsageError("give a run file or --weights, not both")
    if source is not None:
        centre = run_centre(Path(source), options, device)
    else:
        centre = foreign_centre(options, device)
    out = Path(out) if out else centre.default_out
    inputs = [p for p in (source, options.weights) if p]
    if not resume:
        check_output(out, overwrite, inputs)
    objective = Objective()
    plan = plan_surface(centre.model, params=centre.params, buffers=centre.buffers, directions=options.directions,
                        dims=options.dims, grid=options.grid, grid_y=options.grid_y, norm=options.norm,
                        ignore=options.ignore, seed=options.seed, to=centre.ends, trajectory=centre.trajectory,
                        trajectory_labels=centre.trajectory_labels, bn=options.bn, device=device,
                        what=f"the snapshot in {centre.attrs.get('weights_file')}")
    images = centre.images
    split = images.split(options.data, options.images)
    if options.images is None and len(split) > DEFAULT_IMAGES:
        split = images.split(options.data, DEFAULT_IMAGES)
    batch_size = options.batch_size or (images.batch_size if options.bn == "train" else
                                        (1000 if device.type == "cuda" else 128))  # 128: measured fastest on CPU
    bn_batches = (images.batches(images.split("train", min(options.bn_images, len(images.dataset.train)),
                                              "--bn-images"), images.batch_size)
                  if options.bn == "recompute" else None)
    # channels_last convolutions: measured 1.6x faster on CPU for the registry's VGG-A; others keep the default
    evaluator = PointEvaluator(plan, images.batches(split, batch_size), objective, options.bn, bn_batches,
                               autocast_for(options.precision, device, "--precision"),
                               channels_last=device.type == "cpu" and centre.registry)
    per_pass = evaluator.points_per_pass(options.points_per_pass)
    stored = json.dumps(options.stored(centre.index, centre.epoch), sort_keys=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    executor = executor or InProcess()
    with executor, WriterLock(out), StopSignals() as signals:
        if resume:
            surface = read_surface(out)
            if surface.attrs.get("options") != stored and surface.options != json.loads(stored):
                raise UsageError(f"{out} was computed with other options; resume it with the same options, "
                                 f"or choose another --out")
            if surface.loss.shape != plan.shape:
                raise UsageError(f"{out} has a grid of {surface.loss.shape}, not the {plan.shape} these options give")
        else:
            check_output(out, overwrite, inputs)  # again, now that no other writer can slip in
            surface = empty_surface(plan, metric_names(evaluator), {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            surface.path = out
        surface.attrs.update({
            **centre.attrs, "status": "running", "options": stored, "dims": options.dims,
            "directions": options.directions, "norm": options.norm, "ignore": options.ignore, "seed": options.seed,
            "to": options.to, "data": options.data, "images": len(split),
            "images_used": f"the first {len(split):,} images of the {images.name} {options.data} split",
            "bn": options.bn, "bn_images": options.bn_images if options.bn == "recompute" else 0,
            "batch_size": batch_size, "precision": "bf16" if evaluator.autocast else "fp32",
            "points_per_pass": per_pass, "device": str(device), "threads": threads,
            "num_classes": images.dataset.num_classes,
            "executor": type(executor).__name__ if executor is not None else "InProcess",
            "torch_version": torch.__version__})
        write_surface(surface)
        todo = int((~surface.done).sum())
        elapsed = float(surface.attrs.get("seconds", 0))
        if progress:
            sys.stderr.write(f"surface: {todo:,} of {surface.done.size:,} points to do, x {len(split):,} images = "
                             f"{todo * len(split):,} image evaluations on {device} ({per_pass} point(s) per pass)\n")
        shown = Progress(todo, "surface", "point", progress, budget_hours=options.budget_hours)
        started = flushed = time.perf_counter()

        def landed(done: int, total: int) -> None:
            nonlocal flushed
            shown.update(done)
            now = time.perf_counter()
            if now - flushed > FLUSH_SECONDS:
                surface.attrs["seconds"] = elapsed + now - started
                write_surface(surface)
                flushed = now

        try:
            fill_surface(surface, evaluator, per_pass, executor, landed, lambda: signals.received is not None)
        except OverBudget:
            withdraw_output(out, resume, lambda: (surface.attrs.update(status="interrupted"), write_surface(surface)))
            raise
        except BaseException as exc:
            surface.attrs.update(status="failed", message=f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}",
                                 seconds=elapsed + time.perf_counter() - started)
            write_surface(surface)
            raise
        finally:
            shown.close()
        surface.attrs["seconds"] = elapsed + time.perf_counter() - started
        if not surface.done.all():
            surface.attrs["status"] = "interrupted"
            write_surface(surface)
            raise RunFailed(f"stopped by {signals.name or 'a signal'} after {int(surface.done.sum())} of "
                            f"{surface.done.size} points; resume with: {resume_line('surface', source, options, out)}")
        bad = surface.nonfinite
        surface.attrs.update(status="complete", nonfinite_points=bad)
        write_surface(surface)
    if bad and progress:
        sys.stderr.write(f"surface: {bad} of {surface.done.size} points have a non-finite loss (the model overflows "
                         f"there); they are NaN in the file and left blank in the figures\n")
    return out
