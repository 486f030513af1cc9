"""A finished run's final model at its reported rate, with the images it is measured on (for `ablate measure`'s
per-model measures and its pairs)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from landscape.engine.batches import BatchSet
from landscape.engine.functional import skeleton


@dataclass
class ModelOfRun:
    """A finished run's model at its reported rate (the best final test accuracy): skeleton, weights, images."""

    module: nn.Module
    params: dict
    buffers: dict
    init: dict | None
    rate: int
    batches: BatchSet
    test_batches: BatchSet


def model_of_run(run, images: int, test_images: int, device: torch.device, data_root: str | None) -> ModelOfRun:
    """The final weights of `run`'s best rate and its first `images` / `test_images` training and test images."""
    from landscape.commands.sources import ImageSet, run_architecture, snapshot_state
    from landscape.files.weights_file import weights_of_run

    weights = weights_of_run(run)
    rate = int(np.argmax(np.nan_to_num(run.epoch["test_acc"], nan=-np.inf).max(axis=1)))
    model = run_architecture(run, None)
    params, buffers = snapshot_state(model, weights, rate, weights.epochs[-1], torch.device("cpu"))
    init = snapshot_state(model, weights, rate, 0, torch.device("cpu"))[0] if 0 in weights.epochs else None
    image_set = ImageSet.of_run(run, device, data_root)
    batches = image_set.batches(image_set.split("train", min(images, len(image_set.dataset.train))),
                                image_set.batch_size)
    tests = image_set.batches(image_set.split("test", min(test_images, len(image_set.dataset.test)),
                                              "--test-images"), image_set.batch_size)
    return ModelOfRun(skeleton(model), params, buffers, init, rate, batches, tests)


def cached_model(run, images: int, test_images: int, device: torch.device, data_root: str | None,
                 cache: dict | None) -> ModelOfRun:
    """`model_of_run`, read once per run file within one `cache` (the models and their pairs share them)."""
    if cache is None:
        return model_of_run(run, images, test_images, device, data_root)
    if run.path not in cache:
        cache[run.path] = model_of_run(run, images, test_images, device, data_root)
    return cache[run.path]
