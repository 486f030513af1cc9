"""Sharpness tracking: warm-started Lanczos against cold Lanczos, in Hessian-vector products and in error.

On one training run (VGG-A with BatchNorm, plain SGD at two rates that reach the 2/lr threshold, the top-2
eigenvalues every K steps on the whole CIFAR-10 subset, as Cohen et al. measure on 5,000 examples):
  (a) today's cold 20-step Lanczos at every measurement,
  (b) a cold Lanczos run to convergence at the same weights (the truth),
  (c) the warm-started default.
Training is bit-identical with and without tracking, so (a) and (c) come from two `landscape run`s whose
weights at every measured step are the same; (b) is the run of (c) with `--sharpness-check-every 1`. Printed:
products per measurement and in all, the ratio (a)/(c), the median and worst relative error of (a) and (c)
against (b), and (with --overhead) the training time with (c) against without tracking.

    python benchmarks/bench_sharpness.py --data-root ../shared/data               # the issue's setting
    python benchmarks/bench_sharpness.py --images 512 --epochs 3 --every 20       # a quick look
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.files.run_file import read_run  # noqa: E402
from landscape.training.config import RunConfig  # noqa: E402
from landscape.training.runner import train  # noqa: E402


def relative_errors(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    error = np.abs(estimate - truth) / np.abs(truth)
    return error[np.isfinite(error)]


def training_images(data_root: str, subset: int) -> int:
    import torch

    from landscape.training.data import load_dataset

    return len(load_dataset("cifar10", data_root, device=torch.device("cpu"), train_subset=subset).train)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("LANDSCAPE_TEST_DATA", "data"))
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--lrs", default="0.05,0.1", help="plain SGD rates (their 2/lr thresholds are reached)")
    parser.add_argument("--images", type=int, default=0, help="training images (0: the whole subset)")
    parser.add_argument("--sharpness-images", type=int, default=0, help="images measured on (0: all training ones)")
    parser.add_argument("--epochs", type=int, default=13)
    parser.add_argument("--every", type=int, default=100, help="steps between measurements")
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--warm-iters", type=int, default=0, help="warm steps (0: the default of landscape run)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overhead", action="store_true", help="also time training without tracking")
    args = parser.parse_args()
    lrs = tuple(float(v) for v in args.lrs.split(","))
    base = RunConfig(model="vgg_bn", width=args.width, lrs=lrs, optimizer="sgd", momentum=0.0, epochs=args.epochs,
                     batch_size=128, data_root=args.data_root, train_subset=args.images, snapshots=False,
                     device=args.device, threads=args.threads)
    tracked = replace(base, sharpness_every=args.every, sharpness_top_k=args.top_k,
                      sharpness_images=args.sharpness_images or training_images(args.data_root, args.images))
    if args.warm_iters:
        tracked = replace(tracked, sharpness_iters=args.warm_iters)
    plain_seconds = warm_seconds = None
    with tempfile.TemporaryDirectory() as folder:
        if args.overhead:
            start = time.perf_counter()
            train(base, Path(folder) / "plain.h5", progress=False)
            plain_seconds = time.perf_counter() - start
            start = time.perf_counter()
            train(tracked, Path(folder) / "warm.h5", progress=False)
            warm_seconds = time.perf_counter() - start
        # the warm estimates of a run with checks are those of one without: checks start cold, apart
        checked = read_run(train(replace(tracked, sharpness_check_every=1), Path(folder) / "checked.h5",
                                 progress=False))
        cold = read_run(train(replace(tracked, sharpness_warm=False, sharpness_iters=20, sharpness_cold_iters=20),
                              Path(folder) / "cold.h5", progress=False))
    warm = checked
    truth = checked.sharpness["check_top"]
    assert np.array_equal(checked.sharpness["check_step"], warm.sharpness["step"])
    assert np.array_equal(checked.train_loss, warm.train_loss) and np.array_equal(cold.train_loss, warm.train_loss)
    estimates = {"(a) cold, 20 steps": (cold.sharpness["top"], cold.sharpness["hvps"]),
                 "(c) warm (default)": (warm.sharpness["top"], warm.sharpness["hvps"])}
    measurements = warm.sharpness["top"].shape[1]
    print(f"VGG-A BN width {args.width:g}, SGD lr {args.lrs}, {warm.steps} steps, top-{args.top_k} every "
          f"{args.every} steps on {warm.sharpness['images']} images: {measurements} measurements x {len(lrs)} runs; "
          f"warm: {warm.sharpness['attrs']['iterations']} steps after a cold first of "
          f"{warm.sharpness['attrs']['cold_iterations']}")
    print(f"{'':>22}  {'HVPs/measurement':>16}  {'HVPs in all':>11}  {'median error':>12}  {'worst error':>11}")
    for name, (top, hvps) in estimates.items():
        error = relative_errors(top, truth)
        print(f"{name:>22}  {hvps.mean():16.1f}  {int(hvps.sum()):11d}  {100 * np.median(error):11.3f}%  "
              f"{100 * error.max():10.3f}%")
    print(f"{'(b) cold, converged':>22}  {'(the truth; tol 1e-4)':>16}")
    ratio = cold.sharpness["hvps"].sum() / warm.sharpness["hvps"].sum()
    print(f"(a) uses x{ratio:.2f} the products of (c)")
    top1 = truth[:, :, 0]
    for r, lr in enumerate(lrs):
        print(f"lr {lr:g}: converged top eigenvalue per measurement {np.round(top1[r], 2).tolist()} "
              f"(2/lr = {2 / lr:g})")
    if plain_seconds is not None and warm_seconds is not None:
        print(f"training {plain_seconds:.1f}s without tracking, {warm_seconds:.1f}s with (c): overhead "
              f"{100 * (warm_seconds / plain_seconds - 1):+.0f}%")


if __name__ == "__main__":
    main()
