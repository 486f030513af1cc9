"""Training R runs (one per learning rate) in lockstep and recording them into one HDF5 file.

All runs start from the same initial weights and see the same batch at every step, so they
differ only by learning rate. `LockstepRuns` is the engine: it advances every run by one step and
returns the step's losses as a device tensor [R]; `train` drives it over epochs, copies losses to
the host in blocks of `log_every` steps (never per step), checks for divergence there, evaluates
after each epoch and appends everything to the run file.
"""
from __future__ import annotations

import copy
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from landscape.config import RunConfig, format_lrs
from landscape.data import Dataset, Normalizer, eval_batches, load_dataset, steps_per_epoch, train_batches
from landscape.errors import RunFailed, UsageError
from landscape.fused import FusedRuns
from landscape.models import build_model, check_model_options, count_parameters, model_size_mb
from landscape.optim import lr_at_epoch, make_optimizer
from landscape.probe import ModelProbe, ProbeResult, RngState
from landscape.store import PROBE_FIELDS, RunWriter


class LockstepRuns:
    """R copies of one model, each with its own optimizer, stepped one after another on one batch."""

    def __init__(self, models: list[nn.Module], optimizers: list[torch.optim.Optimizer],
                 probe: ModelProbe | None = None, label_smoothing: float = 0.0,
                 autocast_dtype: torch.dtype | None = None, channels_last: bool = False, compile: bool = False):
        self.models = models
        self.optimizers = optimizers
        self.probe = probe
        self.label_smoothing = label_smoothing
        self.autocast_dtype = autocast_dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            for model in models:
                model.to(memory_format=torch.channels_last)
        self.forwards = [torch.compile(m) for m in models] if compile else models
        self.active = [True] * len(models)
        self.device = next(models[0].parameters()).device
        self._nan = torch.tensor(float("nan"), device=self.device)
        self._zero = torch.tensor(0, device=self.device)

    def __len__(self) -> int:
        return len(self.models)

    def stop(self, run: int) -> None:
        """Stop stepping `run` (it diverged or stopped early); it reports NaN from now on."""
        self.active[run] = False

    def set_learning_rates(self, lrs: list[float]) -> list[float]:
        """Set each run's learning rate (the schedule's value for this epoch); return them."""
        for optimizer, lr in zip(self.optimizers, lrs):
            for group in optimizer.param_groups:
                group["lr"] = lr
        return lrs

    def train_step(self, images: torch.Tensor, labels: torch.Tensor,
                   probe: bool = False) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor] | None]:
        """One optimizer step of every active run, on device: (loss [R], correct predictions [R], probes).

        With `probe`, each run is also probed around this step (probes: name -> [R, J] or [R]; NaN rows
        for stopped runs); training itself is the same with or without.
        """
        losses, hits, probes = [], [], []
        images = images.contiguous(memory_format=self.memory_format)
        for run, (model, optimizer) in enumerate(zip(self.models, self.optimizers)):
            if not self.active[run]:
                losses.append(self._nan)
                hits.append(self._zero)
                probes.append(None)
                continue
            rng_state = RngState(self.device) if probe else None
            with self.autocast():
                logits = self.forwards[run](images)
            loss = F.cross_entropy(logits.float() if self.autocast_dtype else logits, labels,
                                   label_smoothing=self.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            snapshot = self.probe.before_step(model) if probe else None
            optimizer.step()
            if probe:
                lr = optimizer.param_groups[0]["lr"]
                probes.append(self.probe.after_step(model, snapshot, lr, images, labels, rng_state,
                                                    self.label_smoothing))
            losses.append(loss.detach())
            hits.append((logits.detach().argmax(1) == labels).sum())
        return torch.stack(losses), torch.stack(hits), stack_probes(probes) if probe else None

    def autocast(self):
        """bf16 autocast when asked for, else a no-op context."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    @torch.no_grad()
    def evaluate(self, batches) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed loss and correct count [R] of every run over `batches`, in eval mode."""
        runs = len(self.models)
        loss_sum = torch.zeros(runs, device=self._nan.device)
        correct = torch.zeros(runs, device=self._nan.device)
        for model in self.models:
            model.eval()
        for images, labels in batches:
            images = images.contiguous(memory_format=self.memory_format)
            for run, forward in enumerate(self.forwards):
                if self.active[run]:
                    with self.autocast():
                        logits = forward(images)
                    loss_sum[run] += F.cross_entropy(logits.float(), labels, reduction="sum")
                    correct[run] += (logits.argmax(1) == labels).sum()
        for model in self.models:
            model.train()
        inactive = torch.tensor([not a for a in self.active], device=loss_sum.device)
        return loss_sum.masked_fill(inactive, float("nan")), correct.masked_fill(inactive, float("nan"))


def stack_probes(results: list[ProbeResult | None]) -> dict[str, torch.Tensor]:
    """Per-run probe results into tensors [R, ...], NaN for runs that were not probed."""
    template = next(r for r in results if r is not None)
    stacked = {}
    for name in PROBE_FIELDS:
        like = getattr(template, name)
        stacked[name] = torch.stack([getattr(r, name) if r is not None else torch.full_like(like, float("nan"))
                                     for r in results])
    return stacked


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available; 'cuda' without a GPU is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but torch sees no CUDA GPU: use --device cpu or auto")
    return torch.device(name)


def check_output(out: Path, overwrite: bool) -> None:
    """Raise UsageError if `out` cannot be written, without touching the disk."""
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder: give a file path such as {out / 'run.h5'}")
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists: pass --overwrite to replace it, or choose another --out")
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to {out.parent}: {ancestor} is not a writable folder; choose another --out")


Engine = LockstepRuns | FusedRuns


def build_runs(config: RunConfig, dataset: Dataset, device: torch.device) -> tuple[Engine, nn.Module]:
    """The engine holding R identical copies of the model (initialised from `config.seed`), and that model."""
    torch.manual_seed(config.seed)
    base = build_model(config.model, width=config.width, num_classes=dataset.num_classes,
                       image_size=dataset.image_size, **config.model_options()).to(device)
    probe = ModelProbe(config.probe_multipliers, config.probe_direction) if config.probe_every else None
    precision = config.precision if config.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    autocast_dtype = torch.bfloat16 if precision == "bf16" else None
    if choose_engine(config, device) == "fused":
        return FusedRuns(base, list(config.lrs), config.optimizer, momentum=config.momentum,
                         weight_decay=config.weight_decay, nesterov=config.nesterov, eps=config.eps,
                         label_smoothing=config.label_smoothing, probe=probe, autocast_dtype=autocast_dtype), base
    models = [copy.deepcopy(base) for _ in config.lrs]
    optimizers = [make_optimizer(config.optimizer, m.parameters(), lr=lr, momentum=config.momentum,
                                 weight_decay=config.weight_decay, nesterov=config.nesterov, eps=config.eps)
                  for m, lr in zip(models, config.lrs)]
    return LockstepRuns(models, optimizers, probe, config.label_smoothing, autocast_dtype=autocast_dtype,
                        channels_last=config.channels_last, compile=config.compile), base


def choose_engine(config: RunConfig, device: torch.device) -> str:
    """`--engine auto` is the loop: on CPU it measured faster than fused (benchmarks/bench_speed.py)."""
    return "loop" if config.engine == "auto" else config.engine


class Progress:
    """One status line on stderr: rewritten in place on a terminal, one line per epoch otherwise."""

    def __init__(self, config: RunConfig, steps: int, enabled: bool = True):
        self.config, self.steps, self.enabled = config, steps, enabled
        self.live = enabled and sys.stderr.isatty()

    def step(self, epoch: int, step: int, last_losses: np.ndarray) -> None:
        if self.live:
            losses = " ".join(f"{v:.3f}" for v in last_losses)
            sys.stderr.write(f"\repoch {epoch + 1}/{self.config.epochs} step {step}/{self.steps} "
                             f"loss[{format_lrs(self.config.lrs)}] {losses}\033[K")
            sys.stderr.flush()

    def epoch(self, epoch: int, test_acc: np.ndarray, seconds: float) -> None:
        if self.enabled:
            accs = " ".join(f"{a:.3f}" for a in test_acc)
            line = (f"epoch {epoch + 1}/{self.config.epochs} done in {seconds:.1f}s, "
                    f"test acc[{format_lrs(self.config.lrs)}] {accs}")
            sys.stderr.write(f"\r{line}\033[K\n" if self.live else f"{line}\n")
            sys.stderr.flush()


class StepLosses:
    """Step losses on their way to the host: stacked in blocks, copied without waiting, read when landed.

    On CUDA each block is copied into pinned memory with `non_blocking=True` and an event marks its
    arrival, so the training loop never waits for the GPU inside an epoch; `landed()` hands over the
    blocks whose copy has finished, `drain()` waits for the rest (at the epoch's end). On CPU the
    copies are immediate.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending: list[torch.Tensor] = []
        self.in_flight: list[tuple[torch.Tensor, torch.cuda.Event | None]] = []

    def add(self, losses: torch.Tensor) -> None:
        self.pending.append(losses)

    def send(self) -> None:
        """Start copying the pending steps to the host as one [R, k] block."""
        if not self.pending:
            return
        block = torch.stack(self.pending, dim=1)
        self.pending.clear()
        host = torch.empty(block.shape, dtype=block.dtype, pin_memory=self.cuda)
        host.copy_(block, non_blocking=self.cuda)
        event = torch.cuda.Event() if self.cuda else None
        if event is not None:
            event.record()
        self.in_flight.append((host, event))

    def landed(self) -> list[np.ndarray]:
        """Blocks whose copy has finished, oldest first, as numpy [R, k]."""
        done = []
        while self.in_flight and (self.in_flight[0][1] is None or self.in_flight[0][1].query()):
            done.append(self.in_flight.pop(0)[0].numpy())
        return done

    def drain(self) -> list[np.ndarray]:
        """Send what is pending and wait for every block."""
        self.send()
        for _, event in self.in_flight:
            if event is not None:
                event.synchronize()
        return self.landed()


class EarlyStopping:
    """Per-run early stopping on test accuracy: stop after `patience` epochs without a gain above `min_delta`.

    Report 004: patience 5, min_delta 0.1% (0.001). patience 0 never stops.
    """

    def __init__(self, runs: int, patience: int, min_delta: float):
        self.patience, self.min_delta = patience, min_delta
        self.best = np.full(runs, -np.inf)
        self.waited = np.zeros(runs, dtype=np.int64)

    def update(self, test_acc: np.ndarray) -> np.ndarray:
        """Take one epoch's accuracies; return a bool mask of runs to stop now (NaN never improves)."""
        improved = np.nan_to_num(test_acc, nan=-np.inf) > self.best + self.min_delta
        self.best = np.where(improved, test_acc, self.best)
        self.waited = np.where(improved, 0, self.waited + 1)
        return (self.waited >= self.patience) if self.patience else np.zeros_like(improved)


def train(config: RunConfig, out: str | Path, *, overwrite: bool = False, download: bool = False,
          progress: bool = True) -> Path:
    """Train one run per learning rate in lockstep and record them in the HDF5 file `out`.

    Bad options, data or output paths raise UsageError before anything is written.
    """
    out = Path(out)
    config.validate()
    check_model_options(config.model, config.model_options())
    check_output(out, overwrite)
    device = resolve_device(config.device)
    dataset = load_dataset(config.dataset, config.data_root, device=device, train_subset=config.train_subset,
                           download=download, seed=config.seed, image_size=config.image_size,
                           imagenette_size=config.imagenette_size)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    runs, base = build_runs(config, dataset, device)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = RunWriter(out)
    writer.create(config_json=config.to_json(), lrs=list(config.lrs), overwrite=overwrite, attrs={
        "model": config.model, "dataset": config.dataset, "device": str(device),
        "torch_version": torch.__version__, "parameters": count_parameters(base),
        "model_size_mb": model_size_mb(base), "engine": type(runs).__name__, "image_size": dataset.image_size,
        "num_classes": dataset.num_classes, "steps_per_epoch": steps_per_epoch(len(dataset.train), config.batch_size),
        "train_images": len(dataset.train), "test_images": len(dataset.test), "host": platform.node(),
    }, probe_multipliers=list(config.probe_multipliers) if config.probe_every else None,
        probe_direction=config.probe_direction)
    try:
        outcome = record_epochs(config, dataset, runs, writer, progress)
    except KeyboardInterrupt:
        writer.set_status("interrupted", "stopped by the user")
        raise RunFailed(f"interrupted; epochs completed so far are kept in {out}") from None
    except OSError as exc:
        try:
            writer.set_status("failed", str(exc))
        except OSError:
            pass
        raise RunFailed(f"could not write {out} ({exc}); the epochs written before are kept") from None
    except BaseException as exc:
        writer.set_status("failed", f"{type(exc).__name__}: {exc}")
        raise
    writer.set_status("complete", outcome)
    return out


def record_epochs(config: RunConfig, dataset: Dataset, runs: Engine, writer: RunWriter,
                  progress_on: bool) -> str:
    """The training loop: every epoch, step all runs, copy losses out in blocks, evaluate, append.

    Returns a note on runs that diverged or stopped early ('' if none).
    """
    normalize = Normalizer(dataset.mean, dataset.std, dataset.train.device)
    steps = steps_per_epoch(len(dataset.train), config.batch_size)
    diverged_step = np.full(len(runs), -1, dtype=np.int64)
    stopped_epoch = np.full(len(runs), -1, dtype=np.int64)
    early = EarlyStopping(len(runs), config.patience, config.min_delta)
    best_acc = np.full(len(runs), np.nan)
    best_epoch = np.zeros(len(runs), dtype=np.int32)
    progress = Progress(config, steps, progress_on)
    start = time.perf_counter()
    global_step = 0
    for epoch in range(config.epochs):
        if not any(runs.active):
            break
        epoch_start = time.perf_counter()
        lrs = runs.set_learning_rates([lr_at_epoch(lr, epoch, schedule=config.schedule, epochs=config.epochs,
                                                   step_size=config.step_size, gamma=config.gamma,
                                                   milestones=config.milestones, cosine_extra=config.cosine_extra,
                                                   warmup_epochs=config.warmup_epochs) for lr in config.lrs])
        step_losses = StepLosses(dataset.train.device)
        blocks: list[np.ndarray] = []
        correct = torch.zeros(len(runs), device=dataset.train.device)
        probe_steps: list[int] = []
        probe_values: list[dict[str, torch.Tensor]] = []

        def take(landed: list[np.ndarray]) -> None:
            for block in landed:  # the only host copies of step losses
                mark_divergence(block, global_step + sum(b.shape[1] for b in blocks), runs, diverged_step)
                blocks.append(block)
                progress.step(epoch, sum(b.shape[1] for b in blocks), block[:, -1])

        batches = train_batches(dataset.train, normalize, batch_size=config.batch_size, seed=config.seed,
                                epoch=epoch, augment=config.augment)
        for step, (images, labels) in enumerate(batches):
            probing = bool(config.probe_every) and (global_step + step) % config.probe_every == 0
            losses, hits, probes = runs.train_step(images, labels, probe=probing)
            if probes is not None:
                probe_steps.append(global_step + step)
                probe_values.append(probes)
            step_losses.add(losses)
            correct += hits
            if (step + 1) % config.log_every == 0:
                step_losses.send()
                take(step_losses.landed())
        take(step_losses.drain())
        epoch_losses = np.concatenate(blocks, axis=1)
        trained = np.array(runs.active)  # runs that trained through this epoch
        test_loss, test_correct = runs.evaluate(eval_batches(dataset.test, normalize, config.eval_batch_size))
        test_acc = test_correct.cpu().numpy() / len(dataset.test)
        stop_now = early.update(test_acc) & trained
        for run in np.flatnonzero(stop_now):
            runs.stop(run)
            stopped_epoch[run] = epoch + 1
        better = np.nan_to_num(test_acc, nan=-np.inf) > np.nan_to_num(best_acc, nan=-np.inf)
        best_acc = np.where(better, test_acc, best_acc)
        best_epoch = np.where(better, epoch + 1, best_epoch)
        metrics = {
            "lr": np.where(trained, lrs, np.nan),
            "train_loss": epoch_losses.mean(axis=1),
            "train_acc": np.where(trained, correct.cpu().numpy() / trained_images(len(dataset.train), config.batch_size),
                                  np.nan),
            "test_loss": test_loss.cpu().numpy() / len(dataset.test),
            "test_acc": test_acc,
            "best_test_acc": best_acc,
            "best_epoch": best_epoch,
        }
        global_step += epoch_losses.shape[1]
        writer.append_epoch(step_losses=epoch_losses, epoch=epoch, metrics=metrics,
                            wall_time=time.perf_counter() - start, diverged_step=diverged_step,
                            stopped_epoch=stopped_epoch,
                            probes=probes_to_host(probe_steps, probe_values) if config.probe_every else None)
        progress.epoch(epoch, metrics["test_acc"], time.perf_counter() - epoch_start)
    notes = [f"diverged: lr={','.join(f'{config.lrs[r]:g}' for r in np.flatnonzero(diverged_step >= 0))}"
             if (diverged_step >= 0).any() else "",
             f"stopped early: lr={','.join(f'{config.lrs[r]:g}' for r in np.flatnonzero(stopped_epoch >= 0))}"
             if (stopped_epoch >= 0).any() else ""]
    return "; ".join(n for n in notes if n)


def probes_to_host(steps: list[int], values: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """An epoch's probes, one device-to-host copy per measure: step [P] and name -> [R, P(, J)]."""
    host = {"step": np.asarray(steps, dtype=np.int64)}
    for name in PROBE_FIELDS:
        host[name] = torch.stack([v[name] for v in values], dim=1).cpu().numpy() if values else None
    return host


def trained_images(n: int, batch_size: int) -> int:
    """Images seen per epoch (all of them, less a dropped trailing batch of one)."""
    return min(n, steps_per_epoch(n, batch_size) * batch_size)


def mark_divergence(block: np.ndarray, first_step: int, runs: Engine, diverged_step: np.ndarray) -> None:
    """Find runs whose loss turned non-finite in `block`, stop them, and NaN their later losses (in place)."""
    for run in range(block.shape[0]):
        bad = np.flatnonzero(~np.isfinite(block[run]))
        if runs.active[run] and bad.size:
            diverged_step[run] = first_step + bad[0]
            runs.stop(run)
        if diverged_step[run] >= 0:
            block[run, max(0, diverged_step[run] - first_step):] = np.nan

