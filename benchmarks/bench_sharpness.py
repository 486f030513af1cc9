"""Sharpness tracking: Hessian-vector products against error, for cold and warm-started Lanczos, on one run.

One training run (VGG-A with BatchNorm, plain SGD at rates that reach their 2/lr threshold; top-k eigenvalues every
K steps on the whole CIFAR-10 subset, as Cohen et al. measure on 5,000 examples). At every measured step, on the
same weights, each variant measures with its own tracker (`engine.sharpness.SharpnessTracker`, as `landscape run
--sharpness-every` does), and a cold Lanczos run to convergence gives the truth:
  (a) cold, 20 steps (the default of `landscape run --sharpness-iters`),
  (b) cold, to convergence (error bound 1e-6 x |value|, at most 100 steps: the truth),
  (c) cold, 12 steps (cheaper),
  (d) warm-started from the previous measurement's Ritz vectors, 5 steps (`--sharpness-warm`).
It prints the products per measurement and in all, the median and worst relative error against (b), the
overlap of consecutive top eigenvectors (how far they turn between measurements), and with --overhead the
training time of `landscape run` with the default tracking against none.

    python benchmarks/bench_sharpness.py --data-root ../shared/data               # the setting above
    python benchmarks/bench_sharpness.py --sharpness-images 512 --epochs 4        # a quick look
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
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.engine.batches import BatchSet  # noqa: E402
from landscape.engine.curvature import top_eigenvalues  # noqa: E402
from landscape.engine.operators import HessianOperator  # noqa: E402
from landscape.engine.functional import module_buffers, prepared_module, state_of  # noqa: E402
from landscape.engine.sharpness import SharpnessTracker  # noqa: E402
from landscape.training.config import RunConfig  # noqa: E402
from landscape.training.data import Normalizer, Split, eval_batches, load_dataset, train_batches  # noqa: E402
from landscape.training.models import build_model  # noqa: E402
from landscape.training.runner import train  # noqa: E402

DEFAULT_ITERS = RunConfig().sharpness_iters
TRUTH_TOL = 1e-6  # error bound of the truth, relative: far below the 1% the estimates are held to
TRUTH_STEPS = 100


class OneRun:
    """One model seen as a run engine by the tracker."""

    def __init__(self, model):
        self.model, self.active = model, [True]

    def __len__(self):
        return 1

    def run_module(self, run):
        params, buffers = state_of(self.model)
        return self.model, params, buffers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("LANDSCAPE_TEST_DATA", "data"))
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--lrs", default="0.05,0.1", help="plain SGD rates")
    parser.add_argument("--sharpness-images", type=int, default=0, help="images measured on (0: every training one)")
    parser.add_argument("--train-images", type=int, default=0, help="training images (0: the whole subset)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--every", type=int, default=100, help="steps between measurements")
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overhead", action="store_true", help="also time `landscape run` with and without")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from landscape.engine.devices import resolve_device

    device = resolve_device(args.device)
    data = load_dataset("cifar10", args.data_root, device=device, train_subset=args.train_images)
    normalize = Normalizer(data.mean, data.std, device)
    count = args.sharpness_images or len(data.train)
    subset = Split(data.train.images[:count], data.train.labels[:count], device)
    batches = BatchSet(list(eval_batches(subset, normalize, 128)))
    variants = {f"(a) cold, {DEFAULT_ITERS} steps (default)": dict(steps=DEFAULT_ITERS, warm=False),
                "(c) cold, 12 steps": dict(steps=12, warm=False), "(d) warm, 5 steps": dict(steps=5, warm=True)}
    errors = {name: [] for name in variants}
    products = {name: [] for name in variants}
    overlaps = []
    lrs = [float(v) for v in args.lrs.split(",")]
    started = time.perf_counter()
    for lr in lrs:
        torch.manual_seed(0)
        model = build_model("vgg_bn", width=args.width, num_classes=10).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        trackers = {name: SharpnessTracker(batches, top_k=args.top_k, cold_steps=20, **options)
                    for name, options in variants.items()}
        module = prepared_module(model, "train")
        step, previous, truths = 0, None, []
        for epoch in range(args.epochs):
            for x, y in train_batches(data.train, normalize, batch_size=128, seed=0, epoch=epoch):
                if step % args.every == 0:
                    params, buffers = state_of(model)
                    operator = HessianOperator(module, params, module_buffers(module, buffers), batches)
                    truth = top_eigenvalues(operator, args.top_k, tol=TRUTH_TOL, max_steps=TRUTH_STEPS, vectors=True)
                    truths.append(truth.values)
                    if previous is not None:
                        overlaps.append(float((previous @ truth.vectors[0]).abs()))
                    previous = truth.vectors[0]
                    estimates = []
                    for name, tracker in trackers.items():
                        result = tracker.measure(OneRun(model), step)
                        values = result["top"][0].cpu().numpy()
                        products[name].append(int(result["hvps"][0]))
                        errors[name].append(np.abs(values - truth.values) / np.abs(truth.values))
                        estimates.append(f"{name[:3]} {np.round(values, 3).tolist()}")
                    print(f"lr {lr:g} step {step}: truth {np.round(truth.values, 3).tolist()} ({truth.steps} steps, "
                          f"converged {truth.converged.tolist()}); {'; '.join(estimates)}", flush=True)
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
        print(f"lr {lr:g}: converged top eigenvalue per measurement {[round(float(t[0]), 2) for t in truths]} "
              f"(2/lr = {2 / lr:g})", flush=True)
    print(f"\nVGG-A BN width {args.width:g}, SGD lr {args.lrs}, top-{args.top_k} every {args.every} steps on {count} "
          f"images, {len(products[next(iter(variants))])} measurements, {torch.get_num_threads()} threads, "
          f"{time.perf_counter() - started:.0f}s")
    print(f"{'':>28}  {'HVPs/measurement':>16}  {'HVPs in all':>11}  {'x fewer than (a)':>16}  {'median error':>12}  "
          f"{'worst error':>11}")
    base = sum(products[next(iter(variants))])
    for name in variants:
        error = np.concatenate(errors[name])
        print(f"{name:>28}  {np.mean(products[name]):16.1f}  {sum(products[name]):11d}  "
              f"{base / sum(products[name]):16.2f}  {100 * np.median(error):11.3f}%  {100 * error.max():10.3f}%")
    print(f"{'(b) cold, converged':>28}  (the truth: error bound {TRUTH_TOL:g} x |value|)")
    if overlaps:
        print(f"overlap |<u1(t), u1(t + {args.every})>| of consecutive top eigenvectors: median "
              f"{np.median(overlaps):.3f}, range {min(overlaps):.3f}..{max(overlaps):.3f}")
    if args.overhead:
        base_config = RunConfig(model="vgg_bn", width=args.width, lrs=tuple(lrs), optimizer="sgd", momentum=0.0,
                                epochs=args.epochs, data_root=args.data_root, train_subset=args.train_images,
                                snapshots=False, device=str(device),
                                threads=args.threads)
        tracked = replace(base_config, sharpness_every=args.every, sharpness_top_k=args.top_k, sharpness_images=count)
        times = {}
        with tempfile.TemporaryDirectory() as folder:
            for name, config in (("plain", base_config), ("tracked", tracked)):
                start = time.perf_counter()
                train(config, Path(folder) / f"{name}.h5", progress=False)
                times[name] = time.perf_counter() - start
        print(f"landscape run, {args.epochs} epochs, {len(lrs)} rates: {times['plain']:.1f}s without tracking, "
              f"{times['tracked']:.1f}s with the default: overhead {100 * (times['tracked'] / times['plain'] - 1):+.0f}%")


if __name__ == "__main__":
    main()
