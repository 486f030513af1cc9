"""A model at many weight points: stateless copies, functional calls over stacked weights, BatchNorm modes.

Shared by surfaces (loss and metrics at grid points), curvature (the loss as a function of the
parameters), probes and sharpness. A *point* is a dict of parameter tensors; C points stacked along a
new axis 0 are evaluated in one `vmap` over `functional_call` (one pass over the data serves C points),
or directly when C is 1. The caller's model is never touched: `prepared_module` works on a skeleton, a
copy whose parameters and buffers are shape-only meta tensors (every call supplies real ones), so no
weight is duplicated in memory and the caller's weights, buffers, `training` flags and `requires_grad`
stay as they were. BatchNorm modes:
- `eval`: the running statistics given with the point (the snapshot's), as the reference code does;
- `train`: the statistics of each batch; running statistics neither used nor changed;
- `recompute`: running statistics re-estimated at the point on other training samples, then `eval`.
Dropout is always off: a surface or a Hessian is of a deterministic function.
"""
from __future__ import annotations

import copy
import warnings
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, replace_all_batch_norm_modules_, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from landscape.engine.batches import BatchSet, Objective
from landscape.errors import UsageError
from landscape.options import choose

Params = dict[str, torch.Tensor]
BN_MODES = ("eval", "train", "recompute")


def check_module(model, what: str = "model") -> nn.Module:
    """`model` must be a torch.nn.Module with at least one parameter."""
    if not isinstance(model, nn.Module):
        raise UsageError(f"{what} must be a torch.nn.Module, got {type(model).__name__}")
    if next(model.parameters(), None) is None:
        raise UsageError(f"{what} ({type(model).__name__}) has no parameters: there is no landscape to measure")
    return model


HOOK_TABLES = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")


def skeleton(model: nn.Module) -> nn.Module:
    """A deep copy of `model` whose parameters and buffers are meta tensors (shapes only), in eval mode, without the
    forward and backward hooks the user (or a framework's callback) put on it: measurements do not run them."""
    memo = {}
    for module in model.modules():
        for table in HOOK_TABLES:
            if hasattr(module, table):
                memo[id(getattr(module, table))] = type(getattr(module, table))()
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) not in memo:
            # torch.empty, not empty_like: meta empty_like goes through torch._refs, whose import costs 0.3 s
            stand_in = torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")
            memo[id(tensor)] = nn.Parameter(stand_in, tensor.requires_grad) if isinstance(tensor, nn.Parameter) \
                else stand_in
    return copy.deepcopy(model, memo).eval()


def prepared_module(model: nn.Module, bn: str) -> nn.Module:
    """A skeleton of `model` in eval mode (dropout off) with its BatchNorm layers set up for `bn`.

    `train`: BatchNorm keeps no running statistics and always normalises with the batch's own.
    `recompute`: running statistics become a cumulative average (momentum None), to be re-estimated.
    """
    choose("bn", bn, BN_MODES)
    module = skeleton(model)
    if bn == "train":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.func's helper touches deprecated torch.jit
            replace_all_batch_norm_modules_(module)
    elif bn == "recompute":
        for layer in module.modules():
            if isinstance(layer, _BatchNorm):
                layer.momentum = None
    return module


def state_of(model: nn.Module, device: torch.device | None = None) -> tuple[Params, Params]:
    """The model's parameters and buffers (detached, the caller's own tensors unless moved to `device`)."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    if device is not None:
        params = {n: p.to(device) for n, p in params.items()}
        buffers = {n: b.to(device) for n, b in buffers.items()}
    return params, buffers


def state_like(model, reference: nn.Module, what: str) -> tuple[Params, Params]:
    """Parameters and buffers of `model` (a module or a state dict) named and shaped as `reference`'s; one line
    naming the first mismatch otherwise."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    if not isinstance(state, dict):
        raise UsageError(f"{what} must be a torch.nn.Module or a state dict, got {type(model).__name__}")
    expected = reference.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        raise UsageError(f"{what} is not of model A's architecture: "
                         + (f"it lacks {', '.join(missing[:3])}" if missing else f"it has {', '.join(extra[:3])}")
                         + ": connect two models of one architecture")
    for name, value in expected.items():
        if tuple(state[name].shape) != tuple(value.shape):
            raise UsageError(f"{what} is not of model A's architecture: {name} has shape {tuple(state[name].shape)}, "
                             f"not {tuple(value.shape)}: connect two models of one architecture")
    names = {n for n, _ in reference.named_parameters()}
    params = {n: v.detach() for n, v in state.items() if n in names}
    return params, {n: v.detach() for n, v in state.items() if n not in names}


def module_buffers(module: nn.Module, buffers: Params) -> Params:
    """The entries of `buffers` that `module` still has (a `train`-mode module has no BatchNorm statistics)."""
    names = {name for name, _ in module.named_buffers()}
    return {name: value for name, value in buffers.items() if name in names}


def check_finite(params: Params, what: str) -> None:
    """Refuse weights holding NaN or infinity: every value computed from them would be NaN."""
    bad = [n for n, p in params.items() if p.is_floating_point() and not bool(torch.isfinite(p).all())]
    if bad:
        raise UsageError(f"{what} holds NaN or infinite values (in {', '.join(bad[:3])}"
                         f"{'...' if len(bad) > 3 else ''}): it diverged; take an earlier snapshot")


def flatten(params: Params, names: list[str] | None = None) -> torch.Tensor:
    """The tensors of `params` (in `names` order) as one float64 vector."""
    return torch.cat([params[n].reshape(-1).double() for n in (names or list(params))])


def unflatten(vector: torch.Tensor, like: Params) -> Params:
    """A vector back into tensors shaped (and typed) like `like`."""
    out, offset = {}, 0
    for name, value in like.items():
        out[name] = vector[offset:offset + value.numel()].view_as(value).to(value.dtype)
        offset += value.numel()
    return out


def expand_points(values: Params, count: int) -> Params:
    """The same tensors for `count` points, without copying ([count, ...] views)."""
    return {n: v.expand(count, *v.shape) for n, v in values.items()}


class FunctionalModel:
    """The module at given parameters and buffers, callable like the model (what a closure receives)."""

    def __init__(self, module: nn.Module, params: Params, buffers: Params, channels_last: bool = False):
        self.module, self.params, self.buffers, self.channels_last = module, params, buffers, channels_last

    def __call__(self, *args, **kwargs):
        if self.channels_last:
            args = tuple(a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.dim() == 4
                         else a for a in args)
        return functional_call(self.module, (self.params, self.buffers), args, kwargs)

    def __getattr__(self, name: str):
        return getattr(self.module, name)


def channels_last_params(params: Params) -> Params:
    return {n: p.contiguous(memory_format=torch.channels_last) if p.dim() == 4 else p for n, p in params.items()}


def point_values(module: nn.Module, points: Params, buffers: Params, batch, objective: Objective,
                 channels_last: bool = False) -> dict[str, torch.Tensor]:
    """The objective's values [C] at C stacked points (parameters and buffers [C, ...]) on one batch.

    One point is called directly, optionally in the channels_last memory format (1.6x faster on CPU for
    VGG-A); several go through one vmap."""
    if next(iter(points.values())).shape[0] == 1:
        params = {n: p[0] for n, p in points.items()}
        if channels_last:
            params = channels_last_params(params)
        forward = FunctionalModel(module, params, {n: b[0] for n, b in buffers.items()}, channels_last)
        return {k: v.reshape(1) for k, v in objective.values(forward, batch).items()}

    def one(p, b):
        return objective.values(FunctionalModel(module, p, b), batch)

    try:
        return vmap(one, randomness="same")(points, buffers)
    except (RuntimeError, ValueError) as exc:
        if objective.closure is None and objective.metrics is None and objective.loss is None:
            raise
        raise UsageError(f"the loss, closure or a metric cannot be evaluated at several points at once (vmap: "
                         f"{' '.join(str(exc).split())[:120]}); pass points_per_pass=1") from None


@torch.no_grad()
def check_forward(module: nn.Module, params: Params, buffers: Params, batch, objective: Objective,
                  what: str = "the model") -> dict[str, torch.Tensor]:
    """The objective's values at one point on one batch; UsageError (one line) when the model cannot take the data
    or the loss cannot take the outputs, the commonest mistake with a model and data of one's own."""
    try:
        return objective.values(FunctionalModel(module, params, buffers), batch)
    except UsageError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise UsageError(f"{what} cannot be evaluated on this data ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:160]}): check that the images (dataset, image size) and "
                         f"the loss fit the model") from None


@torch.no_grad()
def evaluate_points(module: nn.Module, points: Params, buffers: Params, batches: BatchSet, objective: Objective,
                    autocast_dtype: torch.dtype | None = None,
                    channels_last: bool = True) -> dict[str, torch.Tensor]:
    """Mean loss and metrics [C] (float64, weighted by batch size) of C stacked points over all batches."""
    device = next(iter(points.values())).device
    totals: dict[str, torch.Tensor] = {}
    for share, batch in zip(batches.shares, batches):
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            values = point_values(module, points, buffers, batch, objective, channels_last)
        for name, value in values.items():
            totals[name] = totals.get(name, 0) + share * value.double()
    return totals


def forward_inputs(objective: Objective, batch) -> Callable[[Callable], None]:
    """How to run one batch through a model without computing the loss (BatchNorm statistics)."""
    if objective.closure is not None:
        return lambda forward: objective.closure(forward, batch)
    return lambda forward: forward(batch[0])


@torch.no_grad()
def recompute_statistics(module: nn.Module, points: Params, buffers: Params, batches: BatchSet,
                         objective: Objective) -> Params:
    """Fresh running statistics for each stacked point: the cumulative average over `batches` (train mode)."""
    fresh = {}
    for name, value in buffers.items():
        if name.endswith("running_mean") or name.endswith("num_batches_tracked"):
            fresh[name] = torch.zeros_like(value).contiguous()
        elif name.endswith("running_var"):
            fresh[name] = torch.ones_like(value).contiguous()
        else:
            fresh[name] = value.clone()
    norms = [layer for layer in module.modules() if isinstance(layer, _BatchNorm)]
    for layer in norms:
        layer.train()
    try:
        for batch in batches:
            run = forward_inputs(objective, batch)
            if next(iter(points.values())).shape[0] == 1:
                run(FunctionalModel(module, {n: p[0] for n, p in points.items()}, {n: b[0] for n, b in fresh.items()}))
            else:
                vmap(lambda p, b: run(FunctionalModel(module, p, b)), randomness="same")(points, fresh)
    finally:
        for layer in norms:
            layer.eval()
    return fresh
