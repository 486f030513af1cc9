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

import numpy as np

from landscape.errors import UsageError

DATASETS = ("cifar10", "synthetic")
OPTIMIZERS = ("adam", "sgd")
AUGMENTS = ("none", "crop-flip")
DEVICES = ("auto", "cpu", "cuda")
PROBE_DIRECTIONS = ("update", "gradient")


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
    probe_every: int = 0  # 0 = no probes; else probe every K-th step (Santurkar et al.)
    probe_multipliers: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
    probe_direction: str = "update"
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
        if self.probe_every < 0:
            raise UsageError(f"--probe-every must be 0 (off) or a positive step count, got {self.probe_every}")
        choose("--probe-direction", self.probe_direction, PROBE_DIRECTIONS)
        if not self.probe_multipliers or any(not (0 < m < math.inf) for m in self.probe_multipliers):
            raise UsageError("--probe-multipliers must be positive finite numbers, e.g. 0.5:4:8")
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
        for name in ("lrs", "probe_multipliers"):
            if name in values:
                values[name] = tuple(values[name])
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


def parse_multipliers(text: str) -> tuple[float, ...]:
    """'0.5:4:8' (start:stop:count, evenly spaced, both ends included) or '0.5,1,2' into positive floats."""
    try:
        if ":" in text:
            start, stop, count = text.split(":")
            if int(count) < 1:
                raise ValueError
            values = tuple(float(v) for v in np.linspace(float(start), float(stop), int(count)))
        else:
            values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--probe-multipliers {text!r} is malformed: write start:stop:count (0.5:4:8) "
                         f"or a comma list (0.5,1,2)") from None
    if any(not (0 < v < math.inf) for v in values):
        raise UsageError(f"--probe-multipliers {text!r} must be positive finite numbers, e.g. 0.5:4:8")
    return values


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
