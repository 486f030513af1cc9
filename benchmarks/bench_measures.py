"""The cost of each flatness and sharpness measure, and of measuring a whole ablation grid.

1. per measure, on one VGG-A with BatchNorm (width 0.25, trained 2 epochs), 1,024 training images: seconds and loss
   evaluations (a forward pass over the images; a gradient counts one, its backward included) or products;
2. the quick preset of `cifar10_vgg_batchnorm` (6 cells, each trained by `ablate run` if missing) measured end to
   end by `ablate measure`: in this process, and on a local Ray with 2 workers (--ray).

    python benchmarks/bench_measures.py --data-root ../shared/data [--ray]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.engine.measures import MEASURE_GROUPS, MeasureOptions, compute_measures  # noqa: E402
from landscape.engine.batches import Objective  # noqa: E402
from landscape.engine.functional import state_of  # noqa: E402
from landscape.training.config import RunConfig  # noqa: E402
from landscape.training.runner import train  # noqa: E402


def per_measure(args, folder: Path) -> None:
    from landscape.commands.sources import ImageSet, snapshot_model
    from landscape.files.run_file import read_run
    from landscape.files.weights_file import weights_of_run

    config = RunConfig(model="vgg_bn", lrs=(1e-3,), width=args.width, data_root=args.data_root, epochs=2,
                       train_subset=2048, device="cpu")
    run = read_run(train(config, folder / "one.h5", progress=False))
    weights = weights_of_run(run)
    model = snapshot_model(run, weights, 0, weights.epochs[-1], torch.device("cpu"))
    images = ImageSet.of_run(run, torch.device("cpu"))
    batches = images.batches(images.split("train", args.images), 128)
    tests = images.batches(images.split("test", min(args.images, len(images.dataset.test))), 128)
    params, buffers = state_of(model)
    print(f"1. VGG-A BN width {args.width}, {args.images} images, {torch.get_num_threads()} threads")
    print(f"{'measure':>18}  {'seconds':>8}  {'loss passes':>11}  {'products':>8}")
    for group in (g for g in MEASURE_GROUPS if g != "barrier"):  # the barrier needs two seeds: bench_connect.py
        options = MeasureOptions(measures=(group,), rho=(0.05,), radius=(0.1,)).validate()
        start = time.perf_counter()
        result = compute_measures(model, params, buffers, batches, Objective(), options, tests)
        products = sum(v for k, v in result.attrs.items() if k.endswith("_products"))
        print(f"{group:>18}  {time.perf_counter() - start:>8.2f}  {result.attrs['loss_evaluations']:>11}  "
              f"{products:>8}")


def whole_grid(args, folder: Path) -> None:
    import subprocess

    results = folder / "ablations"
    base = [sys.executable, "-m", "landscape", "ablate"]
    start = time.perf_counter()
    subprocess.run(base + ["run", "cifar10_vgg_batchnorm", "--preset", "quick", "--results", str(results),
                           "--data-root", args.data_root, "--quiet"], check=True, capture_output=True)
    print(f"\n2. cifar10_vgg_batchnorm, quick preset: 6 cells trained in {time.perf_counter() - start:.0f} s")
    runs = [("in process", [])] + ([("local Ray, 2 workers", ["--executor", "ray", "--workers", "2"])]
                                   if args.ray else [])
    for name, extra in runs:
        (results / "cifar10_vgg_batchnorm" / "quick" / "measures.h5").unlink(missing_ok=True)
        start = time.perf_counter()
        done = subprocess.run(base + ["measure", "cifar10_vgg_batchnorm", "--preset", "quick", "--results",
                                      str(results), "--images", str(args.images), "--test-images", "1017",
                                      "--device", "cpu", *extra],
                              capture_output=True, text=True)
        if done.returncode:
            print(f"   {name}: failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        print(f"   ablate measure ({name}): {time.perf_counter() - start:.0f} s")
    correlations = results / "cifar10_vgg_batchnorm" / "quick" / "correlations.md"
    if correlations.exists():
        print("\n" + correlations.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("LANDSCAPE_TEST_DATA", "data"))
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--ray", action="store_true", help="also measure the grid on a local Ray with 2 workers")
    parser.add_argument("--skip", default="", help="comma list: measures,grid")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    folder = Path(tempfile.mkdtemp())
    try:
        if "measures" not in skip:
            per_measure(args, folder)
        if "grid" not in skip:
            whole_grid(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
