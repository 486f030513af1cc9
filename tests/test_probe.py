"""Santurkar probes against hand computations, and proof that probing leaves training untouched."""
import copy

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.training.config import parse_multipliers
from landscape.errors import UsageError
from landscape.engine.probe import ModelProbe, probe_along
from landscape.training.loop import LockstepRuns
from landscape.training.runner import train

MULTIPLIERS = (0.5, 1.0, 2.0, 4.0)


def tiny_net(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(16, 3)).double()


def batch(seed=1, n=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 2, 2, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def grad_at(model: nn.Module, x, y) -> list[torch.Tensor]:
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


@pytest.mark.parametrize("optimizer,direction", [("adam", "update"), ("sgd", "gradient"), ("sgd", "update")])
def test_probe_matches_a_hand_computation(optimizer, direction):
    lr = 0.01
    model = tiny_net()
    initial = copy.deepcopy(model)
    opt = (torch.optim.Adam(model.parameters(), lr=lr) if optimizer == "adam"
           else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9))
    runs = LockstepRuns([model], [opt], ModelProbe(MULTIPLIERS, direction))
    x, y = batch()
    _, _, probes = runs.train_step(x, y, probe=True)

    # by hand: gradient at w, the step the optimizer takes (first step of Adam: -lr * g / (|g| + eps);
    # first step of SGD with momentum: -lr * g), then a fresh model copy at each probe point
    g = grad_at(copy.deepcopy(initial), x, y)
    w = [p.detach().clone() for p in initial.parameters()]
    if optimizer == "adam":
        step = [-lr * gi / (gi.abs() + 1e-8) for gi in g]
    else:
        step = [-lr * gi for gi in g]
    for j, m in enumerate(MULTIPLIERS):
        point = copy.deepcopy(initial)
        with torch.no_grad():
            for p, wi, si in zip(point.parameters(), w, step):
                p.copy_(wi + m * si)
        loss = F.cross_entropy(point(x), y).item()
        dist = (flat(grad_at(point, x, y)) - flat(g)).norm().item()
        moved = (m * flat(step)).norm().item()
        assert probes["loss"][0, j].item() == pytest.approx(loss, rel=1e-6)
        assert probes["grad_dist"][0, j].item() == pytest.approx(dist, rel=1e-5)
        assert probes["distance"][0, j].item() == pytest.approx(moved, rel=1e-5)
    ratios = probes["grad_dist"][0] / probes["distance"][0]
    assert probes["beta"][0].item() == pytest.approx(ratios.max().item())
    assert probes["grad_norm"][0].item() == pytest.approx(flat(g).norm().item(), rel=1e-9)


def test_quadratic_loss_gives_the_closed_form():
    # L(w) = w^T H w / 2: grad = H w, so along d = -lr g the gradient moves by m lr H g exactly
    torch.manual_seed(3)
    a = torch.randn(6, 6, dtype=torch.float64)
    h = a @ a.T + torch.eye(6, dtype=torch.float64)
    w = torch.randn(6, dtype=torch.float64)
    g = h @ w
    lr = 0.05
    result = probe_along(lambda p: 0.5 * p["w"] @ h @ p["w"], {"w": w}, {"w": g}, {"w": -lr * g}, MULTIPLIERS)
    hg = (h @ g).norm()
    expected = torch.tensor(MULTIPLIERS, dtype=torch.float64) * lr * hg
    assert torch.allclose(result.grad_dist, expected, rtol=1e-10)
    assert result.beta.item() == pytest.approx((hg / g.norm()).item(), rel=1e-10)
    expected_loss = [0.5 * (w - m * lr * g) @ h @ (w - m * lr * g) for m in MULTIPLIERS]
    assert torch.allclose(result.loss, torch.stack(expected_loss))


def test_plain_sgd_update_and_gradient_directions_are_the_same_points():
    x, y = batch()
    results = {}
    for direction in ("update", "gradient"):
        model = tiny_net()
        runs = LockstepRuns([model], [torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.0)],
                            ModelProbe(MULTIPLIERS, direction))
        results[direction] = runs.train_step(x, y, probe=True)[2]
    for name in ("loss", "grad_dist", "distance", "beta"):
        assert torch.allclose(results["update"][name], results["gradient"][name], rtol=1e-9)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_training_is_bit_identical_with_and_without_probes(dropout):
    outcomes = []
    for probe_every in (0, 1):
        torch.manual_seed(123)  # the dropout stream
        model = tiny_net(dropout)
        runs = LockstepRuns([model], [torch.optim.Adam(model.parameters(), lr=0.01)], ModelProbe(MULTIPLIERS, "update"))
        losses = []
        for step in range(6):
            x, y = batch(seed=step)
            losses.append(runs.train_step(x, y, probe=bool(probe_every))[0])
        outcomes.append((torch.stack(losses), model.state_dict(), torch.get_rng_state(),
                         runs.optimizers[0].state_dict()["state"]))
    (l0, s0, r0, o0), (l1, s1, r1, o1) = outcomes
    assert torch.equal(l0, l1)
    assert s0.keys() == s1.keys() and all(torch.equal(s0[k], s1[k]) for k in s0)  # weights and BN running stats
    assert torch.equal(r0, r1)  # the random stream is where it would be without probes
    assert all(torch.equal(o0[i]["exp_avg_sq"], o1[i]["exp_avg_sq"]) for i in o0)


def test_probe_leaves_batchnorm_running_statistics_alone():
    model = tiny_net()
    runs = LockstepRuns([model], [torch.optim.SGD(model.parameters(), lr=0.1)], ModelProbe(MULTIPLIERS, "update"))
    reference = copy.deepcopy(model)
    x, y = batch()
    reference(x)  # one train-mode forward updates the running statistics once
    runs.train_step(x, y, probe=True)  # the training forward, then 4 probe forwards
    bn, ref_bn = model[2], reference[2]
    assert torch.equal(bn.running_mean, ref_bn.running_mean) and torch.equal(bn.running_var, ref_bn.running_var)
    assert bn.num_batches_tracked.item() == 1


def test_run_file_with_probes_has_identical_training_and_the_schema(tmp_path, tiny_config, tiny_run):
    probed = train(tiny_config(probe_every=3, probe_multipliers=MULTIPLIERS), tmp_path / "probed.h5", progress=False)
    with h5py.File(probed, "r") as f, h5py.File(tiny_run, "r") as plain:
        assert np.array_equal(f["train/loss"][...], plain["train/loss"][...])
        assert np.array_equal(f["epoch/test_acc"][...], plain["epoch/test_acc"][...])
        steps = f["probe/step"][...]
        assert steps.tolist() == list(range(0, f["train/loss"].shape[1], 3))
        assert f["probe/multipliers"][...].tolist() == list(MULTIPLIERS)
        assert f["probe/loss"].shape == (2, len(steps), 4) and f["probe/beta"].shape == (2, len(steps))
        assert [d.label for d in f["probe/grad_dist"].dims] == ["run", "probe", "multiplier"]
        # at step 0 both rates share weights and batch, so they share the gradient
        assert f["probe/grad_norm"][0, 0] == f["probe/grad_norm"][1, 0]


@pytest.mark.parametrize("text,expected", [("0.5:4:8", (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)), ("1,2", (1.0, 2.0))])
def test_parse_multipliers(text, expected):
    assert parse_multipliers(text) == expected


@pytest.mark.parametrize("text", ["", "1:2", "1:2:0", "a,b", "-1,2", "0"])
def test_parse_multipliers_rejects(text):
    with pytest.raises(UsageError):
        parse_multipliers(text)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_batched_multipliers_give_the_same_probe_and_leave_training_alone(dropout):
    results, states = [], []
    for batched in (False, True):
        torch.manual_seed(7)
        model = tiny_net(dropout)
        runs = LockstepRuns([model], [torch.optim.Adam(model.parameters(), lr=0.01)],
                            ModelProbe(MULTIPLIERS, "update", batched=batched))
        for step in range(3):
            x, y = batch(seed=step)
            losses, _, probes = runs.train_step(x, y, probe=True)
        results.append(probes)
        states.append((losses, model.state_dict(), torch.get_rng_state()))
    for name in ("loss", "grad_dist", "distance", "beta", "grad_norm"):
        assert torch.allclose(results[0][name], results[1][name], rtol=1e-9, atol=1e-12), name
    (l0, s0, r0), (l1, s1, r1) = states
    assert torch.equal(l0, l1) and torch.equal(r0, r1) and all(torch.equal(s0[k], s1[k]) for k in s0)


def test_interrupted_mid_epoch_with_probes_resumes_to_the_identical_file(tmp_path, tiny_config, monkeypatch):
    import signal

    import landscape.training.runner as training
    from landscape.errors import RunFailed
    from landscape.files.run_file import read_run

    config = tiny_config(probe_every=3, probe_multipliers=(0.5, 2.0), epochs=2)
    reference = read_run(train(config, tmp_path / "whole.h5", progress=False))

    class SignalAtStepTen(training.StopSignals):  # SIGTERM in epoch 2, after its first probe
        checks = 0

        @property
        def received(self):
            SignalAtStepTen.checks += 1
            return signal.SIGTERM if SignalAtStepTen.checks >= 12 else None

        @received.setter
        def received(self, value):
            pass

    monkeypatch.setattr(training, "StopSignals", SignalAtStepTen)
    with pytest.raises(RunFailed, match="SIGTERM at epoch 2, step 3 of 8"):
        train(config, tmp_path / "cut.h5", progress=False)
    monkeypatch.undo()
    resumed = read_run(training.resume(tmp_path / "cut.h5", progress=False)[0])
    assert np.array_equal(resumed.train_loss, reference.train_loss)
    for name in ("step", "loss", "grad_dist", "beta"):
        assert np.array_equal(resumed.probe[name], reference.probe[name]), name
