"""Throughput of `landscape run` against a course-style baseline, in one process, same settings.

The baseline is what report 004's course template does: a torchvision-style Dataset (PIL image,
ToTensor, Normalize) behind a DataLoader, one model per learning rate trained one after another,
`.item()` on every step's loss, a test pass after each epoch. Ours is `landscape.train.train`
(data on the device, runs in lockstep, losses copied in blocks, HDF5 recording). Both train the
same model from the same initial weights on the same images for the same number of epochs.

    python benchmarks/bench_runner.py --data-root ../shared/data --width 0.25 --train-subset 2048

Prints training images per second for each (test passes and recording included) and the ratio.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from landscape.config import RunConfig, parse_lrs
from landscape.data import CIFAR10_MEAN, CIFAR10_STD, cifar_folder, read_cifar10
from landscape.models import build_model

from common import run_arguments, time_landscape_run


class CourseCIFAR(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's __getitem__: HWC uint8 -> PIL -> transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images = images.transpose(0, 2, 3, 1)  # NHWC, as torchvision stores it
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def course_baseline(config: RunConfig, workers: int) -> float:
    """Train like the course template; return seconds."""
    train_x, train_y, test_x, test_y = read_cifar10(cifar_folder(config.data_root, False))
    if config.train_subset:
        train_x, train_y = train_x[:config.train_subset], train_y[:config.train_subset]
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    train_loader = DataLoader(CourseCIFAR(train_x, train_y, transform), batch_size=config.batch_size,
                              shuffle=True, num_workers=workers)
    test_loader = DataLoader(CourseCIFAR(test_x, test_y, transform), batch_size=config.batch_size,
                             num_workers=workers)
    device = torch.device("cuda" if torch.cuda.is_available() and config.device != "cpu" else "cpu")
    torch.manual_seed(config.seed)
    initial = build_model(config.model, width=config.width).to(device)
    start = time.perf_counter()
    for lr in config.lrs:
        model = copy.deepcopy(initial)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        losses = []
        for _ in range(config.epochs):
            model.train()
            for x, y in train_loader:
                x, y = x.to(device), y.to(device)
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            model.eval()
            correct = 0
            with torch.no_grad():
                for x, y in test_loader:
                    correct += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
    return time.perf_counter() - start


def main() -> None:
    parser = run_arguments(__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    args = parser.parse_args()
    config = RunConfig(model=args.model, lrs=parse_lrs(args.lrs), width=args.width, data_root=args.data_root,
                       train_subset=args.train_subset, epochs=args.epochs, batch_size=args.batch_size,
                       device=args.device).validate()
    images = len(config.lrs) * config.epochs * (config.train_subset or 50_000)
    times = {"course baseline": [], "landscape run": []}
    for _ in range(args.repeats):
        times["course baseline"].append(course_baseline(config, args.workers))
        times["landscape run"].append(time_landscape_run(config))
    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else \
        f"cpu ({torch.get_num_threads()} threads)"
    print(f"{config.model} width {config.width}, {len(config.lrs)} rates, {config.epochs} epoch(s), "
          f"{config.train_subset or 50_000} images, batch {config.batch_size}, {device}")
    base = min(times["course baseline"])
    for name, seconds in times.items():
        best = min(seconds)
        print(f"{name:>16}: {best:7.2f} s  {images / best:8.1f} train images/s  x{base / best:.2f}")


if __name__ == "__main__":
    main()
