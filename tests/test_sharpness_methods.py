"""Critical and directional sharpness along the update: closed forms on least squares, the run command end to end,
NaN where the search finds no crossing, bad input."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import landscape
from landscape.errors import UsageError
from tests.test_cli import landscape as run_cli


def least_squares():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g, dtype=torch.float64)
    y = x @ torch.randn(6, 1, generator=g, dtype=torch.float64) + 0.3 * torch.randn(64, 1, generator=g,
                                                                                     dtype=torch.float64)
    torch.manual_seed(1)
    return nn.Linear(6, 1).double(), x, y


def record(tmp_path, method: str, loss=F.mse_loss, steps: int = 3, lr: float = 0.05):
    """Plain SGD on the full least-squares set, measured at every step; the recorded values and the weights before
    every step."""
    model, x, y = least_squares()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    weights = []
    with landscape.Recorder(tmp_path / f"{method}.h5", model, optimizer, sharpness_every=1, sharpness_data=(x, y),
                            sharpness_method=method, loss=loss, snapshots=False) as rec:
        for _ in range(steps):
            weights.append(torch.cat([model.weight.detach().reshape(-1), model.bias.detach()]).clone())
            optimizer.zero_grad()
            value = loss(model(x), y)
            value.backward()
            optimizer.step()
            rec.step(value, (x, y))
        rec.epoch(test_loss=0.0, test_acc=0.0)
    return landscape.read_run(tmp_path / f"{method}.h5").sharpness, weights, x, y


def closed_form(weights: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    """Along d = -lr g the loss is exactly quadratic: critical and directional sharpness both equal g'Hg / g'g, with
    H = 2 A'A / n and g = 2 A'(Aw - y) / n for A = [x, 1] (numpy)."""
    a = np.hstack([x.numpy(), np.ones((len(x), 1))])
    h = 2 * a.T @ a / len(x)
    g = 2 * a.T @ (a @ weights.numpy() - y.numpy()[:, 0]) / len(x)
    return float(g @ h @ g / (g @ g))


@pytest.mark.parametrize("method,tolerance", [("directional", 1e-9), ("critical", 0.01)])
def test_sharpness_along_the_update_is_the_closed_form_on_least_squares(tmp_path, method, tolerance):
    sharp, weights, x, y = record(tmp_path, method)
    assert sharp["attrs"]["sharpness_method"] == method
    expected = [closed_form(w, x, y) for w in weights]
    assert np.allclose(sharp["top"][0, :, 0], expected, rtol=tolerance)


def test_critical_search_without_a_crossing_records_nan(tmp_path):
    """The mean of the outputs falls without bound along its gradient: no step multiplier makes it rise."""
    sharp, _, _, _ = record(tmp_path, "critical", loss=lambda outputs, targets: outputs.mean())
    assert np.isnan(sharp["top"]).all()


def test_run_tracks_critical_sharpness_with_checks_and_trains_identically(tmp_path, tiny_config, capsys):
    from landscape.files.run_file import read_run
    from landscape.training.runner import train

    common = dict(optimizer="sgd", momentum=0.0, lrs=(0.05, 0.01))
    plain = read_run(train(tiny_config(**common), tmp_path / "plain.h5", progress=False))
    tracked = read_run(train(tiny_config(sharpness_every=3, sharpness_images=64, sharpness_method="critical",
                                         sharpness_check_every=2, **common), tmp_path / "critical.h5",
                             progress=False))
    assert np.array_equal(plain.train_loss, tracked.train_loss)
    sharp = tracked.sharpness
    assert sharp["attrs"]["sharpness_method"] == "critical" and int(sharp["attrs"]["forward_passes"]) == 9
    assert np.isfinite(sharp["top"]).mean() > 0.8 and (sharp["hvps"] == 0).all()
    assert len(sharp["check_step"]) and np.isfinite(sharp["check_top"]).all()
    code, out, _ = run_cli("info", tmp_path / "critical.h5", capsys=capsys)
    assert code in (0, None) and "critical sharpness" in out


@pytest.mark.parametrize("arguments,message", [
    (("--sharpness-method", "hutch"), "--sharpness-method"),
    (("--sharpness-method", "critical", "--sharpness-top-k", "2"), "one number per measurement"),
])
def test_bad_sharpness_methods_are_one_line_errors(tmp_path, capsys, arguments, message):
    code, out, err = run_cli("run", "--dataset", "synthetic", "--epochs", "1", "--sharpness-every", "2",
                             *arguments, "--out", tmp_path / "bad.h5", capsys=capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad.h5").exists()


def test_the_recorder_names_a_bad_method_in_python_terms(tmp_path):
    model, x, y = least_squares()
    with pytest.raises(UsageError, match="sharpness_method"):
        landscape.Recorder(tmp_path / "r.h5", model, torch.optim.SGD(model.parameters(), lr=0.1), sharpness_every=1,
                           sharpness_data=(x, y), sharpness_method="power")
    assert not (tmp_path / "r.h5").exists()
