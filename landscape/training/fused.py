"""The fused engine: R runs as one stacked model, stepped together with batched optimizer maths.

Every parameter and buffer of the R copies is stacked along a new first axis ([R, ...]); one
`torch.func.vmap` over `functional_call` computes all runs' logits on the shared batch (BatchNorm
keeps each run's running statistics in its slice), one backward gives every run's gradient, and
`BatchedAdam` / `BatchedSGD` update all runs at once with a learning rate per run. Same interface
as `train.LockstepRuns`, which stays the reference: tests check the two agree.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from landscape.errors import UsageError
from landscape.engine.probe import RngState, probe_along

FUSED_OPTIMIZERS = ("sgd", "adam", "adamw")


def per_run(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Shape a [R] tensor to broadcast against a stacked [R, ...] tensor."""
    return values.view(-1, *([1] * (like.dim() - 1)))


class BatchedAdam:
    """Adam (or AdamW with `decoupled`) over stacked parameters, one learning rate per run; torch's maths."""

    def __init__(self, params: list[torch.Tensor], lrs: torch.Tensor, *, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False):
        self.params, self.lrs = params, lrs
        self.betas, self.eps, self.weight_decay, self.decoupled = betas, eps, weight_decay, decoupled
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        b1, b2 = self.betas
        bias1, bias2 = 1 - b1 ** self.steps, 1 - b2 ** self.steps
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            g, lr = p.grad, per_run(self.lrs, p)
            if self.weight_decay and self.decoupled:
                p.mul_(1 - lr * self.weight_decay)
            elif self.weight_decay:
                g = g.add(p, alpha=self.weight_decay)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / math.sqrt(bias2)).add_(self.eps)
            p.sub_(lr / bias1 * m / denom)


class BatchedSGD:
    """SGD with momentum, Nesterov and weight decay over stacked parameters, one learning rate per run."""

    def __init__(self, params: list[torch.Tensor], lrs: torch.Tensor, *, momentum: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        self.params, self.lrs = params, lrs
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov
        self.buffers: list[torch.Tensor | None] = [None] * len(params)

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            g = p.grad.add(p, alpha=self.weight_decay) if self.weight_decay else p.grad
            if self.momentum:
                if self.buffers[i] is None:
                    self.buffers[i] = g.clone()
                else:
                    self.buffers[i].mul_(self.momentum).add_(g)
                g = g.add(self.buffers[i], alpha=self.momentum) if self.nesterov else self.buffers[i]
            p.sub_(per_run(self.lrs, p) * g)


class FusedRuns:
    """R copies of `model` trained as one stacked model (see module docstring)."""

    def __init__(self, model: nn.Module, lrs: list[float], optimizer: str, *, momentum: float = 0.9,
                 weight_decay: float = 0.0, nesterov: bool = False, eps: float | None = None,
                 label_smoothing: float = 0.0, probe=None, autocast_dtype: torch.dtype | None = None):
        if optimizer not in FUSED_OPTIMIZERS:
            raise UsageError(f"--engine fused supports --optimizer {', '.join(FUSED_OPTIMIZERS)}; "
                             f"use --engine loop for {optimizer}")
        self.device = next(model.parameters()).device
        copies = [copy.deepcopy(model) for _ in lrs]
        params, buffers = stack_module_state(copies)
        self.names = list(params)
        self.params = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        self.buffers = buffers
        self.skeleton = copies[0]
        self.lrs = torch.tensor(lrs, dtype=torch.float32, device=self.device)
        self.label_smoothing = label_smoothing
        self.probe = probe
        self.autocast_dtype = autocast_dtype
        self.active = [True] * len(lrs)
        self._active_mask = torch.ones(len(lrs), dtype=torch.bool, device=self.device)
        stacked = list(self.params.values())
        if optimizer == "sgd":
            self.optimizer = BatchedSGD(stacked, self.lrs, momentum=momentum, weight_decay=weight_decay,
                                        nesterov=nesterov)
        else:
            self.optimizer = BatchedAdam(stacked, self.lrs, eps=1e-8 if eps is None else eps,
                                         weight_decay=weight_decay, decoupled=optimizer == "adamw")

    def __len__(self) -> int:
        return len(self.active)

    def stop(self, run: int) -> None:
        """Stop `run`: its learning rate becomes 0 and it reports NaN from now on."""
        self.active[run] = False
        self._active_mask[run] = False
        self.lrs[run] = 0.0

    def set_learning_rates(self, lrs: list[float]) -> list[float]:
        """Set each active run's learning rate for this epoch; return them."""
        for run, lr in enumerate(lrs):
            if self.active[run]:
                self.lrs[run] = lr
        return lrs

    def logits(self, params: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """All runs' logits [R, B, C] on the shared batch."""

        def one_run(p, b, x):
            return functional_call(self.skeleton, (p, b), (x,))

        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            logits = vmap(one_run, in_dims=(0, 0, None), randomness="different")(params, self.buffers, images)
        return logits.float() if self.autocast_dtype is not None else logits

    def run_losses(self, logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        runs, batch = logits.shape[:2]
        flat = F.cross_entropy(logits.reshape(runs * batch, -1), labels.repeat(runs), reduction="none",
                               label_smoothing=label_smoothing)
        return flat.view(runs, batch).mean(dim=1)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor,
                   probe: bool = False) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor] | None]:
        """One step of every run: (loss [R], correct [R], probes or None), all on the device."""
        rng_state = RngState(self.device) if probe else None
        for p in self.params.values():
            p.grad = None
        frozen = None if all(self.active) else {n: b.clone() for n, b in self.buffers.items()}
        logits = self.logits(self.params, images)
        losses = self.run_losses(logits, labels, self.label_smoothing)
        losses.sum().backward()  # runs are independent: each slice gets its own run's gradient
        if frozen is not None:  # a stopped run keeps its BatchNorm statistics too, not only its weights
            self.keep_stopped_buffers(frozen)
        if probe:
            weights = {n: p.detach().clone() for n, p in self.params.items()}
            grads = {n: p.grad.detach().clone() for n, p in self.params.items()}
        self.optimizer.step()
        probes = self.probe_runs(weights, grads, images, labels, rng_state) if probe else None
        hits = (logits.detach().argmax(dim=2) == labels).sum(dim=1)
        nan = torch.full_like(losses, float("nan"))
        return (torch.where(self._active_mask, losses.detach(), nan), torch.where(self._active_mask, hits, 0),
                probes)

    @torch.no_grad()
    def keep_stopped_buffers(self, frozen: dict[str, torch.Tensor]) -> None:
        """Put back the buffers (running statistics) of stopped runs as they were before this step's forward."""
        for name, buffer in self.buffers.items():
            stopped = ~self._active_mask.view(-1, *([1] * (buffer.dim() - 1)))
            buffer.copy_(torch.where(stopped, frozen[name], buffer))

    def probe_runs(self, weights, grads, images, labels, rng_state) -> dict[str, torch.Tensor]:
        """Santurkar probes of every run at once: each multiplier is one vmapped forward and backward."""
        if self.probe.direction == "update":
            direction = {n: self.params[n].detach() - weights[n] for n in self.names}
        else:
            direction = {n: -per_run(self.lrs, grads[n]) * grads[n] for n in self.names}
        saved = {n: b.clone() for n, b in self.buffers.items()}

        def loss_of(point):
            self.buffers = {n: b.clone() for n, b in saved.items()}  # running statistics: throw-away copies
            rng_state.restore()
            return self.run_losses(self.logits(point, images), labels, self.label_smoothing)

        try:
            with rng_state.forked():
                result = probe_along(loss_of, weights, grads, direction, self.probe.multipliers, per_run_axis=True)
        finally:
            self.buffers = saved
        mask = self._active_mask
        nan = float("nan")
        return {"loss": torch.where(mask[:, None], result.loss, nan),
                "grad_dist": torch.where(mask[:, None], result.grad_dist, nan),
                "distance": torch.where(mask[:, None], result.distance, nan),
                "beta": torch.where(mask, result.beta, nan), "grad_norm": torch.where(mask, result.grad_norm, nan)}

    @torch.no_grad()
    def evaluate(self, batches) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed loss and correct count [R] of every run over `batches`, in eval mode."""
        runs = len(self.active)
        loss_sum = torch.zeros(runs, device=self.device)
        correct = torch.zeros(runs, device=self.device)
        self.skeleton.eval()
        try:
            for images, labels in batches:
                logits = self.logits(self.params, images)
                loss_sum += self.run_losses(logits, labels, 0.0) * labels.shape[0]
                correct += (logits.argmax(dim=2) == labels).sum(dim=1)
        finally:
            self.skeleton.train()
        inactive = ~self._active_mask
        return loss_sum.masked_fill(inactive, float("nan")), correct.masked_fill(inactive, float("nan"))

    def state_dict(self) -> dict:
        """Stacked weights, buffers, optimizer state, rates, and which runs are still training."""
        optimizer = self.optimizer
        moments = ({"exp_avg": optimizer.exp_avg, "exp_avg_sq": optimizer.exp_avg_sq, "steps": optimizer.steps}
                   if isinstance(optimizer, BatchedAdam) else {"buffers": optimizer.buffers})
        return {"params": {n: p.detach() for n, p in self.params.items()}, "buffers": self.buffers,
                "optimizer": moments, "lrs": self.lrs, "active": list(self.active)}

    @staticmethod
    def select(state: dict, run: int) -> dict:
        """The part of a `state_dict` that belongs to run `run`: a one-run engine's state (a branch's start)."""
        def one(value):
            if isinstance(value, torch.Tensor):
                return value[run:run + 1].clone()
            if isinstance(value, dict):
                return {k: one(v) for k, v in value.items()}
            if isinstance(value, list):
                return [one(v) for v in value]
            return value  # Adam's step count, an SGD buffer not created yet (None)

        return {**{k: one(state[k]) for k in ("params", "buffers", "optimizer", "lrs")}, "active": [True]}

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Every run's parameters and buffers, stacked [R, ...] (copies)."""
        return {**{n: p.detach().clone() for n, p in self.params.items()},
                **{n: b.clone() for n, b in self.buffers.items()}}

    def parameter_names(self) -> set[str]:
        return set(self.names)

    def run_module(self, run: int) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The shared skeleton, and run `run`'s slices of the stacked parameters and buffers (detached views)."""
        return (self.skeleton, {n: p.detach()[run] for n, p in self.params.items()},
                {n: b[run] for n, b in self.buffers.items()})

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for name, value in state["params"].items():
                self.params[name].copy_(value)
            for name, value in state["buffers"].items():
                self.buffers[name].copy_(value)
            self.lrs.copy_(state["lrs"])
        for key, value in state["optimizer"].items():  # moments as saved (on the CPU): onto the engine's device
            setattr(self.optimizer, key, [v if v is None else v.to(self.device) for v in value]
                    if isinstance(value, list) else value)
        for run, active in enumerate(state["active"]):
            if not active:
                self.stop(run)
