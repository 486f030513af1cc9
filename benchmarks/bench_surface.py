"""Speed of `landscape surface` against the reference implementation's way of computing a surface.

The reference (tomgoldstein/loss-landscape, `plot_surface.py`) evaluates one grid point at a time:
it writes w + x d_x + y d_y into the model in place, then runs a torchvision-style DataLoader over
the images (PIL image, ToTensor, Normalize, batch 128, 2 workers) in eval mode under no_grad.
Both contenders use the same snapshot, the same filter-normalised directions, grid and images;
the script checks that they agree and prints points per second and the ratio.

    python benchmarks/bench_surface.py --data-root ../shared/data --width 0.25 --grid=-1:1:5 --images 2048
    python benchmarks/bench_surface.py --device cuda --width 1 --grid=-1:1:51 --images 10000   # GPU target
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
from torch.utils.data import DataLoader
from torchvision import transforms

from landscape.training.config import RunConfig
from landscape.training.data import CIFAR10_MEAN, CIFAR10_STD, cifar_folder, read_cifar10
from landscape.files.weights_file import read_weights, weights_path
from landscape.files.run_file import read_run
from landscape.commands.surface import SurfaceOptions, compute_surface
from landscape.engine.devices import resolve_device
from landscape.engine.directions import normalize_direction, random_direction
from landscape.engine.functional import state_of
from landscape.engine.surface import parse_grid
from landscape.files.surface_file import read_surface
from landscape.training.runner import train

sys.path.insert(0, str(Path(__file__).parent))
from bench_speed import CourseCIFAR  # noqa: E402
from common import repeated_cifar  # noqa: E402


def reference_surface(run_path: Path, options: SurfaceOptions, data_root: str, device: torch.device,
                      workers: int) -> tuple[np.ndarray, float]:
    """The reference implementation's loop; returns the loss grid [ny, nx] and the seconds it took."""
    from landscape.commands.sources import snapshot_model

    start = time.perf_counter()
    run = read_run(run_path)
    weights = read_weights(weights_path(run_path))
    model = snapshot_model(run, weights, 0, weights.epochs[-1], device)
    origin = {n: p.clone() for n, p in state_of(model)[0].items()}
    generator = torch.Generator().manual_seed(options.seed)
    dx, dy = (normalize_direction(random_direction(origin, generator), origin, "filter", "biasbn") for _ in range(2))
    train_x, train_y, _, _ = read_cifar10(cifar_folder(data_root, False))
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    dataset = CourseCIFAR(train_x[:options.images], train_y[:options.images], transform)
    loader = DataLoader(dataset, batch_size=128, shuffle=False, num_workers=workers)
    xs, ys = parse_grid(options.grid), parse_grid(options.grid_y or options.grid)
    losses = np.zeros((len(ys), len(xs)))
    params = dict(model.named_parameters())
    model.eval()
    for iy, y in enumerate(ys):
        for ix, x in enumerate(xs):
            with torch.no_grad():
                for name, p in params.items():  # weights set in place, as the reference does
                    p.copy_(origin[name] + float(x) * dx[name] + float(y) * dy[name])
                total, count = 0.0, 0
                for images, labels in loader:
                    images, labels = images.to(device), labels.to(device)
                    total += F.cross_entropy(model(images), labels, reduction="sum").item()
                    count += labels.shape[0]
            losses[iy, ix] = total / count
    return losses, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("LANDSCAPE_TEST_DATA", "data"))
    parser.add_argument("--model", default="vgg_bn")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--grid", default="-1:1:5")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference")
    parser.add_argument("--precision", default="fp32", help="landscape's precision (the reference is fp32)")
    parser.add_argument("--points-per-pass", type=int, default=0)
    parser.add_argument("--skip-reference", action="store_true", help="time landscape only (large grids on a GPU)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        data_root = args.data_root
        if args.images > 5085:  # the shared subset, repeated to the size asked for
            data_root = str(repeated_cifar(args.data_root, args.images, Path(folder) / "data"))
        config = RunConfig(model=args.model, lrs=(1e-3,), width=args.width, data_root=data_root, epochs=1,
                           train_subset=min(args.images, 2048), device=str(device))
        run_path = train(config, Path(folder) / "bench.h5", progress=False)
        config_json = read_run(run_path).attrs["config"]
        # surfaces read every training image of the run: widen its subset to the images asked for
        import h5py

        with h5py.File(run_path, "a") as f:
            f.attrs["config"] = config_json.replace(f'"train_subset": {config.train_subset}',
                                                    f'"train_subset": {args.images}')
        options = SurfaceOptions(grid=args.grid, images=args.images, device=str(device), precision=args.precision,
                                 points_per_pass=args.points_per_pass)
        points = len(parse_grid(args.grid)) ** 2
        start = time.perf_counter()
        out = compute_surface(run_path, options, Path(folder) / "surface.h5", progress=False)
        ours = time.perf_counter() - start
        surface = read_surface(out)
        print(f"{args.model} width {args.width}, {points} points ({args.grid} squared), {args.images} images, "
              f"{device}" + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else
                             f" ({torch.get_num_threads()} threads)") +
              f", landscape precision {surface.attrs['precision']}, {surface.attrs['points_per_pass']} points/pass")
        print(f"{'':>22}  {'seconds':>8}  {'points/s':>9}  {'x reference':>11}")
        if not args.skip_reference:
            reference, seconds = reference_surface(run_path, options, data_root, device, args.workers)
            print(f"{'reference loop':>22}  {seconds:8.2f}  {points / seconds:9.3f}  {'x1.00':>11}")
            print(f"{'landscape surface':>22}  {ours:8.2f}  {points / ours:9.3f}  {f'x{seconds / ours:.2f}':>11}")
            print(f"largest relative difference of the losses: "
                  f"{np.max(np.abs(surface.loss - reference) / np.abs(reference)):.2e}")
        else:
            print(f"{'landscape surface':>22}  {ours:8.2f}  {points / ours:9.3f}  {'-':>11}")
        print(f"projected for a 51x51 grid at this rate: {2601 / (points / ours):.0f} s")


if __name__ == "__main__":
    main()
