"""Helpers shared by the benchmark scripts: timing a `landscape run` into a throw-away file."""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from landscape.training.config import RunConfig
from landscape.training.runner import train


def time_landscape_run(config: RunConfig) -> float:
    """Seconds for `landscape.training.runner.train(config)` into a temporary HDF5 file (recording included)."""
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


def repeated_cifar(root: str | Path, train_images: int, dest: str | Path) -> Path:
    """A CIFAR-10 folder under `dest` whose training split is the one under `root` repeated to `train_images`
    (for full-size speed figures from the shared subset); return `dest` (the new --data-root)."""
    import pickle

    import numpy as np

    from landscape.training.data import cifar_folder, read_cifar10

    train_x, train_y, test_x, test_y = read_cifar10(cifar_folder(root, False))
    reps = -(-train_images // len(train_y))
    train_x, train_y = np.concatenate([train_x] * reps)[:train_images], np.concatenate([train_y] * reps)[:train_images]
    folder = Path(dest) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    chunks = np.array_split(np.arange(train_images), 5)
    for i, index in enumerate(chunks, start=1):
        batch = {"data": train_x[index].reshape(len(index), -1), "labels": train_y[index].tolist()}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    test = {"data": test_x.reshape(len(test_y), -1), "labels": test_y.tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    return Path(dest)
