"""The lockstep runner against a plain one-model-at-a-time loop, determinism and divergence."""
import copy

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from landscape.training.data import Normalizer, eval_batches, load_dataset, train_batches
from landscape.errors import UsageError
from landscape.training.models import build_model
from landscape.training.runner import train


def plain_loop(config):
    """What a course script does: one model per rate, trained one after another, .item() every step."""
    data = load_dataset(config.dataset, config.data_root, device=torch.device("cpu"), train_subset=config.train_subset,
                        seed=config.seed)
    normalize = Normalizer(data.mean, data.std, torch.device("cpu"))
    torch.manual_seed(config.seed)
    initial = build_model(config.model, width=config.width, num_classes=data.num_classes)
    losses, test_acc = [], []
    for lr in config.lrs:
        model = copy.deepcopy(initial)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum)
        run_losses, run_acc = [], []
        for epoch in range(config.epochs):
            for x, y in train_batches(data.train, normalize, batch_size=config.batch_size, seed=config.seed,
                                      epoch=epoch):
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                run_losses.append(loss.item())
            model.eval()
            with torch.no_grad():
                correct = sum((model(x).argmax(1) == y).sum().item()
                              for x, y in eval_batches(data.test, normalize, 100))
            model.train()
            run_acc.append(correct / len(data.test))
        losses.append(run_losses)
        test_acc.append(run_acc)
    return np.array(losses, dtype=np.float32), np.array(test_acc)


def test_recorded_losses_equal_a_plain_loop(tmp_path, tiny_config):
    config = tiny_config(optimizer="sgd", lrs=(0.05, 0.01))
    path = train(config, tmp_path / "run.h5", progress=False)
    expected_losses, expected_acc = plain_loop(config)
    with h5py.File(path, "r") as f:
        assert np.array_equal(f["train/loss"][...], expected_losses)  # bit-identical on CPU
        assert np.allclose(f["epoch/test_acc"][...], expected_acc)
        assert f["train/loss"].shape == (2, 16)
        assert f.attrs["status"] == "complete"


def test_step_zero_is_identical_across_rates_and_runs_are_reproducible(tmp_path, tiny_config, tiny_run):
    again = train(tiny_config(), tmp_path / "again.h5", progress=False)
    with h5py.File(tiny_run, "r") as a, h5py.File(again, "r") as b:
        first = a["train/loss"][...]
        assert first[0, 0] == first[1, 0]  # same weights, same batch, before any update
        assert first[0, 5] != first[1, 5]  # the rates do differ afterwards
        assert np.array_equal(first, b["train/loss"][...])
        assert np.array_equal(a["epoch/test_acc"][...], b["epoch/test_acc"][...])


def test_seed_changes_the_initial_weights(tmp_path, tiny_config, tiny_run):
    other = train(tiny_config(seed=1, epochs=1), tmp_path / "seed1.h5", progress=False)
    with h5py.File(tiny_run, "r") as a, h5py.File(other, "r") as b:
        assert a["train/loss"][0, 0] != b["train/loss"][0, 0]


def test_a_diverging_rate_is_stopped_and_the_others_go_on(tmp_path, tiny_config):
    config = tiny_config(model="vgg", optimizer="sgd", lrs=(0.01, 1e4), epochs=2)
    path = train(config, tmp_path / "div.h5", progress=False)
    with h5py.File(path, "r") as f:
        loss, step = f["train/loss"][...], f["diverged_step"][...]
        assert step[0] == -1 and step[1] >= 0
        assert np.all(np.isfinite(loss[0])) and np.all(np.isnan(loss[1, step[1]:]))
        assert np.all(np.isfinite(loss[1, :step[1]]))
        assert np.isnan(f["epoch/test_acc"][1, -1]) and np.isfinite(f["epoch/test_acc"][0, -1])
        assert f.attrs["status"] == "complete" and "diverged" in f.attrs["message"]


def test_existing_output_is_refused_before_training(tmp_path, tiny_config):
    out = tmp_path / "run.h5"
    out.write_bytes(b"keep me")
    with pytest.raises(UsageError, match="already exists"):
        train(tiny_config(), out, progress=False)
    assert out.read_bytes() == b"keep me"
