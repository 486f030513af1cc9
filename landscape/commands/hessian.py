"""`landscape hessian`: spectra of chosen snapshots of a run file (or of a foreign model) into a Hessian file.

One measurement per (run, snapshot), each an `engine.curvature.HessianTask` run by an executor (this process,
or one Ray task each); the driver alone writes the file, locked for one writer and rewritten atomically after
every measurement, `interrupted` (partial) if Ctrl-C or SIGTERM stops it. Progress counts Hessian-vector
products, so a long measurement shows its time left.
"""
from __future__ import annotations

import functools
import json
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from landscape.commands.resume_line import resume_line
from landscape.commands.sources import (MACHINE_ONLY, ImageSet, SourceOptions, build_from_definition, fit_state,
                                        load_state_dict, run_architecture, snapshot_state)
from landscape.engine.batches import Objective
from landscape.engine.curvature import (HessianTask, SpectrumOptions, density_note, products_planned,
                                        select_parameters)
from landscape.engine.devices import resolve_device, set_threads
from landscape.engine.functional import check_finite, module_buffers, prepared_module
from landscape.engine.operators import DEFAULT_HVP, HVP_METHODS, OPERATOR_NAMES, couples_samples
from landscape.errors import OverBudget, RunFailed, UsageError
from landscape.files.atomic import check_output, withdraw_output
from landscape.files.hessian_file import hessian_result, read_hessian, write_hessian
from landscape.files.lock import WriterLock
from landscape.files.run_file import read_run
from landscape.files.weights_file import resolve_epoch, resolve_run, weights_of_run
from landscape.options import choose, non_negative, positive
from landscape.progress import Progress
from landscape.stopping import StopSignals, Stopped, ignore_file_size_signal

DEFAULT_IMAGES = 4096


@dataclass
class HessianOptions(SourceOptions, SpectrumOptions):
    """Every option of `landscape hessian` (stored as JSON in the Hessian file, less MACHINE_ONLY)."""

    lr: str | None = None  # a rate of the run file, or "all"
    run: int | None = None
    epoch: str | None = None  # a snapshot epoch, or "all"; default the last
    images: int | None = None  # None: min(4,096, the training split)
    batch_size: int = 0  # 0: the run's training batch size
    bn: str = "train"
    hvp: str = "auto"
    params: str | None = None  # name pattern(s), comma-separated: the Hessian of that block

    def validate(self) -> "HessianOptions":
        SpectrumOptions.validate(self, "--")
        choose("--bn", self.bn, ("train", "eval"))
        choose("--hvp", self.hvp, ("auto",) + HVP_METHODS)
        if self.images is not None:
            positive("--images", self.images)
        non_negative("--batch-size", self.batch_size)
        self.validate_source()
        return self

    def spectrum(self) -> SpectrumOptions:
        return SpectrumOptions(**{f.name: getattr(self, f.name) for f in fields(SpectrumOptions)})

    def stored(self, images: int) -> dict:
        values = asdict(self)
        values["images"] = images
        for machine_only in MACHINE_ONLY:
            values.pop(machine_only)
        return values


def pick_runs(lrs: np.ndarray, options: HessianOptions, path: Path) -> list[int]:
    """Run indices from --lr RATE|all or --run."""
    if options.lr == "all":
        return list(range(len(lrs)))
    rate = None
    if options.lr is not None:
        try:
            rate = float(options.lr)
        except ValueError:
            raise UsageError(f"--lr {options.lr!r} is neither a learning rate nor all") from None
    return [resolve_run(lrs, rate, options.run, path)]


def pick_epochs(weights, epoch: str | None) -> list[int]:
    """Snapshot epochs from --epoch E|all (default: the last)."""
    if epoch == "all":
        return list(weights.epochs)
    if epoch is None:
        return [weights.epochs[-1]]
    try:
        return [resolve_epoch(weights, int(epoch))]
    except ValueError:
        raise UsageError(f"--epoch {epoch!r} is neither an epoch nor all") from None


def not_converged_note(spectrum, tol: float) -> str:
    """'' when every eigenvalue met the tolerance, else what did not."""
    bad = np.flatnonzero(~np.asarray(spectrum.converged, dtype=bool))
    if not bad.size:
        return ""
    i = int(bad[0])
    return (f"; NOT CONVERGED: {len(bad)} of {len(spectrum.converged)} eigenvalue(s) after {spectrum.lanczos_steps} "
            f"steps (error bound {spectrum.error_bounds[i]:.3g} > {tol:g} x |{spectrum.eigenvalues[i]:.4g}|): raise "
            f"--max-steps")


def resumed_arrays(out: Path, planned) -> dict:
    """The arrays of the Hessian file `out` to finish, checked to be what `planned` (same options) would write."""
    done = read_hessian(out)
    if done.attrs.get("options") != planned.attrs["options"]:
        raise UsageError(f"{out} was measured with other options; resume it with the same options, or choose "
                         f"another --out")
    if any(done.arrays.get(name, np.zeros(0)).shape != values.shape for name, values in planned.arrays.items()):
        raise UsageError(f"{out} holds other measurements than these options plan; resume it with the same options")
    if not (np.array_equal(done.arrays["runs"], planned.arrays["runs"]) and
            np.array_equal(done.arrays["epochs"], planned.arrays["epochs"])):
        raise UsageError(f"{out} measured other runs or epochs; resume it with the same --lr and --epoch")
    return {name: done.arrays[name] for name in planned.arrays}


def compute_hessian(source: str | Path | None, options: HessianOptions, out: str | Path | None = None, *,
                    overwrite: bool = False, resume: bool = False, progress: bool = True, executor=None) -> Path:
    """Measure the chosen snapshots of a run file (or a foreign model) and write the Hessian file; return its path.

    Ctrl-C or SIGTERM stops within one Hessian-vector product: the measurements done stay in the file
    (`interrupted`) and `resume` (same options) makes only the others."""
    options.validate()
    ignore_file_size_signal()
    threads = set_threads(options.threads, hint=progress)
    device = resolve_device(options.device)
    if source is not None and options.weights:
        raise UsageError("give a run file or --weights, not both")
    if source is not None:
        run = read_run(source)
        weights = weights_of_run(run)
        runs, epochs = pick_runs(run.lrs, options, run.path), pick_epochs(weights, options.epoch)
        model = run_architecture(run, options.model_def)
        images = ImageSet.of_run(run, device, options.data_root, options.dataset)
        lrs, default_out = run.lrs[runs], run.path.with_name(f"{run.path.stem}_hessian.h5")
        named = {"run_file": run.path.name, "weights_file": weights.path.name, "model": run.model,
                 "optimizer": str(run.config.get("optimizer", "")), "momentum": float(run.config.get("momentum", 0))}
        inputs = [run.path, weights.path]

        def state(index: int, epoch: int):
            return snapshot_state(model, weights, index, epoch, device)
    else:
        if not options.model_def or not options.weights:
            raise UsageError("give a run file, or a foreign model as --model-def FILE.py:FACTORY --weights MODEL.pt")
        images = ImageSet(options.dataset or "cifar10", options.data_root or "data", device)
        model = build_from_definition(options.model_def, options.classes(images))
        path = Path(options.weights)
        loaded = fit_state(model, load_state_dict(path), f"--weights {path}", device)
        check_finite(loaded[0], f"--weights {path}")
        runs, epochs, lrs = [0], [-1], np.array([np.nan])
        default_out = path.with_name(f"{path.stem}_hessian.h5")
        named = {"run_file": "", "weights_file": path.name, "model": options.model_def.rpartition(":")[2],
                 "source": "foreign model"}
        inputs = [path]

        def state(index: int, epoch: int):
            return loaded
    out = Path(out) if out else default_out
    if not resume:
        check_output(out, overwrite, inputs)
    split = images.split("train", options.images if options.images is not None else
                         min(DEFAULT_IMAGES, len(images.dataset.train)))
    batch_size = options.batch_size or images.batch_size
    batches = images.batches(split, batch_size)
    module = prepared_module(model, options.bn)
    if options.operator == "fisher" and couples_samples(module):
        raise UsageError("--operator fisher needs per-sample gradients, and BatchNorm on batch statistics (--bn "
                         "train) couples the samples: add --bn eval (the running statistics)")
    wrt = select_parameters(dict(model.named_parameters()), options.params.split(",")) if options.params else None
    spectrum_options = options.spectrum()
    objective = Objective(metrics={})
    on_ray = executor is not None and type(executor).__name__ != "InProcess"
    result = hessian_result(out, {
        **named, "status": "running", "options": json.dumps(options.stored(len(split)), sort_keys=True),
        "bn": options.bn, "hvp": DEFAULT_HVP if options.hvp == "auto" else options.hvp, "images": len(split),
        "images_used": f"the first {len(split):,} images of the {images.name} training split",
        "params": ",".join(wrt) if wrt else "all", "batch_size": batch_size, "tol": options.tol,
        "max_steps": options.max_steps, "seed": options.seed, "device": str(device), "threads": threads,
        **({"trace_method": options.trace_method, "trace_products": options.trace_samples} if options.trace else {}),
        "operator": options.operator,
        "torch_version": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        lrs, runs, epochs, options.top_k, trace=options.trace,
        density=(options.density_probes, options.density_steps) if options.density else None)
    measurements = [(i, j) for i in range(len(runs)) for j in range(len(epochs))]
    if resume:
        result.arrays = resumed_arrays(out, result)
        measurements = [(i, j) for i, j in measurements if not result.done[i, j]]
    planned = products_planned(spectrum_options) * len(measurements)
    shown = Progress(planned if not on_ray else len(measurements), "hessian", "HVP" if not on_ray else "measurement",
                     progress, budget_hours=options.budget_hours)
    counted = [0]
    signals = StopSignals()

    def product() -> None:
        counted[0] += 1
        shown.update(counted[0])
        if signals.received is not None:
            raise Stopped  # within one product of Ctrl-C; the measurements done are in the file

    tasks = []
    for i, j in measurements:
        params, buffers = state(runs[i], epochs[j])
        task = HessianTask(module, params, module_buffers(module, buffers), batches, objective, spectrum_options,
                           options.hvp, wrt, "auto" if on_ray else str(device))
        if not tasks:
            task.check(f"the model of {named.get('run_file') or named['weights_file']}")
        tasks.append(task if on_ray else functools.partial(task, on_product=product))

    def landed(index: int, spectrum) -> None:
        i, j = measurements[index]
        result.put(i, j, spectrum)
        if options.density:
            result.attrs["density_reorthogonalisation"] = density_note(spectrum)
        write_hessian(result)  # what is done so far is on disk
        if on_ray:
            shown.update(int(result.done.sum()))
        else:
            counted[0] = max(counted[0], products_planned(spectrum_options) * (index + 1))
            shown.update(counted[0])
        where = f"lr={lrs[i]:g} epoch {epochs[j]}" if np.isfinite(lrs[i]) else "the model"
        restarted = (f", basis of {spectrum.basis_vectors} vectors restarted {spectrum.restarts} times to fit in "
                     f"memory" if spectrum.restarts else "")
        shown.write(f"hessian: {where}: top {OPERATOR_NAMES[options.operator]} eigenvalue "
                    f"{spectrum.eigenvalues[0]:.4g} ({spectrum.lanczos_steps} Lanczos steps{restarted}, "
                    f"{spectrum.hvps} products, {spectrum.seconds:.1f}s)"
                    + not_converged_note(spectrum, options.tol))

    from landscape.engine.executors import InProcess

    out.parent.mkdir(parents=True, exist_ok=True)
    executor = executor or InProcess()
    with executor, WriterLock(out), signals:
        if not resume:
            check_output(out, overwrite, inputs)  # again, now that no other writer can slip in
        write_hessian(result)
        try:
            executor.run_tasks(tasks, landed, lambda: signals.received is not None)
        except Stopped:
            pass  # the measurement under way is dropped; those done are in the file
        except OverBudget:
            withdraw_output(out, resume, lambda: (result.attrs.update(status="interrupted"), write_hessian(result)))
            raise
        except BaseException as exc:
            result.attrs.update(status="failed", message=f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
            write_hessian(result)
            raise
        finally:
            shown.close()
        if result.partial:
            result.attrs["status"] = "interrupted"
            write_hessian(result)
            raise RunFailed(f"stopped by {signals.name or 'a signal'} after {int(result.done.sum())} of "
                            f"{result.done.size} measurements; {out} keeps them (status interrupted); resume with: "
                            f"{resume_line('hessian', source, options, out)}")
        result.attrs["status"] = "complete"
        write_hessian(result)
    if progress and not result.converged.all():
        sys.stderr.write(f"hessian: {int((~result.converged.astype(bool)).sum())} eigenvalue(s) did not converge "
                         f"within --max-steps {options.max_steps}; their error bounds are in {out} (/error_bounds)\n")
    return out
