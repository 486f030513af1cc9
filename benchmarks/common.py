"""Helpers shared by the benchmark scripts: timing a `landscape run` into a throw-away file."""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from landscape.config import RunConfig
from landscape.train import train


def time_landscape_run(config: RunConfig) -> float:
    """Seconds for `landscape.train.train(config)` into a temporary HDF5 file (recording included)."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        train(config, Path(folder) / "bench.h5", progress=False)
        return time.perf_counter() - start


def run_arguments(description: str, **defaults) -> argparse.ArgumentParser:
    """The options every benchmark shares: data, model, rates, width, subset, repeats."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-root", default=os.environ.get("LANDSCAPE_TEST_DATA", "data"))
    parser.add_argument("--model", default=defaults.get("model", "vgg_bn"))
    parser.add_argument("--lrs", default="1e-3,2e-3,5e-4,1e-4")
    parser.add_argument("--width", type=float, default=defaults.get("width", 0.25))
    parser.add_argument("--train-subset", type=int, default=defaults.get("train_subset", 2048))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2, help="repeat each measurement; the best time is kept")
    return parser
