"""Critical sharpness (`--sharpness-method critical`): its cost on training, and how it tracks the Lanczos top
eigenvalue through a run that reaches the edge of stability.

1. cost: `landscape run` (VGG-A with BatchNorm, plain SGD at two rates) without tracking, and with critical
   sharpness every 10 steps on a fixed subset of training images; the overhead per image count.
2. agreement: one run with critical sharpness every K steps and a cold Lanczos run to convergence on the same
   weights and images at every measurement (`--sharpness-check-every 1`): per rate and measurement, the critical
   value, the top eigenvalue, their ratio, and both against the 2/lr threshold.

    python benchmarks/bench_critical.py --data-root ../shared/data
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


def timed(config: RunConfig, path: Path, repeats: int) -> float:
    """The best of `repeats` runs (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        train(config, path, progress=False)
        best = min(best, time.perf_counter() - start)
        path.unlink()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("LANDSCAPE_TEST_DATA", "data"))
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--lrs", default="0.05,0.1")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the timed runs")
    parser.add_argument("--images", default="32,128", help="sharpness images of the timed runs, comma-separated")
    parser.add_argument("--agreement-epochs", type=int, default=6)
    parser.add_argument("--agreement-every", type=int, default=100)
    parser.add_argument("--agreement-images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each setting; the best is kept")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train-subset", type=int, default=0, help="0: the whole training split")
    parser.add_argument("--skip", default="", help="cost,agreement")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    lrs = tuple(float(x) for x in args.lrs.split(","))
    base = RunConfig(model="vgg_bn", lrs=lrs, optimizer="sgd", momentum=0.0, width=args.width,
                     data_root=args.data_root, epochs=args.epochs, snapshots=False, device=args.device,
                     train_subset=args.train_subset)
    with tempfile.TemporaryDirectory() as folder:
        if "cost" not in skip:
            timed(replace(base, epochs=1), Path(folder) / "warm-up.h5", 1)  # data, threads and allocator warmed
            plain = timed(base, Path(folder) / "plain.h5", args.repeats)
            print(f"cost: VGG-A BN width {args.width}, SGD at {args.lrs}, {args.epochs} epochs of the CIFAR subset, "
                  f"batch 128, best of {args.repeats}: without tracking {plain:.1f} s")
            for images in map(int, args.images.split(",")):
                config = replace(base, sharpness_every=10, sharpness_images=images, sharpness_method="critical")
                seconds = timed(config, Path(folder) / f"critical{images}.h5", args.repeats)
                print(f"  critical every 10 steps on {images} images: {seconds:.1f} s, overhead "
                      f"{100 * (seconds / plain - 1):+.1f}%")
        if "agreement" not in skip:
            config = replace(base, epochs=args.agreement_epochs, sharpness_every=args.agreement_every,
                             sharpness_images=args.agreement_images, sharpness_method="critical",
                             sharpness_check_every=1)
            run = read_run(train(config, Path(folder) / "agree.h5", progress=False))
            sharp = run.sharpness
            print(f"\nagreement: every {args.agreement_every} steps on {args.agreement_images} images, "
                  f"{args.agreement_epochs} epochs; Lanczos: cold to convergence (error bound 1e-4)")
            print(f"{'lr':>6}  {'step':>5}  {'critical':>9}  {'lanczos top':>11}  {'ratio':>6}  {'2/lr':>6}  "
                  f"{'critical/(2/lr)':>15}  {'top/(2/lr)':>10}")
            for r, lr in enumerate(run.lrs):
                for i, step in enumerate(sharp["step"]):
                    critical, top = sharp["top"][r, i, 0], sharp["check_top"][r, i, 0]
                    print(f"{lr:>6g}  {step:>5d}  {critical:>9.4g}  {top:>11.4g}  {critical / top:>6.2f}  "
                          f"{2 / lr:>6.1f}  {critical * lr / 2:>15.2f}  {top * lr / 2:>10.2f}")
                ratio = sharp["top"][r, :, 0] / sharp["check_top"][r, :, 0]
                print(f"{lr:>6g}  median critical/top {np.nanmedian(ratio):.2f}, NaN at "
                      f"{int(np.isnan(sharp['top'][r, :, 0]).sum())} of {len(sharp['step'])}")


if __name__ == "__main__":
    main()
