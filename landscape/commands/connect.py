"""`landscape connect`: loss barriers and low-loss paths between two trained models into a path file.

A and B are snapshots of run files (`--lr`/`--epoch` for A, `--lr-b`/`--epoch-b` for B, defaulting to A's; the
same run file twice connects two rates or two epochs of one run), or a foreign architecture with two state dicts
(`--model-def FILE.py:FACTORY --weights A.pt --weights-b B.pt`). The images are A's run's (or `--dataset`):
the first `--images` of the training split and of the test split. The work is `connectivity.connect.connect`;
a curve's training is checkpointed after every epoch beside the output (`<out>.curve.pt`), so `--resume`
continues it; `--bend-from PATH.h5` evaluates the bend a path file holds instead of training one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from landscape.commands.sources import (ImageSet, SourceOptions, build_from_definition, fit_state, load_state_dict,
                                        run_snapshot)
from landscape.connectivity.connect import connect
from landscape.engine.devices import resolve_device, set_threads
from landscape.errors import UsageError
from landscape.files.atomic import check_outputs, figure_files, lock_file, remove_stale_temporaries
from landscape.files.lock import WriterLock
from landscape.files.path_file import read_path
from landscape.options import positive


@dataclass
class ConnectOptions(SourceOptions):
    """Every option of `landscape connect`."""

    lr: float | None = None
    epoch: int | None = None
    lr_b: float | None = None
    epoch_b: int | None = None
    weights_b: str | None = None
    points: int = 25
    align: str = "none"
    curve: str = "line"
    bn: str = "auto"
    bn_images: int = 1024
    images: int = 2048
    test_images: int = 1024
    batch_size: int = 256
    curve_epochs: int = 1
    curve_lr: float = 0.01
    seed: int = 0
    bend_from: str | None = None

    def validate(self) -> "ConnectOptions":
        self.validate_source()
        for option in ("points", "bn_images", "images", "test_images", "batch_size", "curve_epochs"):
            positive("--" + option.replace("_", "-"), getattr(self, option))
        if self.points < 2:
            raise UsageError(f"--points {self.points}: a path needs at least 2 points (its two ends)")
        return self


def curve_checkpoint(out: Path) -> Path:
    """Where a curve's bend is checkpointed after every epoch of its training."""
    return out.with_name(out.name + ".curve.pt")


def connection_outputs(out: Path) -> list[Path]:
    """Every file `connect` writes: the path file, the bend's checkpoint, the lock, the figure and its CSV."""
    return [out, curve_checkpoint(out), lock_file(out), *figure_files(out.with_suffix(""))]


def curve_options(options: ConnectOptions) -> dict:
    """The options a curve's training depends on: a resumed training must be given the same."""
    return {"curve": options.curve, "curve_lr": options.curve_lr, "seed": options.seed, "align": options.align,
            "images": options.images, "batch_size": options.batch_size}


def load_curve_state(checkpoint: Path, options: ConnectOptions, model: torch.nn.Module) -> dict:
    """The bend's checkpoint to resume from, checked: readable, of this model, trained with these options."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UsageError(f"{checkpoint} is damaged or not a curve checkpoint ({type(exc).__name__}); delete it to "
                         f"train the curve from its start") from None
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    bend = state.get("bend") if isinstance(state, dict) else None
    if not isinstance(bend, dict) or {n: tuple(getattr(v, "shape", ())) for n, v in bend.items()} != shapes:
        raise UsageError(f"{checkpoint} is not a curve checkpoint of this model (other parameters or shapes); delete "
                         f"it to train the curve from its start")
    stored = state.get("options", {})
    differing = [f"--{k.replace('_', '-')} {v} (the checkpoint has {stored[k]})"
                 for k, v in curve_options(options).items() if k in stored and stored[k] != v]
    if differing:
        raise UsageError(f"cannot resume the curve of {checkpoint} with changed options: {'; '.join(differing)}; "
                         f"give the same options, or delete the checkpoint to start over")
    return state


def compute_connection(a: str | Path | None, b: str | Path | None, options: ConnectOptions,
                       out: str | Path | None = None, *, overwrite: bool = False, resume: bool = False,
                       progress: bool = True) -> Path:
    """Connect A and B (see the module docstring) and write the path file; return its path."""
    options.validate()
    set_threads(options.threads, hint=progress)
    device = resolve_device(options.device)
    if a is not None and b is not None:
        first = run_snapshot(a, options.lr, None, options.epoch, options.model_def, device)
        second = run_snapshot(b, options.lr_b if options.lr_b is not None else options.lr, None,
                              options.epoch_b if options.epoch_b is not None else options.epoch, options.model_def,
                              device)
        run, model = first.run, first.model
        state_a, name_a = {**first.params, **first.buffers}, first.name
        state_b, name_b = {**second.params, **second.buffers}, second.name
        images = ImageSet.of_run(run, device, options.data_root, options.dataset)
        default_out = run.path.with_name(f"{run.path.stem}_connect.h5")
        inputs = [Path(a), Path(b)]
    elif options.model_def and options.weights and options.weights_b:
        images = ImageSet(options.dataset or "cifar10", options.data_root or "data", device)
        model = build_from_definition(options.model_def, options.classes(images))
        state_a = dict(zip(("params", "buffers"), fit_state(model, load_state_dict(Path(options.weights)),
                                                           f"--weights {options.weights}", device)))
        state_b = dict(zip(("params", "buffers"), fit_state(model, load_state_dict(Path(options.weights_b)),
                                                           f"--weights-b {options.weights_b}", device)))
        state_a = {**state_a["params"], **state_a["buffers"]}
        state_b = {**state_b["params"], **state_b["buffers"]}
        name_a, name_b = Path(options.weights).name, Path(options.weights_b).name
        default_out = Path(options.weights).with_name(f"{Path(options.weights).stem}_connect.h5")
        inputs = [Path(options.weights), Path(options.weights_b)]
    else:
        raise UsageError("give two run files A B (with --lr/--epoch, --lr-b/--epoch-b), or a foreign model as "
                         "--model-def FILE.py:FACTORY --weights A.pt --weights-b B.pt")
    out = Path(out) if out else default_out
    checkpoint = curve_checkpoint(out)
    inputs += [Path(options.bend_from)] if options.bend_from else []
    outputs = connection_outputs(out)
    check_outputs(outputs, overwrite, inputs, continued=outputs if resume else [lock_file(out)])
    bend = None
    if options.bend_from:
        held = read_path(options.bend_from)
        if not held.bend:
            raise UsageError(f"--bend-from {options.bend_from}: the file holds no trained bend (connect with --curve "
                             f"bezier or polychain first)")
        bend = held.bend
    state = load_curve_state(checkpoint, options, model) if resume and checkpoint.is_file() else None
    train_split = images.split("train", min(options.images, len(images.dataset.train)))
    test_split = images.split("test", min(options.test_images, len(images.dataset.test)), "--test-images")
    model.load_state_dict(state_a, strict=True, assign=True)  # A itself (the architecture may be shapes only)

    def keep(curve_state: dict) -> None:
        from landscape.files.atomic import write_atomically

        saved = {**curve_state, "options": curve_options(options)}
        write_atomically(checkpoint, lambda target: torch.save(saved, target))

    out.parent.mkdir(parents=True, exist_ok=True)
    with WriterLock(out):
        check_outputs(outputs, overwrite, inputs, continued=outputs if resume else [lock_file(out)])
        for output in outputs:
            remove_stale_temporaries(output)  # left by a writer killed mid-write (we hold the lock: none is alive)
        connection = connect(model, state_b, images.batches(train_split, options.batch_size),
                             test_data=images.batches(test_split, options.batch_size), points=options.points,
                             align=options.align, curve=options.curve, bn=options.bn,
                             bn_data=images.batches(images.split("train", min(options.bn_images,
                                                                             len(images.dataset.train)),
                                                                 "--bn-images"), options.batch_size),
                             curve_epochs=options.curve_epochs, curve_lr=options.curve_lr, curve_state=state,
                             after_epoch=keep if options.curve != "line" and bend is None else None, bend=bend,
                             seed=options.seed, device=device, progress=progress, budget_hours=options.budget_hours)
        connection.attrs.update({"source": "run files" if a is not None else "foreign model", "a": name_a,
                                 "b": name_b, "images_used": f"the first {train_split.images.shape[0]:,} training "
                                 f"and {test_split.images.shape[0]:,} test images of {images.name}"})
        connection.save(out)
    checkpoint.unlink(missing_ok=True)
    if progress:
        line = connection.barriers["line"]["train"]["loss"]
        aligned = connection.barriers.get("aligned_line", {}).get("train", {}).get("loss", np.nan)
        print(f"connect: loss barrier on the training images: line {line:.4g}"
              + (f", aligned line {aligned:.4g}" if np.isfinite(aligned) else "")
              + (f", {options.curve} {connection.barriers['curve']['train']['loss']:.4g}" if "curve" in
                 connection.barriers else "") + f" (BatchNorm: {connection.attrs['bn']})")
    return out
