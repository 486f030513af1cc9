"""Training to a criterion (--until-train-loss / --until-train-acc): each run stops after the first epoch whose
whole-training-subset loss (eval mode) meets it, checked against an independent evaluation of the saved weights."""
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from landscape.errors import UsageError
from landscape.files.run_file import read_run
from landscape.files.weights_file import weights_of_run
from landscape.training.data import load_dataset
from landscape.training.models import build_model
from landscape.training.runner import resume, train
from tests.conftest import cut_at_epoch_three


def independent_train_loss(run, index: int, epoch: int) -> float:
    """Mean cross-entropy of run `index`'s snapshot at `epoch` over the whole training subset, in eval mode, by a
    plain module and F.cross_entropy (none of the engine's code)."""
    config = run.config
    data = load_dataset(config["dataset"], "unused", device=torch.device("cpu"), train_subset=config["train_subset"],
                        seed=config["seed"])
    model = build_model(config["model"], width=config["width"], num_classes=data.num_classes, image_size=32)
    state = weights_of_run(run).state(epoch, index)
    model.load_state_dict({name: torch.from_numpy(value) for name, value in state.items()})
    model.eval()
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    with torch.no_grad():
        images = (data.train.images.float() / 255 - mean) / std
        return float(F.cross_entropy(model(images), data.train.labels))


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory, tiny_config):
    """Each run's whole-subset training loss per epoch, from a run whose criterion is never met (a probe run)."""
    path = train(tiny_config(lrs=(3e-3, 1e-5), epochs=6, until_train_loss=1e-12),
                 tmp_path_factory.mktemp("probe") / "probe.h5", progress=False)
    return read_run(path).criterion["train_loss"]


@pytest.mark.parametrize("engine", ["loop", "fused"])
def test_a_run_stops_at_the_first_epoch_below_the_loss_and_the_others_go_on(tmp_path, tiny_config, trajectories,
                                                                            engine):
    fast, slow = trajectories
    threshold = float(np.mean(sorted(fast)[1:3]))  # met after some epoch, not the first; the slow run never meets it
    first = int(np.argmax(fast < threshold)) + 1
    assert first >= 2 and np.all(slow >= threshold)
    run = read_run(train(tiny_config(lrs=(3e-3, 1e-5), epochs=6, until_train_loss=threshold, engine=engine),
                         tmp_path / "c.h5", progress=False))
    criterion = run.criterion
    assert criterion["metric"] == "train_loss" and list(criterion["met_epoch"]) == [first, -1]
    assert np.all(np.isnan(criterion["train_loss"][0, first:]))  # the stopped run trains no more
    assert run.epochs_done == 6 and np.all(np.isfinite(criterion["train_loss"][1]))  # the other reached the cap
    recorded = criterion["train_loss"][0, first - 1]
    assert recorded < threshold
    final = weights_of_run(run).epochs[-1]
    assert independent_train_loss(run, 0, final) == pytest.approx(recorded, rel=1e-4, abs=1e-6)


def test_train_acc_criterion_and_info(tmp_path, tiny_config):
    path = train(tiny_config(lrs=(3e-3, 1e-5), epochs=6, until_train_acc=0.3), tmp_path / "a.h5", progress=False)
    run = read_run(path)
    acc = run.criterion["train_acc"]
    met = run.criterion["met_epoch"]
    for r in range(2):
        seen = acc[r][np.isfinite(acc[r])]
        if met[r] > 0:
            assert seen[met[r] - 1] >= 0.3 and np.all(seen[:met[r] - 1] < 0.3)
        else:
            assert np.all(seen < 0.3)
    out = subprocess.run([sys.executable, "-m", "landscape", "info", str(path)], capture_output=True, text=True)
    assert out.returncode == 0 and "train acc >= 30%" in out.stdout
    assert ("after epoch" in out.stdout) == bool((met > 0).any())
    assert ("no: cap reached" in out.stdout) == bool((met < 0).any())


def test_a_run_to_a_criterion_resumed_after_a_kill_gives_the_identical_file(tmp_path, tiny_config, trajectories,
                                                                             monkeypatch):
    threshold = float(np.mean(sorted(trajectories[0])[1:3]))
    config = tiny_config(lrs=(3e-3, 1e-5), epochs=5, until_train_loss=threshold)
    whole = read_run(train(config, tmp_path / "whole.h5", progress=False))
    cut_at_epoch_three(monkeypatch, config, tmp_path / "cut.h5")
    resumed = read_run(resume(tmp_path / "cut.h5", progress=False)[0])
    for name in ("train_loss", "train_acc", "met_epoch"):
        assert np.array_equal(resumed.criterion[name], whole.criterion[name], equal_nan=name != "met_epoch"), name
    assert np.array_equal(resumed.train_loss, whole.train_loss, equal_nan=True)


@pytest.mark.parametrize("options, message", [
    (dict(until_train_loss=0.1, until_train_acc=0.9), "train to one criterion"),
    (dict(until_train_acc=99.0), "not a fraction"),
    (dict(until_train_loss=-1.0), "--until-train-loss must be in"),
])
def test_bad_criteria_are_refused(tmp_path, tiny_config, options, message):
    with pytest.raises(UsageError, match=message):
        train(tiny_config(**options), tmp_path / "bad.h5", progress=False)
    assert not (tmp_path / "bad.h5").exists()
