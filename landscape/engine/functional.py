"""Evaluating one model at many weight points: functional calls over stacked weights, BatchNorm modes.

Shared by the surfaces (loss and accuracy at grid points) and the curvature (the loss as a function
of the parameters). A *point* is a dict of parameter tensors. C points stacked along a new axis 0
are evaluated in one `vmap` over `functional_call` (one pass over the data serves C points), or
directly when C is 1. BatchNorm modes:
- `eval`: the running statistics given with the point (the snapshot's), as the reference code does;
- `train`: the statistics of each batch; running statistics neither used nor changed;
- `recompute`: running statistics re-estimated at the point on other training images, then `eval`.
Dropout is always off: a surface or a Hessian is of a deterministic function.
`snapshot_model` rebuilds a run's model and loads a weight snapshot into it; `image_batches` cuts
the images a measurement uses from the run's own dataset.
"""
from __future__ import annotations

import copy
import warnings
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, replace_all_batch_norm_modules_, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from landscape.training.config import RunConfig
from landscape.training.data import Normalizer, Split, eval_batches, load_dataset
from landscape.errors import UsageError
from landscape.training.models import build_model
from landscape.files.weights_file import Weights
from landscape.files.run_file import Run

Params = dict[str, torch.Tensor]
BN_MODES = ("eval", "train", "recompute")


def check_bn_mode(bn: str, allowed: tuple[str, ...] = BN_MODES) -> None:
    if bn not in allowed:
        raise UsageError(f"--bn {bn!r} is unknown: choose one of {', '.join(allowed)}")


def prepared_module(model: nn.Module, bn: str) -> nn.Module:
    """A copy of `model` in eval mode (dropout off) with its BatchNorm layers set up for `bn`.

    `train`: BatchNorm keeps no running statistics and always normalises with the batch's own.
    `recompute`: running statistics become a cumulative average (momentum None), to be re-estimated.
    """
    check_bn_mode(bn)
    module = copy.deepcopy(model).eval()
    if bn == "train":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.func's helper touches deprecated torch.jit
            replace_all_batch_norm_modules_(module)
    elif bn == "recompute":
        for layer in module.modules():
            if isinstance(layer, _BatchNorm):
                layer.momentum = None
    return module


def module_buffers(module: nn.Module, buffers: Params) -> Params:
    """The entries of `buffers` that `module` still has (a `train`-mode module has no BatchNorm statistics)."""
    names = {name for name, _ in module.named_buffers()}
    return {name: value for name, value in buffers.items() if name in names}


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


def stacked_logits(module: nn.Module, points: Params, buffers: Params, images: torch.Tensor,
                   channels_last: bool = False) -> torch.Tensor:
    """Logits [C, B, K] of C stacked points (parameters and buffers [C, ...]) on one batch.

    One point is called directly, optionally in the channels_last memory format (1.6x faster on CPU
    for VGG-A); several go through one vmap.
    """
    if next(iter(points.values())).shape[0] == 1:
        params = {n: p[0] for n, p in points.items()}
        if channels_last:
            params = {n: p.contiguous(memory_format=torch.channels_last) if p.dim() == 4 else p
                      for n, p in params.items()}
            images = images.contiguous(memory_format=torch.channels_last) if images.dim() == 4 else images
        single = functional_call(module, (params, {n: b[0] for n, b in buffers.items()}), (images,))
        return single.unsqueeze(0)

    def one(p, b):
        return functional_call(module, (p, b), (images,))

    return vmap(one, randomness="same")(points, buffers)


def expand_points(values: Params, count: int) -> Params:
    """The same tensors for `count` points, without copying ([count, ...] views)."""
    return {n: v.expand(count, *v.shape) for n, v in values.items()}


@torch.no_grad()
def recompute_statistics(module: nn.Module, points: Params, buffers: Params,
                         batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Params:
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
        for images, _ in batches:
            stacked_logits(module, points, fresh, images)
    finally:
        for layer in norms:
            layer.eval()
    return fresh


@torch.no_grad()
def evaluate_points(module: nn.Module, points: Params, buffers: Params,
                    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    autocast_dtype: torch.dtype | None = None,
                    channels_last: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy [C] (float64) of C stacked points over all images of `batches`."""
    count = next(iter(points.values())).shape[0]
    device = next(iter(points.values())).device
    loss_sum = torch.zeros(count, dtype=torch.float64, device=device)
    correct = torch.zeros(count, dtype=torch.float64, device=device)
    seen = 0
    for images, labels in batches:
        seen += labels.shape[0]
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            logits = stacked_logits(module, points, buffers, images, channels_last)
        logits = logits.float()
        flat = F.cross_entropy(logits.flatten(0, 1), labels.repeat(count), reduction="none")
        loss_sum += flat.view(count, -1).double().sum(dim=1)
        correct += (logits.argmax(dim=2) == labels).sum(dim=1).double()
    return loss_sum / seen, correct / seen


def snapshot_model(run: Run, weights: Weights, index: int, epoch: int,
                   device: torch.device) -> tuple[nn.Module, Params, Params]:
    """The run's architecture (random init, torch's global random state untouched) and the snapshot's
    parameters and buffers of run `index` at `epoch`, on `device`."""
    config = RunConfig.from_json(run.attrs["config"])
    with torch.random.fork_rng(devices=[]):
        model = build_model(config.model, width=config.width, num_classes=int(run.attrs["num_classes"]),
                            image_size=int(run.attrs["image_size"]), **{**config.model_options(), "pretrained": False})
    model = model.to(device)
    state = weights.state(epoch, index)
    expected = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    found = {n: tuple(v.shape) for n, v in state.items()}
    if expected != found:
        raise UsageError(f"{weights.path}: its snapshots do not fit the {config.model} of {run.path} "
                         f"(incompatible architectures); they belong to another run")
    params = {n: torch.from_numpy(state[n]).to(device) for n, _ in model.named_parameters()}
    buffers = {n: torch.from_numpy(state[n]).to(device) for n, _ in model.named_buffers()}
    return model, params, buffers


class ImageSet:
    """Images of a run's dataset for a measurement: uint8 on the device, normalised batch by batch."""

    def __init__(self, run: Run, device: torch.device, data_root: str | None = None):
        config = RunConfig.from_json(run.attrs["config"])
        self.dataset = load_dataset(config.dataset, data_root or config.data_root, device=device,
                                    train_subset=config.train_subset, seed=config.seed,
                                    image_size=int(run.attrs["image_size"]), imagenette_size=config.imagenette_size)
        self.normalize = Normalizer(self.dataset.mean, self.dataset.std, self.dataset.train.device)
        self.batch_size = config.batch_size  # the training batch size: train-mode BatchNorm statistics as in training

    def split(self, name: str, count: int | None, option: str = "--images", seed: int | None = None) -> Split:
        """The first `count` images of split `name` (train or test), or `count` drawn at random with `seed`."""
        split = self.dataset.train if name == "train" else self.dataset.test
        total = len(split)
        if count is None:
            return split
        if count > total:
            raise UsageError(f"{option} {count} exceeds the {total} {name} images of this run: give at most {total}")
        if seed is None:
            index = torch.arange(count)
        else:
            index = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:count].sort().values
        index = index.to(split.images.device)
        return Split(split.images[index], split.labels[index], split.device)

    def batches(self, split: Split, batch_size: int) -> "Batches":
        """The split's normalised batches, in order; iterable again for every pass."""
        return Batches(split, self.normalize, batch_size)


class Batches:
    """A split's normalised batches in order, cut anew (on the device) at every pass."""

    def __init__(self, split: Split, normalize: Normalizer, batch_size: int):
        self.split, self.normalize, self.batch_size = split, normalize, batch_size

    def __iter__(self):
        return eval_batches(self.split, self.normalize, self.batch_size)
