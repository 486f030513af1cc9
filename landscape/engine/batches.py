"""The user's data and loss, as the engine sees them: a fixed set of batches and an objective.

`batch_set(data, ...)` takes a `torch.utils.data.DataLoader`, a map-style `Dataset`, any iterable of
batches, or a pair of tensors `(inputs, targets)`, reads it once (up to `images` samples), moves every
tensor to the device and keeps the batches in order, so every pass over them (each grid point, each
Hessian-vector product) sees the same samples. A `BatchSet` is iterable again and knows each batch's
size, the weight of its mean loss in the mean over all samples.

`Objective` turns a batch into the loss and metrics at one point of weight space: with `loss(outputs,
targets) -> mean scalar` (default cross-entropy) the batch is a pair and `metrics` (default: accuracy
when targets are class indices) are callables of the same form; with `closure(model, batch)` the batch
can be anything (dicts, several inputs) and the closure calls `model(...)` itself and returns the mean
loss, or a dict with `loss` and metrics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

from landscape.errors import UsageError

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DEVICE_SHARE = 0.5  # batches may take at most this share of the device's free memory


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [B, K] against class indices [B]."""
    return F.cross_entropy(outputs, targets)


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose largest output is the target class."""
    return (outputs.argmax(dim=-1) == targets).float().mean()


def is_classification(outputs: torch.Tensor, targets: torch.Tensor) -> bool:
    """Outputs with a class axis and integer targets of one fewer axis: accuracy applies."""
    return outputs.dim() == targets.dim() + 1 and not targets.is_floating_point() and not targets.is_complex()


def as_float(outputs):
    """Low-precision floating outputs (autocast) in float32 before the loss."""
    if isinstance(outputs, torch.Tensor) and outputs.dtype in (torch.bfloat16, torch.float16):
        return outputs.float()
    return outputs


@dataclass
class Objective:
    """What one batch contributes at one point: the mean loss and metrics (see the module docstring)."""

    loss: Loss | None = None
    closure: Callable | None = None
    metrics: dict[str, Loss] | None = None  # None: accuracy when it applies
    names: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.loss is not None and self.closure is not None:
            raise UsageError("give loss (a function of outputs and targets) or closure (a function of model and "
                             "batch), not both")
        for name, value in (("loss", self.loss), ("closure", self.closure)):
            if value is not None and not callable(value):
                raise UsageError(f"{name} must be callable, got {type(value).__name__}")
        if self.metrics is not None:
            if not isinstance(self.metrics, dict) or not all(isinstance(k, str) and callable(v)
                                                             for k, v in self.metrics.items()):
                raise UsageError("metrics must be a dict of name -> function(outputs, targets) returning the mean")
            if "loss" in self.metrics:
                raise UsageError("metrics may not be called 'loss': that name is the loss itself")

    def values(self, forward: Callable, batch) -> dict[str, torch.Tensor]:
        """{'loss': mean loss, metric: mean value...} of one batch, `forward` standing for the model at the point."""
        if self.closure is not None:
            out = self.closure(forward, batch)
            if isinstance(out, dict):
                if "loss" not in out:
                    raise UsageError("a closure returning a dict must include 'loss'")
                return {k: as_float(torch.as_tensor(v)) for k, v in out.items()}
            return {"loss": as_float(out)}
        inputs, targets = batch
        outputs = as_float(forward(inputs))
        values = {"loss": (self.loss or cross_entropy)(outputs, targets)}
        metrics = self.metrics
        if metrics is None:
            metrics = {"acc": accuracy} if isinstance(outputs, torch.Tensor) and is_classification(outputs, targets) \
                else {}
        for name, metric in metrics.items():
            values[name] = metric(outputs, targets)
        return values

    def loss_only(self, forward: Callable, batch) -> torch.Tensor:
        """The mean loss of one batch (for gradients: no metric is computed)."""
        if self.closure is not None:
            out = self.closure(forward, batch)
            return as_float(out["loss"] if isinstance(out, dict) else out)
        inputs, targets = batch
        return (self.loss or cross_entropy)(as_float(forward(inputs)), targets)


class BatchSet:
    """Batches in a fixed order, iterable again; `sizes` are their sample counts.

    Either a list of batches kept on the device, or `make()` called anew at every pass (batches cut from
    images held as uint8, as the run files' image sets do, to keep a quarter of the memory)."""

    def __init__(self, batches: list | None = None, sizes: list[int] | None = None,
                 make: Callable[[], Iterator] | None = None):
        self.batches, self.make = batches, make
        self.sizes = list(sizes if sizes is not None else [batch_size_of(b) for b in batches])
        if not self.sizes or sum(self.sizes) == 0:
            raise UsageError("the data holds no samples: give at least one batch")

    def __iter__(self) -> Iterator:
        return iter(self.batches) if self.batches is not None else self.make()

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def samples(self) -> int:
        return sum(self.sizes)

    @property
    def shares(self) -> list[float]:
        """Each batch's weight in the mean over all samples."""
        total = self.samples
        return [size / total for size in self.sizes]

    def fixed(self) -> list:
        """The batches as a list (made once if they are made per pass)."""
        return list(self.batches) if self.batches is not None else list(self.make())

    def to(self, device: torch.device) -> "BatchSet":
        """The same batches on `device` (a list is copied over; a maker moves itself if it can)."""
        if self.batches is None:
            return BatchSet(sizes=self.sizes, make=self.make.to(device)) if hasattr(self.make, "to") else self
        return BatchSet([to_device(b, device) for b in self.batches], self.sizes)


def map_tensors(value, function):
    """`function` applied to every tensor inside tuples (named ones too), lists and dicts; the rest kept."""
    if isinstance(value, torch.Tensor):
        return function(value)
    if isinstance(value, (tuple, list)):
        items = [map_tensors(v, function) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, dict):
        return {k: map_tensors(v, function) for k, v in value.items()}
    return value


def to_device(value, device: torch.device):
    """Every tensor inside a batch moved to `device`."""
    return map_tensors(value, lambda t: t.to(device, non_blocking=True))


def tensors_in(value) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from tensors_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from tensors_in(v)


def batch_size_of(batch) -> int:
    """Samples in a batch: the first axis of its first tensor."""
    first = next(tensors_in(batch), None)
    if first is None or first.dim() == 0:
        raise UsageError(f"a batch holds no tensor with a batch axis (got {type(batch).__name__}); give tensors "
                         f"whose first axis is the sample")
    return int(first.shape[0])


def cut(batch, count: int):
    """The first `count` samples of a batch."""
    return map_tensors(batch, lambda t: t[:count])


def check_pair(batch, objective: Objective) -> None:
    """Without a closure, a batch must be (inputs, targets) tensors."""
    if objective.closure is not None:
        return
    if isinstance(batch, dict):
        raise UsageError(f"the data yields dict batches (keys {', '.join(map(str, list(batch)[:4]))}), not (inputs, "
                         f"targets) pairs: pass closure=lambda model, batch: <mean loss> to say how a batch is used")
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, torch.Tensor) for t in batch)):
        raise UsageError(f"a batch must be an (inputs, targets) pair of tensors, got {describe(batch)}: pass "
                         f"closure=lambda model, batch: <mean loss> for other batches")
    if batch[0].shape[0] != batch[1].shape[0]:
        raise UsageError(f"inputs and targets of a batch disagree in length ({batch[0].shape[0]} and "
                         f"{batch[1].shape[0]})")


def describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} ({', '.join(type(v).__name__ for v in value[:3])})"
    return f"a {type(value).__name__}"


def batch_set(data, *, device: torch.device, objective: Objective, images: int | None = None,
              batch_size: int | None = None, what: str = "data") -> BatchSet:
    """Read `data` once into a BatchSet on `device` (see the module docstring); UsageError for data it cannot use."""
    if isinstance(data, BatchSet):
        return data.to(device)
    if images is not None and not (isinstance(images, int) and images > 0):
        raise UsageError(f"images must be a positive integer, got {images}")
    source = batches_of(data, batch_size, what)
    kept, sizes, held = [], [], 0
    limit = memory_limit(device)
    for batch in source:
        check_pair(batch, objective)
        size = batch_size_of(batch)
        if images is not None and sum(sizes) + size > images:
            size = images - sum(sizes)
            batch = cut(batch, size)
        if size == 0:
            break
        held += sum(t.numel() * t.element_size() for t in tensors_in(batch))
        if held > limit:
            raise UsageError(f"{what} holds more than the {limit / 2 ** 30:,.1f} GiB it may take on {device.type} "
                             f"(after {sum(sizes):,} samples): pass images=N to use the first N samples")
        kept.append(to_device(batch, device))
        sizes.append(size)
        if images is not None and sum(sizes) >= images:
            break
    if not kept:
        raise UsageError(f"{what} yielded no batch: give a non-empty DataLoader, iterable or (inputs, targets) pair")
    return BatchSet(kept, sizes)


def batches_of(data, batch_size: int | None, what: str) -> Iterable:
    """An iterable of batches from a DataLoader, Dataset, iterable, or (inputs, targets) tensor pair."""
    from torch.utils.data import DataLoader, Dataset, IterableDataset

    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        inputs, targets = data
        if inputs.shape[0] != targets.shape[0]:
            raise UsageError(f"{what}: inputs and targets disagree in length ({inputs.shape[0]} and {targets.shape[0]})")
        step = batch_size or 256
        return [(inputs[i:i + step], targets[i:i + step]) for i in range(0, inputs.shape[0], step)]
    if isinstance(data, Dataset) and not isinstance(data, (IterableDataset, DataLoader)):
        return DataLoader(data, batch_size=batch_size or 256, shuffle=False)
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable) or isinstance(data, (str, bytes, dict)):
        raise UsageError(f"{what} must be a DataLoader, an iterable of (inputs, targets) batches or an (inputs, "
                         f"targets) pair of tensors, got {describe(data)}")
    return data


def memory_limit(device: torch.device) -> int:
    from landscape.engine.memory import available_bytes

    return int(DEVICE_SHARE * available_bytes(device))

