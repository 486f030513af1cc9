"""The options of one `landscape run`: a dataclass, its validation, its JSON and TOML forms.

Everything a run depends on is a field of RunConfig, so the config stored in the HDF5 file is
enough to repeat the run. A TOML file (`landscape run --config FILE.toml`) holds the same fields
by name. No torch import: options are checked before anything heavy is loaded.
"""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from landscape.errors import UsageError
from landscape.machine import available_memory
from landscape.options import (DEVICES, PROBE_DIRECTIONS, check_seed, check_sharpness_options, check_threads, choose,
                               in_range, non_negative, positive)

DATASETS = ("cifar10", "cifar100", "imagenette", "imagefolder", "synthetic")
OPTIMIZERS = ("sgd", "adam", "adamw", "radam", "ranger")
SCHEDULES = ("constant", "step", "multistep", "cosine")
NORMS = ("bn", "in", "none")
ACTIVATIONS = ("relu", "leaky_relu", "silu")
STEMS = ("imagenet", "cifar")
ENGINES = ("auto", "loop", "fused")
PRECISIONS = ("auto", "fp32", "bf16")
IMAGENETTE_SIZES = ("160", "320", "full")
# augmentation switches: name -> default value (None: takes no value)
AUGMENTS = {"crop": 4, "hflip": 0.5, "vflip": 0.5, "rrc": 0.08, "jitter": 0.2, "autoaugment": None, "erasing": 0.5}
AUGMENT_PRESETS = {
    "none": "",
    "crop-flip": "crop:4,hflip:0.5",
    "rrc-flip": "rrc:0.08,hflip:0.5",
    "report004": "crop:4,hflip:0.5,jitter:0.2,autoaugment,erasing:0.5",  # report 004's regularisation table
}


@dataclass
class RunConfig:
    """Every option of a run. `lrs` holds one learning rate per run trained in lockstep."""

    # model
    model: str = "vgg_bn"
    width: float = 1.0
    stem: str = "auto"  # ResNets: imagenet (7x7/2 + max-pool) or cifar (3x3/1); auto = the model's own
    norm: str = "bn"
    residual: bool = True
    dropout: float = 0.0
    activation: str = "relu"
    pretrained: bool = False
    # data
    dataset: str = "cifar10"
    data_root: str = "data"
    image_size: int = 0  # 0 = the dataset's own (32 for CIFAR, 224 Imagenette, 64 image folders)
    imagenette_size: str = "320"
    train_subset: int = 0  # 0 = the whole training split
    augment: str = "none"
    # optimisation
    lrs: tuple[float, ...] = (1e-3, 2e-3, 5e-4, 1e-4)
    optimizer: str = "adam"
    momentum: float = 0.9  # SGD only
    nesterov: bool = False
    eps: float | None = None  # Adam family; None = the optimizer's default
    weight_decay: float = 0.0
    schedule: str = "constant"
    step_size: int = 10
    gamma: float = 0.1
    milestones: tuple[int, ...] = ()
    cosine_extra: int = 0
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    patience: int = 0  # early stopping on test accuracy; 0 = off
    min_delta: float = 0.0  # accuracy gain (fraction) that counts as an improvement
    # train to a criterion: stop a run after the first epoch whose full training subset (eval mode) meets it
    until_train_loss: float = 0.0  # mean cross-entropy below this; 0 = off
    until_train_acc: float = 0.0  # accuracy (fraction) at least this; 0 = off
    epochs: int = 20
    batch_size: int = 128
    eval_batch_size: int = 1000
    seed: int = 0
    data_seed: int | None = None  # seeds the data order and augmentation (None: seed); a branch's own order
    device: str = "auto"
    engine: str = "auto"  # loop: one model after another; fused: all runs as one stacked model (torch.func)
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    channels_last: bool = False
    compile: bool = False
    log_every: int = 50  # steps between copies of the step losses from the device
    # Santurkar probes
    probe_every: int = 0  # 0 = no probes; else probe every K-th step
    probe_multipliers: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
    probe_direction: str = "update"
    probe_batch: bool = False  # all multipliers in one vmapped pass (loop engine; J times the activation memory)
    # weight snapshots (<run>.weights.h5): epoch 0, every snapshot_every epochs (0: none between) and the end
    snapshots: bool = True
    snapshot_every: int = 0
    branch_points: bool = False  # keep the full training state at every snapshot: `run --branch-from` starts there
    branch_steps: tuple[int, ...] = ()  # and after these global steps (mid-epoch too): `run --branch-from --step S`
    # sharpness: top Hessian eigenvalues of every run every K steps on a fixed training subset (or "batch")
    sharpness_every: int = 0
    sharpness_images: int | str = 0  # 0: DEFAULT_SHARPNESS_IMAGES, or all the training images when fewer
    sharpness_top_k: int = 1
    sharpness_iters: int = 20  # Lanczos steps per measurement: 12 were up to 4% off (benchmarks/bench_sharpness.py)
    sharpness_cold_iters: int = 20  # with sharpness_warm: the first measurement of each run
    sharpness_warm: bool = False  # start from the previous measurement's Ritz vectors
    sharpness_check_every: int = 0  # every M-th measurement also cold to convergence (0: never)
    sharpness_method: str = "lanczos"  # or critical / directional along the update (engine/sharpness.py)
    threads: int | str = 0  # CPU threads (0: the cores this process may use, whatever the load; 'auto': from the load)
    extra: dict = field(default_factory=dict)

    def validate(self) -> "RunConfig":
        """Raise UsageError naming the first bad option; return self when all are good."""
        if not self.lrs:
            raise UsageError("--lrs is empty: give one or more learning rates, e.g. --lrs 1e-3,5e-4")
        for lr in self.lrs:
            check_learning_rate(lr)
        if len(set(self.lrs)) != len(self.lrs):
            raise UsageError(f"--lrs repeats a rate ({format_lrs(self.lrs)}): give each rate once")
        for option, value, allowed in (("--dataset", self.dataset, DATASETS), ("--optimizer", self.optimizer, OPTIMIZERS),
                                       ("--schedule", self.schedule, SCHEDULES), ("--device", self.device, DEVICES),
                                       ("--probe-direction", self.probe_direction, PROBE_DIRECTIONS),
                                       ("--imagenette-size", self.imagenette_size, IMAGENETTE_SIZES),
                                       ("--engine", self.engine, ENGINES), ("--precision", self.precision, PRECISIONS),
                                       ("--norm", self.norm, NORMS), ("--activation", self.activation, ACTIVATIONS),
                                       ("--stem", self.stem, STEMS + ("auto",))):
            choose(option, value, allowed)
        parse_augment(self.augment)
        for option, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size),
                              ("--eval-batch-size", self.eval_batch_size), ("--log-every", self.log_every),
                              ("--step-size", self.step_size)):
            positive(option, value)
        if self.sharpness_images != "batch":
            if isinstance(self.sharpness_images, str):
                raise UsageError(f"--sharpness-images {self.sharpness_images!r}: give a number of images or batch (each "
                                 f"step's own batch)")
            non_negative("--sharpness-images", self.sharpness_images)
        check_sharpness_options(self.sharpness_top_k, self.sharpness_iters, self.sharpness_cold_iters,
                                self.sharpness_check_every, method=self.sharpness_method)
        check_threads("--threads", self.threads)
        for option, value in (("--train-subset", self.train_subset), ("--image-size", self.image_size),
                              ("--probe-every", self.probe_every), ("--patience", self.patience),
                              ("--cosine-extra", self.cosine_extra), ("--warmup-epochs", self.warmup_epochs),
                              ("--snapshot-every", self.snapshot_every), ("--sharpness-every", self.sharpness_every)):
            non_negative(option, value)
        in_range("--width", self.width, 0, math.inf, low_open=True)
        check_seed("--seed", self.seed)
        if self.data_seed is not None:
            check_seed("--data-seed", self.data_seed)
        in_range("--weight-decay", self.weight_decay, 0, math.inf)
        in_range("--momentum", self.momentum, 0, 1)
        in_range("--dropout", self.dropout, 0, 1, high_open=True)
        in_range("--label-smoothing", self.label_smoothing, 0, 1, high_open=True)
        in_range("--gamma", self.gamma, 0, math.inf, low_open=True)
        in_range("--min-delta", self.min_delta, 0, 1)
        in_range("--until-train-loss", self.until_train_loss, 0, math.inf)
        in_range("--until-train-acc", self.until_train_acc, 0, math.inf)
        if self.until_train_acc > 1:
            raise UsageError(f"--until-train-acc {self.until_train_acc:g} is not a fraction: give e.g. 0.99 for 99%")
        if self.until_train_loss and self.until_train_acc:
            raise UsageError("--until-train-loss and --until-train-acc are both set: train to one criterion, "
                             "drop the other")
        if self.eps is not None:
            in_range("--eps", self.eps, 0, 1, low_open=True)
        if any(not isinstance(m, int) or m <= 0 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise UsageError(f"--milestones must be increasing positive epochs, e.g. 90,135; got {self.milestones}")
        if self.schedule == "multistep" and not self.milestones:
            raise UsageError("--schedule multistep needs --milestones, e.g. --milestones 90,135")
        if any(not isinstance(s, int) or s < 0 for s in self.branch_steps) or \
                list(self.branch_steps) != sorted(set(self.branch_steps)):
            raise UsageError(f"--branch-steps must be increasing whole steps from 0, e.g. 0,10,20,40; got "
                             f"{','.join(map(str, self.branch_steps))}")
        if not self.probe_multipliers or any(not (0 < m < math.inf) for m in self.probe_multipliers):
            raise UsageError("--probe-multipliers must be positive finite numbers, e.g. 0.5:4:8")
        return self

    @property
    def criterion(self) -> tuple[str, float] | None:
        """("train_loss", X) or ("train_acc", A) when the run trains to a criterion, else None."""
        if self.until_train_loss:
            return "train_loss", self.until_train_loss
        if self.until_train_acc:
            return "train_acc", self.until_train_acc
        return None

    @property
    def order_seed(self) -> int:
        """What seeds the data order and augmentation: --data-seed, else --seed."""
        return self.seed if self.data_seed is None else self.data_seed

    def model_options(self) -> dict:
        """The ablation switches passed to `build_model`."""
        return {"stem": self.stem, "norm": self.norm, "residual": self.residual, "dropout": self.dropout,
                "activation": self.activation, "pretrained": self.pretrained}

    def to_json(self) -> str:
        """The config as JSON, the form stored in the run file's `config` attribute."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        """Rebuild a config from `to_json` output, each value checked as `config_values` checks a TOML file's
        (UsageError when one is of the wrong type); unknown keys (newer versions) go to `extra`."""
        raw = json.loads(text)
        values = config_values({k: v for k, v in raw.items() if k in FIELD_NAMES}, where="the stored config")
        extra = raw.get("extra") if isinstance(raw.get("extra"), dict) else {}
        values["extra"] = {**extra, **{k: v for k, v in raw.items() if k not in FIELD_NAMES and k != "extra"}}
        return cls(**values)


TUPLE_FIELDS = ("lrs", "probe_multipliers", "milestones", "branch_steps")
WHOLE_TUPLES = ("milestones", "branch_steps")
FIELD_NAMES = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name != "extra")


def load_config_file(path: str | Path) -> dict:
    """Read a TOML run config: keys are RunConfig fields (dashes or underscores); raise UsageError on bad keys."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"--config {path} is a folder: give the TOML file") from None
    except OSError as exc:
        raise UsageError(f"--config {path}: cannot read it ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config {path}: not valid TOML ({exc})") from None
    return config_values(raw, where=str(path))


def config_values(raw: dict, where: str) -> dict:
    """Check and convert a mapping of run options (from TOML or a spec) to RunConfig keyword arguments."""
    values = {}
    defaults = RunConfig()
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in FIELD_NAMES:
            raise UsageError(f"{where}: unknown option {key!r}; known options are the `landscape run` flags, "
                             f"e.g. model, lrs, epochs")
        if name == "lrs" and isinstance(value, str):
            value = parse_lrs(value)
        elif name == "probe_multipliers" and isinstance(value, str):
            value = parse_multipliers(value)
        elif name in WHOLE_TUPLES and isinstance(value, str):
            value = parse_ints(value, "--" + name.replace("_", "-"))
        elif name == "sharpness_images" and isinstance(value, str):
            if value != "batch" and not value.isdigit():
                raise UsageError(f"{where}: {key} must be a number of images or batch, got {value!r}")
            values[name] = value if value == "batch" else int(value)
            continue
        elif name == "threads" and value == "auto":
            values[name] = value
            continue
        default = getattr(defaults, name)
        if name in TUPLE_FIELDS:
            if not isinstance(value, (list, tuple)):
                value = [value]
            value = tuple(value)
            wanted = int if name in WHOLE_TUPLES else (int, float)
            if any(isinstance(v, bool) or not isinstance(v, wanted) for v in value):
                raise UsageError(f"{where}: {key} must be {'whole numbers' if name in WHOLE_TUPLES else 'numbers'}, "
                                 f"got {list(value)!r}")
        elif isinstance(value, bool) and not isinstance(default, bool):
            raise UsageError(f"{where}: {key} must be a {type(default).__name__ if default is not None else 'number'}, "
                             f"got {value!r}")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise UsageError(f"{where}: {key} must be true or false, got {value!r}")
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif default is not None and not isinstance(value, type(default)):
            raise UsageError(f"{where}: {key} must be a {type(default).__name__}, got {value!r}")
        values[name] = value
    return values


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
            if int(count) * 64 > available_memory() // 4:  # the list itself, before any run is planned
                raise UsageError(f"--probe-multipliers {text!r}: {int(count):,} multipliers would not fit in memory; "
                                 f"give a few, e.g. 0.5:4:8")
            values = tuple(float(v) for v in np.linspace(float(start), float(stop), int(count)))
        else:
            values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--probe-multipliers {text!r} is malformed: write start:stop:count (0.5:4:8) "
                         f"or a comma list (0.5,1,2)") from None
    if any(not (0 < v < math.inf) for v in values):
        raise UsageError(f"--probe-multipliers {text!r} must be positive finite numbers, e.g. 0.5:4:8")
    return values


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    """'90,135' into integers ('' is empty)."""
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise UsageError(f"{option} {text!r} is malformed: write whole numbers separated by commas, e.g. 90,135") from None


def parse_augment(text: str) -> list[tuple[str, float | None]]:
    """'crop-flip' or 'crop:4,hflip:0.5,autoaugment' into [(switch, value)], presets expanded, in order."""
    spec = AUGMENT_PRESETS.get(text, text)
    switches = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        part = AUGMENT_PRESETS.get(part, part)
        if "," in part:
            switches += parse_augment(part)
            continue
        name, _, value = part.partition(":")
        if name not in AUGMENTS:
            raise UsageError(f"--augment {text!r}: unknown switch {name!r}; use a preset ({', '.join(AUGMENT_PRESETS)}) "
                             f"or switches {', '.join(AUGMENTS)} (e.g. crop:4,hflip:0.5)")
        default = AUGMENTS[name]
        if default is None:
            if value:
                raise UsageError(f"--augment: {name} takes no value")
            switches.append((name, None))
            continue
        try:
            number = float(value) if value else float(default)
        except ValueError:
            raise UsageError(f"--augment: {name}:{value} needs a number, e.g. {name}:{default}") from None
        if number < 0 or (name != "crop" and number > 1):
            raise UsageError(f"--augment: {name}:{value} is out of range")
        switches.append((name, number))
    return switches


def check_learning_rate(rate: float) -> None:
    """Raise UsageError unless `rate` is a positive finite number."""
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
        raise UsageError(f"learning rate {rate} is not positive and finite: use rates like 1e-3")


def format_lrs(lrs) -> str:
    """Rates as the user writes them: '0.001,0.002'."""
    return ",".join(f"{lr:g}" for lr in lrs)


def default_out_path(model: str, folder: str = "artifacts") -> Path:
    """Where `landscape run` writes when --out is not given."""
    return Path(folder) / f"{model}.h5"
