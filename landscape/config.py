"""The options of one `landscape run`: a dataclass, its validation and its JSON form.

Everything a run depends on is a field here, so the config stored in the HDF5 file is enough to
repeat the run. No torch import: the CLI validates options before anything heavy is loaded.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from landscape.errors import UsageError

DATASETS = ("cifar10", "synthetic")
OPTIMIZERS = ("adam", "sgd")
AUGMENTS = ("none", "crop-flip")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class RunConfig:
    """Every option of a run. `lrs` holds one learning rate per run trained in lockstep."""

    model: str = "vgg_bn"
    lrs: tuple[float, ...] = (1e-3, 2e-3, 5e-4, 1e-4)
    width: float = 1.0
    dataset: str = "cifar10"
    data_root: str = "data"
    train_subset: int = 0  # 0 = the whole training split
    augment: str = "none"
    optimizer: str = "adam"
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    epochs: int = 20
    batch_size: int = 128
    eval_batch_size: int = 1000
    seed: int = 0
    device: str = "auto"
    log_every: int = 50  # steps between copies of the step losses from the device
    extra: dict = field(default_factory=dict)

    def validate(self) -> "RunConfig":
        """Raise UsageError naming the first bad option; return self when all are good."""
        if not self.lrs:
            raise UsageError("--lrs is empty: give one or more learning rates, e.g. --lrs 1e-3,5e-4")
        for lr in self.lrs:
            check_learning_rate(lr)
        if len(set(self.lrs)) != len(self.lrs):
            raise UsageError(f"--lrs repeats a rate ({format_lrs(self.lrs)}): give each rate once")
        choose("--dataset", self.dataset, DATASETS)
        choose("--optimizer", self.optimizer, OPTIMIZERS)
        choose("--augment", self.augment, AUGMENTS)
        choose("--device", self.device, DEVICES)
        positive("--epochs", self.epochs)
        positive("--batch-size", self.batch_size)
        positive("--eval-batch-size", self.eval_batch_size)
        positive("--log-every", self.log_every)
        if not (self.width > 0 and math.isfinite(self.width)):
            raise UsageError(f"--width must be a positive number, got {self.width}")
        if self.train_subset < 0:
            raise UsageError(f"--train-subset must be 0 (all) or a positive count, got {self.train_subset}")
        if self.weight_decay < 0 or not math.isfinite(self.weight_decay):
            raise UsageError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise UsageError(f"--momentum must be in [0, 1), got {self.momentum}")
        return self

    def to_json(self) -> str:
        """The config as JSON, the form stored in the run file's `config` attribute."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        """Rebuild a config from `to_json` output; unknown keys (newer versions) go to `extra`."""
        raw = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        values.setdefault("extra", {}).update({k: v for k, v in raw.items() if k not in known})
        values["lrs"] = tuple(values.get("lrs", ()))
        return cls(**values)


def parse_lrs(text: str) -> tuple[float, ...]:
    """Parse '1e-3,2e-3' into positive finite floats; raise UsageError on anything else."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise UsageError(f"--lrs {text!r} has an empty entry: write rates separated by commas, e.g. 1e-3,5e-4")
    rates = []
    for part in parts:
        try:
            rate = float(part)
        except ValueError:
            raise UsageError(f"--lrs entry {part!r} is not a number: write rates like 1e-3,5e-4") from None
        check_learning_rate(rate)
        rates.append(rate)
    return tuple(rates)


def check_learning_rate(rate: float) -> None:
    """Raise UsageError unless `rate` is a positive finite number."""
    if not (math.isfinite(rate) and rate > 0):
        raise UsageError(f"learning rate {rate:g} is not positive and finite: use rates like 1e-3")


def format_lrs(lrs) -> str:
    """Rates as the user writes them: '0.001,0.002'."""
    return ",".join(f"{lr:g}" for lr in lrs)


def default_out_path(model: str, folder: str = "artifacts") -> Path:
    """Where `landscape run` writes when --out is not given."""
    return Path(folder) / f"{model}.h5"


def choose(option: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise UsageError unless `value` is one of `allowed`."""
    if value not in allowed:
        raise UsageError(f"{option} {value!r} is unknown: choose one of {', '.join(allowed)}")


def positive(option: str, value: int) -> None:
    """Raise UsageError unless `value` is a positive integer."""
    if not (isinstance(value, int) and value > 0):
        raise UsageError(f"{option} must be a positive integer, got {value}")
