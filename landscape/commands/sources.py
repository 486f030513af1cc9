"""Where `landscape surface` and `landscape hessian` get a model and its samples.

- A run file (`landscape run` or a `Recorder`): the architecture from the model registry, or from a user's
  model definition (`--model-def FILE.py:FACTORY`, needed for a Recorder's own model), and the weights of
  one snapshot of its weights file.
- A foreign model: `--model-def FILE.py:FACTORY` and `--weights MODEL.pt` (a state dict, read with
  `torch.load(weights_only=True)` so it can never run code, or a `.safetensors` file).
Samples come from the run's own dataset (its options as stored) or `--dataset`/`--data-root`: the first N
images of a split, as uint8 on the device, normalised batch by batch.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import math
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from landscape.engine.batches import BatchSet
from landscape.engine.functional import Params, check_finite
from landscape.errors import UsageError
from landscape.files.run_file import Run, read_run
from landscape.files.weights_file import Weights, resolve_epoch, resolve_run, weights_of_run
from landscape.training.config import RunConfig
from landscape.training.data import Normalizer, Split, eval_batches, load_dataset
from landscape.options import check_device_name, check_threads, in_range, positive
from landscape.progress import DEFAULT_BUDGET_HOURS
from landscape.training.models import MODELS, build_model


@dataclass
class SourceOptions:
    """Where a measurement's model and images come from, and on what machine (options of surface and hessian)."""

    device: str = "auto"
    data_root: str | None = None
    model_def: str | None = None  # FILE.py:FACTORY
    weights: str | None = None  # a foreign model's state dict
    dataset: str | None = None  # default: the run's own; cifar10 for a foreign model
    num_classes: int | None = None  # a foreign model's outputs; default: the dataset's classes
    threads: int = 0
    budget_hours: float = DEFAULT_BUDGET_HOURS  # refuse work estimated (from its first unit) to take longer

    def validate_source(self) -> None:
        check_device_name("--device", self.device)
        check_threads("--threads", self.threads)
        in_range("--budget-hours", self.budget_hours, 0, math.inf, low_open=True)
        if self.num_classes is not None:
            positive("--num-classes", self.num_classes)
        if self.model_def and str(self.model_def).partition(":")[0] in HUBS:
            load_factory(self.model_def)  # a hub name that does not exist is refused before the data is read

    def classes(self, images: "ImageSet") -> int:
        """The foreign model's number of outputs: --num-classes, else the dataset's classes."""
        return self.num_classes or images.dataset.num_classes


MACHINE_ONLY = ("device", "data_root", "threads", "budget_hours")  # not part of what a measurement is


HUBS = ("torchvision", "timm")


def hub_factory(hub: str, name: str):
    """A factory of the architecture `name` of torchvision or timm, random weights (nothing is ever downloaded)."""
    if hub == "torchvision":
        import torchvision.models

        known = torchvision.models.list_models()
        if name not in known:
            close = [n for n in known if name.lower()[:4] in n][:6]
            raise UsageError(f"--model-def torchvision:{name}: torchvision has no such model"
                             + (f" (close: {', '.join(close)})" if close else "")
                             + "; see torchvision.models.list_models()")
        return lambda num_classes=1000: torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    try:
        import timm
    except ImportError:
        raise UsageError(f"--model-def timm:{name} needs timm: pip install timm") from None
    if not timm.list_models(name):
        close = timm.list_models(f"*{name[:4]}*")[:6]
        raise UsageError(f"--model-def timm:{name}: timm has no such model" +
                         (f" (close: {', '.join(close)})" if close else "") + "; see timm.list_models()")
    return lambda num_classes=1000: timm.create_model(name, pretrained=False, num_classes=num_classes)


def load_factory(spec: str):
    """The callable named by 'FILE.py:FACTORY' (the file is imported as a module of its own), or an architecture
    of a model hub by name: 'torchvision:NAME' or 'timm:NAME' (random weights: give yours with --weights)."""
    hub, _, hub_name = str(spec).partition(":")
    if hub in HUBS:
        if not hub_name:
            raise UsageError(f"--model-def {spec!r}: name the architecture, e.g. {hub}:resnet18")
        return hub_factory(hub, hub_name)
    path_text, _, name = str(spec).rpartition(":")
    if not path_text or not name:
        raise UsageError(f"--model-def {spec!r}: write FILE.py:FACTORY, e.g. models.py:make_model")
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"--model-def {spec}: no such file {path}")
    module_name = f"landscape_model_def_{abs(hash(str(path.resolve())))}"
    try:
        loader = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader)
        sys.modules[module_name] = module
        loader.loader.exec_module(module)
    except Exception as exc:  # the user's file: any error in it is theirs to fix, said in one line
        raise UsageError(f"--model-def {spec}: importing {path} failed ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:160]})") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        found = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                 and getattr(v, "__module__", None) == module_name]
        raise UsageError(f"--model-def {spec}: {path} defines no callable {name!r}"
                         + (f" (it defines {', '.join(found[:5])})" if found else ""))
    return factory


def build_from_definition(spec: str, num_classes: int | None = None) -> nn.Module:
    """Call the factory of `spec` (with num_classes= if it takes it and it is known); UsageError on any failure."""
    factory = load_factory(spec)
    kwargs = {}
    try:
        if num_classes is not None and "num_classes" in inspect.signature(factory).parameters:
            kwargs["num_classes"] = num_classes
    except (TypeError, ValueError):
        pass
    try:
        with torch.random.fork_rng(devices=[]):
            model = factory(**kwargs)
    except Exception as exc:
        raise UsageError(f"--model-def {spec}: the factory raised {type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:160]}") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"--model-def {spec}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from `path`: safetensors, or torch.load with weights_only=True (a checkpoint can never run code).

    A dict holding the state dict under 'state_dict' or 'model' (Lightning, common training scripts) is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--weights {path}: no such file")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UsageError("--weights *.safetensors needs safetensors: pip install safetensors") from None
        try:
            return load_file(str(path))
        except Exception as exc:
            raise UsageError(f"--weights {path}: not a readable safetensors file ({type(exc).__name__})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UsageError(f"--weights {path} holds objects other than tensors and plain containers (refused: loading "
                         f"them could run code; {' '.join(str(exc).split())[:100]}); save model.state_dict() "
                         f"instead") from None
    except Exception as exc:
        raise UsageError(f"--weights {path}: not a readable torch file ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:100]})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"--weights {path} is not a state dict (names to tensors): save model.state_dict()")
    return state


def fit_state(model: nn.Module, state: dict, where: str, device: torch.device) -> tuple[Params, Params]:
    """The parameters and buffers of `state`, checked against `model`: missing and unexpected keys in one line."""
    expected = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    missing = [n for n in expected if n not in state]
    unexpected = [n for n in state if n not in expected]
    wrong = [n for n in expected if n in state and tuple(state[n].shape) != expected[n]]
    if missing or unexpected or wrong:
        parts = [f"missing {len(missing)} ({', '.join(missing[:3])})" if missing else "",
                 f"unexpected {len(unexpected)} ({', '.join(unexpected[:3])})" if unexpected else "",
                 f"other shapes for {', '.join(wrong[:3])}" if wrong else ""]
        raise UsageError(f"{where} does not fit the model: " + "; ".join(p for p in parts if p) +
                         "; give the state dict of this architecture")
    params = {n: torch.as_tensor(state[n]).to(device) for n, _ in model.named_parameters()}
    buffers = {n: torch.as_tensor(state[n]).to(device) for n, _ in model.named_buffers() if n in state}
    return params, buffers


def run_architecture(run: Run, model_def: str | None) -> nn.Module:
    """The architecture of a run file, on the meta device (registry), or from the user's definition."""
    config = run.config
    if model_def is None:
        model_def = run.attrs.get("model_def") or None
    if model_def is not None:
        return build_from_definition(model_def, int(run.attrs.get("num_classes", 0)) or None)
    if str(config.get("model")) not in MODELS or run.attrs.get("source") == "recorder":
        raise UsageError(f"{run.path} holds a {run.model} model that landscape cannot build itself: pass "
                         f"--model-def FILE.py:FACTORY (a function returning the architecture)")
    try:
        options = RunConfig.from_json(run.attrs["config"]).validate()
    except UsageError as exc:
        raise UsageError(f"{run.path}: {exc}; the file was damaged or edited, rerun `landscape run` to recreate "
                         f"it") from None
    with torch.device("meta"):
        return build_model(options.model, width=options.width, num_classes=int(run.attrs["num_classes"]),
                           image_size=int(run.attrs["image_size"]), **{**options.model_options(), "pretrained": False})


def snapshot_state(model: nn.Module, weights: Weights, index: int, epoch: int,
                   device: torch.device) -> tuple[Params, Params]:
    """The parameters and buffers of run `index` at `epoch`, checked against the architecture, on `device`."""
    state = {name: torch.from_numpy(value) for name, value in weights.state(epoch, index).items()}
    params, buffers = fit_state(model, state, f"{weights.path} (epoch {epoch})", device)
    check_finite(params, f"the snapshot of run {index} at epoch {epoch} in {weights.path}")
    return params, buffers


def snapshot_model(run: Run, weights: Weights, index: int, epoch: int, device: torch.device,
                   model_def: str | None = None) -> nn.Module:
    """A real module (on `device`) holding run `index`'s snapshot at `epoch`: for code that needs the model itself."""
    model = run_architecture(run, model_def)
    params, buffers = snapshot_state(model, weights, index, epoch, device)
    return loaded(model, params, buffers)


def loaded(model: nn.Module, params: Params, buffers: Params) -> nn.Module:
    """`model` (perhaps a shape-only skeleton on the meta device) holding `params` and `buffers`, on their device."""
    device = next(iter(params.values())).device
    model = model.to_empty(device=device) if next(model.parameters()).device.type == "meta" else model.to(device)
    model.load_state_dict({**params, **buffers})
    return model


@dataclass
class RunSnapshot:
    """One snapshot of a run file: the run, its weights file, the architecture, the run index and epoch chosen,
    the parameters and buffers, and how to name it."""

    run: Run
    weights: Weights
    model: nn.Module
    index: int
    epoch: int
    params: Params
    buffers: Params

    @property
    def name(self) -> str:
        return f"{self.run.path.name} lr={self.run.lrs[self.index]:g} epoch {self.epoch}"


def run_snapshot(path: str | Path, lr: float | None, run_index: int | None, epoch: int | None,
                 model_def: str | None, device: torch.device) -> RunSnapshot:
    """The snapshot at `lr` (or `run_index`) and `epoch` (default the last saved) of a run file."""
    run = read_run(path)
    weights = weights_of_run(run)
    index = resolve_run(run.lrs, lr, run_index, run.path)
    chosen = resolve_epoch(weights, epoch) if epoch is not None else weights.epochs[-1]
    model = run_architecture(run, model_def)
    params, buffers = snapshot_state(model, weights, index, chosen, device)
    return RunSnapshot(run, weights, model, index, chosen, params, buffers)


def load_model(path: str | Path, lr: float | None = None, epoch: int | None = None, model_def: str | None = None,
               device: str = "cpu") -> nn.Module:
    """A run file's snapshot as a module in eval mode: the weights and BatchNorm statistics of the run at `lr` (needed
    when the file holds several rates) at `epoch` (default the last saved); `model_def` (FILE.py:FACTORY) for a
    Recorder's or callback's run of your own architecture."""
    from landscape.engine.devices import resolve_device

    found = run_snapshot(path, lr, None, epoch, model_def, resolve_device(device, "device"))
    return loaded(found.model, found.params, found.buffers).eval()


class ImageSet:
    """The samples of a measurement: a dataset's split as uint8 on the device, normalised batch by batch."""

    def __init__(self, dataset: str, data_root: str, device: torch.device, *, train_subset: int = 0, seed: int = 0,
                 image_size: int = 0, imagenette_size: str = "320", batch_size: int = 128):
        self.dataset = load_dataset(dataset, data_root, device=device, train_subset=train_subset, seed=seed,
                                    image_size=image_size, imagenette_size=imagenette_size)
        self.normalize = Normalizer(self.dataset.mean, self.dataset.std, self.dataset.train.device)
        self.batch_size = batch_size  # the training batch size: train-mode BatchNorm statistics as in training
        self.name = dataset

    @classmethod
    def of_run(cls, run: Run, device: torch.device, data_root: str | None = None,
               dataset: str | None = None) -> "ImageSet":
        """The run's own dataset (its options as stored), or `dataset` under `data_root` (a Recorder's file)."""
        config = run.config
        name = dataset or config.get("dataset")
        if name is None:
            raise UsageError(f"{run.path} does not say which dataset it was trained on: pass --dataset and "
                             f"--data-root")
        own = name == config.get("dataset")
        return cls(name, data_root or config.get("data_root") or "data", device,
                   train_subset=int(config.get("train_subset") or 0) if own else 0,
                   seed=int(config.get("seed") or 0), image_size=int(run.attrs.get("image_size", 0)) if own else 0,
                   imagenette_size=str(config.get("imagenette_size", "320")),
                   batch_size=int(config.get("batch_size") or 128))

    def split(self, name: str, count: int | None, option: str = "--images") -> Split:
        """The first `count` images of split `name` (train or test); all of them for None."""
        split = self.dataset.train if name == "train" else self.dataset.test
        total = len(split)
        if count is None:
            return split
        if count > total:
            raise UsageError(f"{option} {count:,} exceeds the {total:,} {name} images: give at most {total:,}")
        index = torch.arange(count, device=split.images.device)
        return Split(split.images[index], split.labels[index], split.device)

    def batches(self, split: Split, batch_size: int) -> BatchSet:
        """The split's normalised batches, in order, cut anew on the device at every pass."""
        sizes = [min(batch_size, len(split) - start) for start in range(0, len(split), batch_size)]
        return BatchSet(sizes=sizes, make=ImageBatches(split, self.dataset.mean, self.dataset.std, batch_size))


class ImageBatches:
    """Makes a split's normalised batches at every pass; movable to another device (a worker's)."""

    def __init__(self, split: Split, mean, std, batch_size: int):
        self.split, self.mean, self.std, self.batch_size = split, mean, std, batch_size
        self.normalize = Normalizer(mean, std, split.images.device)

    def __call__(self):
        return eval_batches(self.split, self.normalize, self.batch_size)

    def to(self, device: torch.device) -> "ImageBatches":
        if device == self.split.device and device == self.split.images.device:
            return self
        moved = Split(self.split.images.to(device), self.split.labels.to(device), device)
        return ImageBatches(moved, self.mean, self.std, self.batch_size)


def describe_source(run: Run | None, weights_file: str | None) -> dict:
    """Attributes naming where a measurement's model came from."""
    if run is not None:
        return {"run_file": run.path.name, "weights_file": weights_file or "", "model": run.model}
    return {"run_file": "", "weights_file": weights_file or "", "source": "foreign model"}


def stored_json(values: dict) -> str:
    return json.dumps(values, sort_keys=True, default=str)
