"""The loop engine: R copies of a model, each with its own optimizer, stepped one after another.

The reference engine: plain PyTorch, any optimizer, any model. `train_step` advances every active
run by one step on the same batch and returns the losses as a device tensor [R] (no host copy);
`evaluate` gives summed test loss and correct counts [R]. `state_dict` / `load_state_dict` hold
everything a checkpoint needs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from landscape.engine.probe import ModelProbe, ProbeResult, RngState
from landscape.files.run_file import PROBE_FIELDS


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

    def state_dict(self) -> dict:
        """Every run's weights and optimizer state, and which runs are still training."""
        return {"models": [m.state_dict() for m in self.models], "optimizers": [o.state_dict() for o in self.optimizers],
                "active": list(self.active)}

    @staticmethod
    def select(state: dict, run: int) -> dict:
        """The part of a `state_dict` that belongs to run `run`: a one-run engine's state (a branch's start)."""
        return {"models": [state["models"][run]], "optimizers": [state["optimizers"][run]], "active": [True]}

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Every run's state-dict entries stacked along a new first axis [R, ...] (copies)."""
        states = [m.state_dict() for m in self.models]
        return {k: torch.stack([s[k] for s in states]) for k in states[0]}

    def parameter_names(self) -> set[str]:
        return {n for n, _ in self.models[0].named_parameters()}

    def run_module(self, run: int) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Run `run`'s module, and its current parameters and buffers (detached, shared with training)."""
        model = self.models[run]
        return (model, {n: p.detach() for n, p in model.named_parameters()},
                {n: b.detach() for n, b in model.named_buffers()})

    def load_state_dict(self, state: dict) -> None:
        for model, optimizer, model_state, optimizer_state in zip(self.models, self.optimizers, state["models"],
                                                                   state["optimizers"]):
            model.load_state_dict(model_state)
            optimizer.load_state_dict(optimizer_state)
        self.active = list(state["active"])

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


