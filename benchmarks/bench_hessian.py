"""Curvature against PyHessian, HVP methods against each other, and the cost of sharpness tracking.

1. PyHessian (`pip install pyhessian`; power iteration, double backward, eval-mode BatchNorm) and
   `landscape hessian --bn eval` on the same snapshot and the same batches of images: the top
   eigenvalue each finds, their relative difference, Hessian-vector products and wall time.
2. Seconds per Hessian-vector product: double backward against forward-over-reverse (torch.func).
3. `landscape run` with and without `--sharpness-every`, and the overhead.

    python benchmarks/bench_hessian.py --data-root ../shared/data --width 0.25 --images 1024
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from landscape.training.config import RunConfig
from landscape.commands.hessian import HessianOptions, compute_hessian
from landscape.commands.sources import ImageSet, snapshot_model
from landscape.engine.batches import BatchSet
from landscape.engine.operators import HVP_METHODS, HessianOperator
from landscape.engine.devices import resolve_device
from landscape.engine.functional import module_buffers, prepared_module, state_of
from landscape.files.hessian_file import read_hessian
from landscape.files.weights_file import weights_of_run
from landscape.files.run_file import read_run
from landscape.training.runner import train


def pyhessian_top(run_path: Path, batches, device: torch.device, tol: float) -> tuple[float, int, float]:
    """PyHessian's top eigenvalue over `batches` (its dataloader mode); (value, HVPs, seconds)."""
    from pyhessian import hessian as PyHessian

    run = read_run(run_path)
    weights = weights_of_run(run)
    model = snapshot_model(run, weights, 0, weights.epochs[-1], device)
    start = time.perf_counter()
    computer = PyHessian(model, F.cross_entropy, dataloader=batches, cuda=device.type == "cuda")
    counted = {"hvps": 0}
    original = computer.dataloader_hv_product

    def counting(v):
        counted["hvps"] += 1
        return original(v)

    computer.dataloader_hv_product = counting
    values, _ = computer.eigenvalues(top_n=1, tol=tol)
    return float(values[0]), counted["hvps"], time.perf_counter() - start


def seconds_per_hvp(run_path: Path, batches, device: torch.device, repeats: int = 3) -> dict[str, float]:
    run = read_run(run_path)
    weights = weights_of_run(run)
    model = snapshot_model(run, weights, 0, weights.epochs[-1], device)
    params, buffers = state_of(model)
    module = prepared_module(model, "train")
    out = {}
    for method in HVP_METHODS:
        operator = HessianOperator(module, params, module_buffers(module, buffers), BatchSet(batches), method=method)
        v = torch.randn(operator.size, dtype=torch.float64, device=device)
        operator(v)
        start = time.perf_counter()
        for _ in range(repeats):
            operator(v)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[method] = (time.perf_counter() - start) / repeats
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("LANDSCAPE_TEST_DATA", "data"))
    parser.add_argument("--model", default="vgg_bn")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tol", type=float, default=1e-3, help="PyHessian's tolerance (its default)")
    parser.add_argument("--sharpness-subset", type=int, default=2048, help="training images of the timed runs")
    parser.add_argument("--sharpness-every", type=int, default=100)
    parser.add_argument("--sharpness-images", type=int, default=2048)
    parser.add_argument("--sharpness-epochs", type=int, default=0, help="0: enough for two measurements")
    parser.add_argument("--skip", default="", help="comma list of parts to leave out: pyhessian,hvp,sharpness")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    device = resolve_device(args.device)
    where = f"{device}" + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else
                           f" ({torch.get_num_threads()} threads)")
    with tempfile.TemporaryDirectory() as folder:
        config = RunConfig(model=args.model, lrs=(1e-3,), width=args.width, data_root=args.data_root, epochs=1,
                           train_subset=max(args.images, 1024), device=str(device))
        run_path = train(config, Path(folder) / "bench.h5", progress=False)
        images = ImageSet.of_run(read_run(run_path), device)
        batches = list(images.batches(images.split("train", args.images), 128))
        print(f"{args.model} width {args.width}, {args.images} images in batches of 128, {where}")
        if "pyhessian" not in skip:
            options = HessianOptions(top_k=1, images=args.images, batch_size=128, bn="eval", device=str(device))
            start = time.perf_counter()
            result = read_hessian(compute_hessian(run_path, options, Path(folder) / "h.h5", progress=False))
            ours_s = time.perf_counter() - start
            ours, ours_hvps = float(result.arrays["eigenvalues"][0, 0, 0]), int(result.arrays["eigen_hvps"][0, 0])
            try:
                theirs, their_hvps, their_s = pyhessian_top(run_path, batches, device, args.tol)
            except ImportError:
                print("PyHessian is not installed (pip install pyhessian): its row is missing")
                theirs, their_hvps, their_s = float("nan"), 0, float("nan")
            print(f"{'':>22}  {'top eigenvalue':>14}  {'HVPs':>5}  {'seconds':>8}  {'x PyHessian time':>16}")
            print(f"{'PyHessian':>22}  {theirs:14.6g}  {their_hvps:5d}  {their_s:8.2f}  {'1.00':>16}")
            print(f"{'landscape hessian':>22}  {ours:14.6g}  {ours_hvps:5d}  {ours_s:8.2f}  {ours_s / their_s:16.2f}")
            print(f"relative difference of the top eigenvalues: {abs(ours - theirs) / abs(theirs):.2e}")
        if "hvp" not in skip:
            timing = seconds_per_hvp(run_path, batches, device)
            print("seconds per Hessian-vector product (BN train): " +
                  ", ".join(f"{m} {s:.3f}" for m, s in timing.items()))
        if "sharpness" not in skip:
            steps_per_epoch = -(-args.sharpness_subset // 128)
            epochs = args.sharpness_epochs or -(-(args.sharpness_every + 1) // steps_per_epoch)
            base = replace(config, lrs=(1e-3, 5e-4), train_subset=args.sharpness_subset, epochs=epochs,
                           snapshots=False)
            tracked = replace(base, sharpness_every=args.sharpness_every, sharpness_images=args.sharpness_images)
            times = {}
            for name, run_config in (("plain", base), ("tracked", tracked)):
                start = time.perf_counter()
                train(run_config, Path(folder) / f"{name}.h5", progress=False)
                times[name] = time.perf_counter() - start
            measured = len(range(0, epochs * steps_per_epoch, args.sharpness_every))
            print(f"sharpness every {args.sharpness_every} steps on {args.sharpness_images} images "
                  f"({tracked.sharpness_iters} Lanczos steps), {epochs} epochs of {args.sharpness_subset} images, "
                  f"2 rates, {measured} measurements: plain {times['plain']:.1f}s, tracked {times['tracked']:.1f}s, "
                  f"overhead {100 * (times['tracked'] / times['plain'] - 1):+.0f}%")


if __name__ == "__main__":
    main()
