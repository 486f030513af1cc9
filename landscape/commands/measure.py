"""`landscape measure`: the flatness and sharpness measures of one snapshot of a run file (or of a foreign model).

The same numbers as `ablate measure` gives a cell (`engine.measures.compute_measures`): the snapshot at `--lr` and
`--epoch` (default the last), the first `--images` training and `--test-images` test images of the run's data, the
initial snapshot for the distance from initialisation; or `--model-def FILE.py:FACTORY --weights MODEL.pt` on
`--dataset`. Writes a measures file of one row (`<run>_measures.h5`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from landscape.commands.sources import (ImageSet, SourceOptions, build_from_definition, fit_state, load_state_dict,
                                        run_snapshot, snapshot_state)
from landscape.engine.batches import Objective
from landscape.engine.devices import resolve_device, set_threads
from landscape.engine.measures import MeasureOptions, compute_measures
from landscape.errors import UsageError
from landscape.files.atomic import check_output
from landscape.files.lock import WriterLock
from landscape.options import positive


@dataclass
class MeasureCommandOptions(SourceOptions):
    lr: float | None = None
    run: int | None = None
    epoch: int | None = None
    images: int = 1024
    test_images: int = 1024


def measure_snapshot(source: str | Path | None, options: MeasureCommandOptions, measure: MeasureOptions,
                     out: str | Path | None = None, *, overwrite: bool = False) -> tuple[Path, object]:
    """Measure one snapshot and write its measures file; return (path, the `Measures`)."""
    options.validate_source()
    measure.validate()
    if set(measure.measures) <= {"barrier", "barrier_aligned"}:
        raise UsageError(f"--measures {','.join(measure.measures)} is the barrier between two models of a cell (`ablate "
                         f"measure`); one snapshot has none: name another measure, or use `landscape connect A B`")
    positive("--images", options.images)
    positive("--test-images", options.test_images)
    set_threads(options.threads)
    device = resolve_device(options.device)
    if source is not None:
        chosen = run_snapshot(source, options.lr, options.run, options.epoch, options.model_def, device)
        run, weights, model = chosen.run, chosen.weights, chosen.model
        params, buffers = chosen.params, chosen.buffers
        init = snapshot_state(model, weights, chosen.index, 0, device)[0] \
            if 0 in weights.epochs and chosen.epoch != 0 else None
        images = ImageSet.of_run(run, device, options.data_root, options.dataset)
        default_out = run.path.with_name(f"{run.path.stem}_measures.h5")
        inputs, name = [run.path, weights.path], chosen.name
    else:
        if not options.model_def or not options.weights:
            raise UsageError("give a run file, or a foreign model as --model-def FILE.py:FACTORY --weights MODEL.pt")
        images = ImageSet(options.dataset or "cifar10", options.data_root or "data", device)
        model = build_from_definition(options.model_def, options.classes(images))
        params, buffers = fit_state(model, load_state_dict(Path(options.weights)), f"--weights {options.weights}",
                                    device)
        init, default_out = None, Path(options.weights).with_name(f"{Path(options.weights).stem}_measures.h5")
        inputs, name = [Path(options.weights)], Path(options.weights).name
    out = Path(out) if out else default_out
    check_output(out, overwrite, inputs)
    train = images.batches(images.split("train", min(options.images, len(images.dataset.train))), images.batch_size)
    test = images.batches(images.split("test", min(options.test_images, len(images.dataset.test)), "--test-images"),
                          images.batch_size)
    result = compute_measures(model, params, buffers, train, Objective(), measure, test, init,
                              budget_hours=options.budget_hours)
    result.attrs.update({"source": name, "device": str(device), "torch_version": torch.__version__,
                         "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    out.parent.mkdir(parents=True, exist_ok=True)
    with WriterLock(out):
        check_output(out, overwrite, inputs)
        result.save(out)
    return out, result
