"""Speed of `landscape run` against a course-style baseline, in one process, on identical settings.

Contenders, each training the same model from the same initial weights on the same images:
- course baseline: report 004's template: a torchvision-style Dataset (PIL image, ToTensor,
  Normalize) behind a DataLoader, one model per learning rate one after another, `.item()` every
  step, a test pass after each epoch;
- landscape loop: `landscape run --engine loop` (data on the device, runs in lockstep, losses copied
  in blocks, HDF5 recording);
- landscape fused: `landscape run --engine fused` (all runs as one stacked model, torch.func.vmap);
- bare loop: the loop engine over the same batches with no step-loss copies and no HDF5 file, to
  price the recording.

    python benchmarks/bench_speed.py --data-root ../shared/data --width 0.25 --train-subset 2048

Prints training images per second (test passes included), the ratio to the baseline, peak GPU
memory, the recording overhead, and the reference experiment's time (report 004: VGG-A and VGG-A
with BatchNorm, 4 rates, 20 epochs, 50,000 images) extrapolated from the measured throughput.
"""
from __future__ import annotations

import copy
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from landscape.training.config import RunConfig, parse_lrs
from landscape.training.data import (CIFAR10_MEAN, CIFAR10_STD, Normalizer, cifar_folder, eval_batches, load_dataset,
                            read_cifar10, train_batches)
from landscape.training.models import build_model
from landscape.training.runner import build_runs, resolve_device, trained_images

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
    """Train like the course template; return seconds (reading the data included, as for every contender)."""
    start = time.perf_counter()
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


def bare_training(config: RunConfig) -> float:
    """The engine alone over the same batches and test passes: no step-loss copies, no HDF5; seconds."""
    start = time.perf_counter()
    device = resolve_device(config.device)
    dataset = load_dataset(config.dataset, config.data_root, device=device, train_subset=config.train_subset)
    runs, _ = build_runs(config, dataset, device)
    normalize = Normalizer(dataset.mean, dataset.std, device)
    for epoch in range(config.epochs):
        for images, labels in train_batches(dataset.train, normalize, batch_size=config.batch_size,
                                            seed=config.seed, epoch=epoch, augment=config.augment):
            runs.train_step(images, labels)
        loss, _ = runs.evaluate(eval_batches(dataset.test, normalize, config.eval_batch_size))
        loss.cpu()  # one wait per epoch, as the recorded runner
    return time.perf_counter() - start


def main() -> None:
    parser = run_arguments(__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    parser.add_argument("--precision", default="auto", help="precision of the landscape contenders")
    parser.add_argument("--skip", default="", help="comma list of contenders to leave out (baseline,loop,fused,bare)")
    args = parser.parse_args()
    config = RunConfig(model=args.model, lrs=parse_lrs(args.lrs), width=args.width, data_root=args.data_root,
                       train_subset=args.train_subset, epochs=args.epochs, batch_size=args.batch_size,
                       device=args.device, precision=args.precision).validate()
    cuda = torch.cuda.is_available() and args.device != "cpu"
    contenders = {
        "course baseline": lambda: course_baseline(config, args.workers),
        "landscape loop": lambda: time_landscape_run(replace(config, engine="loop")),
        "landscape fused": lambda: time_landscape_run(replace(config, engine="fused")),
        "bare loop": lambda: bare_training(replace(config, engine="loop")),
    }
    skipped = {"baseline": "course baseline", "loop": "landscape loop", "fused": "landscape fused", "bare": "bare loop"}
    for key in filter(None, args.skip.split(",")):
        contenders.pop(skipped[key])
    times: dict[str, float] = {}
    memory: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, contender in contenders.items():
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            seconds = contender()
            times[name] = min(seconds, times.get(name, float("inf")))
            if cuda:
                memory[name] = torch.cuda.max_memory_allocated() / 2 ** 30
    images = len(config.lrs) * config.epochs * trained_images(config.train_subset or 50_000, config.batch_size)
    device = f"cuda: {torch.cuda.get_device_name()}" if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{config.model} width {config.width}, {len(config.lrs)} rates, {config.epochs} epoch(s), "
          f"{config.train_subset or 50_000} images, batch {config.batch_size}, {device}, precision {config.precision}")
    base = times.get("course baseline")
    reference_images = 2 * 4 * 20 * 50_000
    print(f"{'':>16}  {'seconds':>8}  {'images/s':>9}  {'x baseline':>10}  {'peak GiB':>8}  "
          f"{'reference experiment (extrapolated)':>36}")
    for name, seconds in times.items():
        ratio = f"x{base / seconds:.2f}" if base else "-"
        peak = f"{memory[name]:.2f}" if name in memory else "n/a"
        print(f"{name:>16}  {seconds:8.2f}  {images / seconds:9.1f}  {ratio:>10}  {peak:>8}  "
              f"{reference_images / (images / seconds) / 60:30.1f} min")
    if "bare loop" in times and "landscape loop" in times:
        print(f"recording overhead (loop with step losses and HDF5 vs bare loop): "
              f"{100 * (times['landscape loop'] / times['bare loop'] - 1):+.1f}%")


if __name__ == "__main__":
    main()
