"""The Recorder: one's own training loop into a run file and a weights file that every command reads.

    rec = landscape.Recorder("runs/mine.h5", model, optimizer, probe_every=50, sharpness_every=100,
                             sharpness_data=(images, labels), dataset="cifar10")
    for epoch in range(epochs):
        for x, y in loader:
            optimizer.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); optimizer.step()
            rec.step(loss, (x, y))                      # after optimizer.step()
        rec.epoch(test_loss=..., test_acc=...)
    rec.close()                                         # or `with landscape.Recorder(...) as rec:`

It records every step's loss (kept on the device and copied out in blocks, never one host sync per step),
optionally Santurkar probes every K steps along the optimizer's actual update, sharpness every K steps
(`engine.sharpness`: top eigenvalues by Lanczos, or with `sharpness_method` critical or directional sharpness
along the update), and weight snapshots (the start, every N epochs, the end), in the
documented run-file and weights-file schemas, each written atomically after every epoch. A pre-step hook on
each optimizer copies the weights just before a probed or measured step, so probes and sharpness are of the
weights before that step's update, on its batch, as `landscape run` records them. Nothing of training is
touched: no random stream is drawn from, no weight, buffer, gradient or mode is changed, so training is
bit-identical with and without the Recorder. Several models (one per learning rate) share one file.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from landscape.engine.batches import Objective, batch_set, check_pair, to_device
from landscape.engine.functional import prepared_module, state_of
from landscape.engine.probe import DEFAULT_MULTIPLIERS, probe_step
from landscape.engine.sharpness import ModelRuns, SharpnessTracker
from landscape.errors import UsageError
from landscape.files.atomic import check_output, remove_stale_temporaries
from landscape.files.lock import WriterLock
from landscape.files.attributes import wrong_kind
from landscape.files.run_file import CONFIG_KINDS, RunWriter
from landscape.files.weights_file import SnapshotWriter, weights_path
from landscape.integrations.tracking import send_epoch
from landscape.options import non_negative, positive
from landscape.training.records import StepLosses, probes_to_host, sharpness_to_host

OPTIMIZER_NAMES = {"SGD": "sgd", "Adam": "adam", "AdamW": "adamw", "RAdam": "radam"}


def as_list(value, what: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise UsageError(f"give at least one {what}")
    return values


class Recorder:
    """Records one's own loop (see the module docstring). `model` and `optimizer` may be lists (one per run)."""

    def __init__(self, path: str | Path, model, optimizer, *, lrs=None, overwrite: bool = False,
                 log_every: int = 50, probe_every: int = 0, probe_multipliers=DEFAULT_MULTIPLIERS,
                 probe_bn: str = "train", loss=None, closure=None, sharpness_every: int = 0, sharpness_data=None,
                 sharpness_images: int = 2048, sharpness_top_k: int = 1, sharpness_iters: int = 20,
                 sharpness_warm: bool = False, sharpness_cold_iters: int = 20, sharpness_check_every: int = 0,
                 sharpness_method: str = "lanczos",
                 snapshot_every: int = 1,
                 snapshots: bool = True, epochs: int | None = None, batch_size: int | None = None,
                 dataset: str | None = None, data_root: str | None = None, model_def: str | None = None,
                 seed: int = 0, config: dict | None = None, log=None):
        self.models = as_list(model, "model")
        self.optimizers = as_list(optimizer, "optimizer")
        for m in self.models:
            if not isinstance(m, nn.Module):
                raise UsageError(f"model must be a torch.nn.Module (or a list of them), got {type(m).__name__}")
        for o in self.optimizers:
            if not isinstance(o, torch.optim.Optimizer):
                raise UsageError(f"optimizer must be a torch.optim.Optimizer (or a list), got {type(o).__name__}")
        if len(self.models) != len(self.optimizers):
            raise UsageError(f"give one optimizer per model ({len(self.models)} models, {len(self.optimizers)} "
                             f"optimizers)")
        shapes = [{n: tuple(t.shape) for n, t in m.state_dict().items()} for m in self.models]
        if any(s != shapes[0] for s in shapes):
            raise UsageError("the models of one Recorder must share one architecture (one run per learning rate)")
        for option, value in (("log_every", log_every), ("snapshot_every", snapshot_every)):
            positive(option, value)
        for option, value in (("probe_every", probe_every), ("sharpness_every", sharpness_every)):
            non_negative(option, value)
        self.lrs = [float(x) for x in (lrs if lrs is not None else [o.param_groups[0]["lr"] for o in self.optimizers])]
        if len(self.lrs) != len(self.models):
            raise UsageError(f"lrs has {len(self.lrs)} rates for {len(self.models)} models")
        self.path = Path(path)
        check_output(self.path, overwrite)
        self.device = next(self.models[0].parameters()).device
        self.objective = Objective(loss=loss, closure=closure, metrics={})
        self.probe_every, self.multipliers = probe_every, tuple(float(m) for m in probe_multipliers)
        if probe_every and (not self.multipliers or any(not 0 < m < float("inf") for m in self.multipliers)):
            raise UsageError("probe_multipliers must be positive finite numbers, e.g. (0.5, 1, 2)")
        self.probe_module = prepared_module(self.models[0], probe_bn) if probe_every else None
        self.sharpness_every = sharpness_every
        self.tracker = None
        if sharpness_every:
            if sharpness_data is None:
                raise UsageError("sharpness_every needs sharpness_data: a DataLoader or (inputs, targets) of the "
                                 "samples to measure on, or 'batch' for each measured step's own batch")
            batches = None if isinstance(sharpness_data, str) and sharpness_data == "batch" else \
                batch_set(sharpness_data, device=self.device, objective=self.objective, images=sharpness_images,
                          what="sharpness_data")
            self.tracker = SharpnessTracker(batches, top_k=sharpness_top_k, steps=sharpness_iters,
                                            cold_steps=sharpness_cold_iters, seed=seed, warm=sharpness_warm,
                                            check_every=sharpness_check_every, objective=self.objective,
                                            images=batches.samples if batches is not None else "batch",
                                            method=sharpness_method, dash="")
        self.snapshot_every, self.epochs_planned = snapshot_every, epochs
        optimizer_name = OPTIMIZER_NAMES.get(type(self.optimizers[0]).__name__, type(self.optimizers[0]).__name__)
        group = self.optimizers[0].param_groups[0]
        recorded = {"model": type(self.models[0]).__name__, "optimizer": optimizer_name, "lrs": self.lrs,
                    "momentum": float(group.get("momentum", 0.0) or 0.0), "nesterov": bool(group.get("nesterov")),
                    "weight_decay": float(group.get("weight_decay", 0.0) or 0.0), "batch_size": batch_size,
                    "epochs": epochs, "seed": seed, "dataset": dataset, "data_root": data_root,
                    "probe_every": probe_every, "probe_direction": "update", "sharpness_every": sharpness_every,
                    "snapshot_every": snapshot_every, "source": "recorder", **(config or {})}
        if wrong_kind(recorded, CONFIG_KINDS):  # what readers of the run file convert must be of its kind
            raise UsageError(f"config: {wrong_kind(recorded, CONFIG_KINDS)}; give it as such, or under another key")
        if log is not None and not callable(log):
            raise UsageError(f"log must be a callable of (name, value, step), e.g. SummaryWriter(...).add_scalar; "
                             f"got {type(log).__name__}")
        self.log, self.recorded = log, recorded
        model = self.models[0]
        self.lock = WriterLock(self.path).__enter__()
        try:
            check_output(self.path, overwrite)  # again, now that no other writer can slip in
            for leftover in (self.path, weights_path(self.path)):
                remove_stale_temporaries(leftover)
            self.writer = RunWriter(self.path, config_json=json.dumps(recorded, sort_keys=True, default=str),
                                    lrs=self.lrs, attrs={
                "model": type(model).__name__, "dataset": dataset or "", "device": str(self.device),
                "torch_version": torch.__version__, "source": "recorder", "model_def": model_def or "",
                "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "model_size_mb": sum(t.numel() * t.element_size() for t in list(model.parameters()) +
                                     list(model.buffers())) / 2 ** 20,
                "engine": "Recorder", "host": platform.node(), "threads": torch.get_num_threads(),
                **({"weights_file": weights_path(self.path).name} if snapshots else {})},
                probe_multipliers=list(self.multipliers) if probe_every else None, probe_direction="update",
                sharpness=self.tracker.attrs if self.tracker is not None else None)
            self.writer.create(overwrite)
            weights_path(self.path).unlink(missing_ok=True)
            self.snapshots = SnapshotWriter(weights_path(self.path), run_file=self.path.name, lrs=self.lrs,
                                            config_json=self.writer.attrs["config"], model=type(model).__name__) \
                if snapshots else None
        except BaseException:
            self.lock.__exit__(None, None, None)
            raise
        self.global_step = self.epochs_done = 0
        self.log_every = log_every
        self.step_losses = StepLosses(self.device)
        self.correct = torch.zeros(len(self.models), device=self.device)
        self.counted = 0
        self.probe_steps, self.probe_values = [], []
        self.sharp_steps, self.sharp_values = [], []
        self.before: list[dict | None] = [None] * len(self.models)  # weights just before a probed/measured step
        self.diverged = np.full(len(self.models), -1, dtype=np.int64)
        self.best_acc = np.full(len(self.models), np.nan)
        self.best_epoch = np.zeros(len(self.models), dtype=np.int32)
        self.started = time.perf_counter()
        self.closed = False
        self.hooks = [o.register_step_pre_hook(self.pre_step_hook(r)) for r, o in enumerate(self.optimizers)]
        if self.snapshots is not None:
            self.save_snapshot()  # the initialisation: epoch 0

    # ------------------------------------------------------------------ the loop's calls

    def due(self, step: int) -> bool:
        """Whether step `step` is probed or measured (its pre-step weights are needed)."""
        return bool((self.probe_every and step % self.probe_every == 0) or
                    (self.sharpness_every and step % self.sharpness_every == 0))

    def pre_step_hook(self, run: int):
        def hook(optimizer, args, kwargs) -> None:
            if self.due(self.global_step):
                self.before[run] = {n: p.detach().clone() for n, p in self.models[run].named_parameters()}
        return hook

    def step(self, loss, batch=None, outputs=None) -> None:
        """Record one step, right after `optimizer.step()`: its loss (a tensor, or one per model), the batch it was
        computed on (needed for probes and for sharpness on the step's batch) and optionally the outputs (for the
        training accuracy, with batch = (inputs, targets))."""
        if self.closed:
            raise UsageError("the Recorder is closed: make a new one to record more")
        losses = as_list(loss, "loss")
        if len(losses) != len(self.models):
            raise UsageError(f"give one loss per model ({len(self.models)}), got {len(losses)}")
        self.step_losses.add(torch.stack([torch.as_tensor(v, device=self.device).detach().float().reshape(())
                                          for v in losses]))
        if outputs is not None and batch is not None:
            targets = batch[1]
            outs = as_list(outputs, "outputs")
            self.correct += torch.stack([(o.detach().argmax(-1) == targets).sum() for o in outs]).float()
            self.counted += len(targets)
        step = self.global_step
        if self.due(step):
            if any(b is None for b in self.before):
                raise UsageError("Recorder.step() is called after optimizer.step(): no optimizer stepped since the "
                                 "last call")
            if batch is None and (self.probe_every or (self.tracker is not None and self.tracker.batches is None)):
                raise UsageError("probes and sharpness on the step's batch need it: rec.step(loss, batch)")
            device_batch = to_device(batch, self.device) if batch is not None else None
            if self.probe_every and step % self.probe_every == 0:
                self.probe(step, device_batch)
            if self.tracker is not None and step % self.sharpness_every == 0:
                self.sharp_steps.append(step)
                self.sharp_values.append(self.tracker.measure_after(
                    ModelRuns(self.models), self.before, step, device_batch if self.tracker.batches is None else None,
                    [o.param_groups[0]["lr"] for o in self.optimizers]))
            self.before = [None] * len(self.models)
        self.global_step += 1
        if self.global_step % self.log_every == 0:
            self.step_losses.send()

    def probe(self, step: int, batch) -> None:
        """Santurkar's probe of every model along the update it just took, at the weights before it."""
        check_pair(batch, self.objective)
        results = []
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            for model, before in zip(self.models, self.before):
                params, buffers = state_of(model)
                update = {n: params[n] - before[n] for n in before}
                result = probe_step(self.probe_module, {**params, **before}, buffers, batch, update, self.multipliers,
                                    self.objective)
                results.append(result)
        self.probe_steps.append(step)
        self.probe_values.append({name: torch.stack([getattr(r, name) for r in results])
                                  for name in ("loss", "grad_dist", "distance", "beta", "grad_norm")})

    def epoch(self, *, test_loss=None, test_acc=None, train_acc=None) -> None:
        """Close an epoch: its step losses, the learning rates, and the test numbers you give (a value, or one per
        model); the run file is rewritten (atomically) and a snapshot taken every `snapshot_every` epochs."""
        runs = len(self.models)
        blocks = self.step_losses.drain()
        losses = np.concatenate(blocks, axis=1) if blocks else np.zeros((runs, 0), dtype=np.float32)

        def per_run(value, name: str) -> np.ndarray:
            if value is None:
                return np.full(runs, np.nan)
            values = np.asarray([float(v) for v in as_list(value, name)], dtype=np.float64)
            if values.shape != (runs,):
                raise UsageError(f"{name}: give one value, or one per model ({runs})")
            return values

        acc = per_run(test_acc, "test_acc")
        better = np.nan_to_num(acc, nan=-np.inf) > np.nan_to_num(self.best_acc, nan=-np.inf)
        self.best_acc = np.where(better, acc, self.best_acc)
        self.best_epoch = np.where(better, self.epochs_done + 1, self.best_epoch)
        measured_acc = (self.correct.cpu().numpy() / self.counted) if self.counted else np.full(runs, np.nan)
        for run in range(runs):
            bad = np.flatnonzero(~np.isfinite(losses[run]))
            if self.diverged[run] < 0 and bad.size:
                self.diverged[run] = self.writer.train_loss.shape[1] + bad[0]
        metrics = {"lr": np.asarray([o.param_groups[0]["lr"] for o in self.optimizers], dtype=np.float64),
                   "train_loss": losses.mean(axis=1) if losses.shape[1] else np.full(runs, np.nan),
                   "train_acc": per_run(train_acc, "train_acc") if train_acc is not None else measured_acc,
                   "test_loss": per_run(test_loss, "test_loss"), "test_acc": acc,
                   "best_test_acc": self.best_acc, "best_epoch": self.best_epoch}
        probes = probes_to_host(self.probe_steps, self.probe_values) if self.probe_every else None
        sharpness = sharpness_to_host(self.sharp_steps, self.sharp_values) if self.tracker is not None else None
        first_step = self.writer.train_loss.shape[1]
        self.writer.append_epoch(step_losses=losses, epoch=self.epochs_done, metrics=metrics,
                                 wall_time=time.perf_counter() - self.started, diverged_step=self.diverged,
                                 stopped_epoch=np.full(runs, -1, dtype=np.int64), probes=probes, sharpness=sharpness)
        if self.log is not None:  # the same numbers, now on the host, to the user's tracker
            send_epoch(self.log, self.lrs, self.recorded, first_step, losses, probes, sharpness)
        self.probe_steps, self.probe_values, self.sharp_steps, self.sharp_values = [], [], [], []
        self.correct.zero_()
        self.counted = 0
        self.epochs_done += 1
        if self.snapshots is not None and self.epochs_done % self.snapshot_every == 0:
            self.save_snapshot()

    def save_snapshot(self) -> None:
        states = [m.state_dict() for m in self.models]
        tensors = {k: torch.stack([s[k].detach() for s in states]).cpu().numpy() for k in states[0]}
        names = {n for n, _ in self.models[0].named_parameters()}
        self.snapshots.add(self.epochs_done, self.writer.train_loss.shape[1], tensors, names)

    def close(self, status: str = "complete", message: str = "") -> Path:
        """Finish: steps since the last epoch() become a last epoch, the final weights a snapshot, the status set."""
        if self.closed:
            return self.path
        try:
            if self.step_losses.pending or self.step_losses.in_flight:
                self.epoch()
            elif self.snapshots is not None and self.epochs_done % self.snapshot_every:
                self.save_snapshot()  # the end
            self.writer.set_status(status, message)
        finally:
            for hook in self.hooks:
                hook.remove()
            self.closed = True
            self.lock.__exit__(None, None, None)
        return self.path

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, kind, exc, traceback) -> None:
        if kind is None:
            self.close()
        elif issubclass(kind, KeyboardInterrupt):
            self.close("interrupted", "stopped by Ctrl-C")
        else:
            self.close("failed", f"{kind.__name__}: {' '.join(str(exc).split())[:200]}")
