"""Cost of Santurkar probes: the same `landscape run` with probes off and every K steps.

    python benchmarks/bench_probe.py --data-root ../shared/data --probe-every 10

A probe costs one forward and backward per multiplier per run, so the expected overhead is about
J / (K * (1 + eval share)) of the training time; this prints the measured one.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from landscape.config import RunConfig, parse_lrs, parse_multipliers
from landscape.train import train


def timed(config: RunConfig) -> float:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        train(config, Path(folder) / "bench.h5", progress=False)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("LANDSCAPE_TEST_DATA", "data"))
    parser.add_argument("--model", default="vgg_bn")
    parser.add_argument("--lrs", default="1e-3,2e-3,5e-4,1e-4")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--train-subset", type=int, default=2048)
    parser.add_argument("--probe-every", type=int, default=10)
    parser.add_argument("--probe-multipliers", default="0.5:4:8")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    base = RunConfig(model=args.model, lrs=parse_lrs(args.lrs), width=args.width, data_root=args.data_root,
                     train_subset=args.train_subset, epochs=1).validate()
    probed = RunConfig(**{**base.__dict__, "probe_every": args.probe_every,
                          "probe_multipliers": parse_multipliers(args.probe_multipliers)}).validate()
    plain_s = min(timed(base) for _ in range(args.repeats))
    probed_s = min(timed(probed) for _ in range(args.repeats))
    j = len(probed.probe_multipliers)
    print(f"{base.model} width {base.width}, {len(base.lrs)} rates, {base.train_subset} images, "
          f"{j} multipliers every {args.probe_every} steps")
    print(f"  without probes: {plain_s:.2f} s")
    print(f"  with probes:    {probed_s:.2f} s  overhead {100 * (probed_s / plain_s - 1):.1f}% "
          f"(about {j / args.probe_every:.2f} extra forward+backward per step)")


if __name__ == "__main__":
    main()
