"""The Python API on a torchvision ResNet-18 at 32x32: surfaces against loss-landscapes and the reference loop, and
the Recorder's cost on a plain training loop.

1. `landscape.surface(model, (x, y), ...)` against `loss_landscapes.random_plane` (`pip install loss-landscapes`;
   it evaluates one fixed batch) and against the reference implementation's way (tomgoldstein/loss-landscape: one
   point at a time, weights written into the model in place, a DataLoader over the images): the same number of
   grid points on the same images, in eval mode; points per second and ratios.
2. A plain loop (SGD with momentum, batch 128, the CIFAR subset) with and without `landscape.Recorder` (recording
   only: per-step losses and the epoch's file), repeated, best of each, and the overhead in percent.

    python benchmarks/bench_api.py --data-root ../shared/data
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import landscape  # noqa: E402
from landscape.engine.devices import resolve_device  # noqa: E402
from landscape.training.data import CIFAR10_MEAN, CIFAR10_STD, cifar_folder, read_cifar10  # noqa: E402


def cifar(root: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels, _, _ = read_cifar10(cifar_folder(root, False))
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (torch.from_numpy(images[:count]).float() / 255 - mean) / std, torch.from_numpy(labels[:count]).long()


MODEL = "resnet18"


def resnet18():
    """torchvision's ResNet-18 (or, with --model tiny for a dry run, a small CNN), random weights."""
    import torchvision

    torch.manual_seed(0)
    if MODEL == "tiny":
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    return torchvision.models.resnet18(num_classes=10)


def reference_loop(model, x, y, steps: int, device) -> float:
    """One point at a time, weights written in place, a DataLoader over the images (batch 128)."""
    from torch.utils.data import DataLoader, TensorDataset

    from landscape.engine.directions import normalize_direction, random_direction

    model = model.to(device).eval()
    origin = {n: p.detach().clone() for n, p in model.named_parameters()}
    generator = torch.Generator().manual_seed(0)
    dx, dy = (normalize_direction(random_direction(origin, generator), origin, "filter", "biasbn") for _ in range(2))
    loader = DataLoader(TensorDataset(x, y), batch_size=128)
    coords = np.linspace(-1, 1, steps)
    start = time.perf_counter()
    with torch.no_grad():
        for a in coords:
            for b in coords:
                for name, p in model.named_parameters():
                    p.copy_(origin[name] + float(a) * dx[name] + float(b) * dy[name])
                for images, labels in loader:
                    F.cross_entropy(model(images.to(device)), labels.to(device)).item()
        for name, p in model.named_parameters():
            p.copy_(origin[name])
    return time.perf_counter() - start


def loss_landscapes_plane(model, x, y, steps: int, device) -> float | None:
    try:
        import loss_landscapes
        import loss_landscapes.metrics
    except ImportError:
        return None
    model = model.to(device).eval()
    metric = loss_landscapes.metrics.Loss(torch.nn.CrossEntropyLoss(), x.to(device), y.to(device))
    start = time.perf_counter()
    with torch.no_grad():
        try:
            loss_landscapes.random_plane(model, metric, distance=1, steps=steps, normalization="filter",
                                         deepcopy_model=True)
        except ZeroDivisionError:  # its filter normalisation divides by zero on zero-initialised BatchNorm biases
            print("loss-landscapes: filter normalisation fails on this model (ZeroDivisionError), timed without it")
            start = time.perf_counter()
            loss_landscapes.random_plane(model, metric, distance=1, steps=steps, normalization=None,
                                         deepcopy_model=True)
    return time.perf_counter() - start


def timed_loop(batches, record: Path | None, epochs: int) -> float:
    torch.manual_seed(1)
    model = resnet18()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    recorder = landscape.Recorder(record, model, optimizer, overwrite=True, snapshots=False) if record else None
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            if recorder is not None:
                recorder.step(loss, (x, y))
        if recorder is not None:
            recorder.epoch()
    if recorder is not None:
        recorder.close()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("LANDSCAPE_TEST_DATA", "data"))
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="grid points per axis")
    parser.add_argument("--loop-images", type=int, default=1024)
    parser.add_argument("--loop-epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip", default="", help="comma list: surface,recorder")
    parser.add_argument("--model", default="resnet18", choices=("resnet18", "tiny"))
    args = parser.parse_args()
    global MODEL
    MODEL = args.model
    device = resolve_device(args.device)
    skip = set(filter(None, args.skip.split(",")))
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    points = args.steps ** 2
    if "surface" not in skip:
        x, y = cifar(args.data_root, args.images)
        model = resnet18().to(device)
        start = time.perf_counter()
        landscape.surface(model, (x.to(device), y.to(device)), grid=f"-1:1:{args.steps}", batch_size=args.images)
        ours = time.perf_counter() - start
        theirs = loss_landscapes_plane(resnet18(), x, y, args.steps, device)
        reference = reference_loop(resnet18(), x, y, args.steps, device)
        print(f"{'torchvision resnet18' if MODEL == 'resnet18' else 'a small CNN'}, 32x32, {points} points x {args.images} images, {device} ({where})")
        print(f"{'':>24}  {'seconds':>8}  {'points/s':>9}  {'x reference':>11}")
        print(f"{'reference loop':>24}  {reference:8.2f}  {points / reference:9.3f}  {'x1.00':>11}")
        if theirs is not None:
            print(f"{'loss-landscapes':>24}  {theirs:8.2f}  {points / theirs:9.3f}  {f'x{reference / theirs:.2f}':>11}")
        else:
            print("loss-landscapes is not installed (pip install loss-landscapes): its row is missing")
        print(f"{'landscape.surface':>24}  {ours:8.2f}  {points / ours:9.3f}  {f'x{reference / ours:.2f}':>11}")
    if "recorder" not in skip:
        x, y = cifar(args.data_root, args.loop_images)
        batches = [(x[i:i + 128].to(device), y[i:i + 128].to(device)) for i in range(0, len(y), 128)]
        with tempfile.TemporaryDirectory() as folder:
            timed_loop(batches, None, 1)  # warm-up
            plain, recorded = [], []
            for _ in range(args.repeats):  # alternated, so drift in the machine's speed hits both
                plain.append(timed_loop(batches, None, args.loop_epochs))
                recorded.append(timed_loop(batches, Path(folder) / "rec.h5", args.loop_epochs))
        print(f"training loop, resnet18, {len(batches)} steps of 128 x {args.loop_epochs} epoch(s), best of "
              f"{args.repeats}: plain {min(plain):.2f}s, with Recorder {min(recorded):.2f}s, overhead "
              f"{100 * (min(recorded) / min(plain) - 1):+.1f}% (medians {np.median(plain):.2f}s / "
              f"{np.median(recorded):.2f}s)")


if __name__ == "__main__":
    main()
