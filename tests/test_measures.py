"""Flatness and sharpness measures against closed forms on a quadratic, bounds on an MLP, plain evaluations, bad input."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import landscape
from landscape.errors import UsageError

torch.manual_seed(0)
SIZE = 6
BASIS = torch.linalg.qr(torch.randn(SIZE, SIZE, dtype=torch.float64)).Q
SPECTRUM = torch.tensor([4.0, 1.5, 1.0, 0.5, 0.2, 0.1], dtype=torch.float64)
CURVATURE = BASIS @ torch.diag(SPECTRUM) @ BASIS.T  # A, symmetric positive definite, top eigenvalue 4
MINIMUM = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 2.0], dtype=torch.float64)


class Quadratic(nn.Module):
    """L(w) = 1/2 (w - w*)' A (w - w*), the parameter w its own output."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(MINIMUM.clone())

    def forward(self, inputs):
        return self.w.expand(inputs.shape[0], SIZE)


def quadratic_loss(outputs, targets):
    delta = outputs[0] - MINIMUM
    return 0.5 * delta @ CURVATURE @ delta


DATA = (torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))


def test_sharpness_at_the_minimum_of_a_quadratic_is_the_closed_form():
    rho = 0.1
    scale = torch.diag(MINIMUM.abs())
    scaled = scale @ CURVATURE @ scale
    result = landscape.measures(Quadratic(), DATA, loss=quadratic_loss, measures="worst,worst_adaptive,average,"
                                "average_adaptive", rho=rho, steps=60, samples=2000, bn="eval")
    values, errors = result.values, result.stderr
    assert values[f"sharpness_worst_rho{rho:g}"] == pytest.approx(rho ** 2 * 4.0 / 2, rel=1e-3)
    top_scaled = float(torch.linalg.eigvalsh(scaled)[-1])
    assert values[f"sharpness_worst_adaptive_rho{rho:g}"] == pytest.approx(rho ** 2 * top_scaled / 2, rel=1e-3)
    expected = rho ** 2 * float(torch.trace(CURVATURE)) / 2
    assert abs(values[f"sharpness_average_rho{rho:g}"] - expected) < 4 * errors[f"sharpness_average_rho{rho:g}"]
    expected = rho ** 2 * float(torch.trace(scaled)) / 2
    assert abs(values[f"sharpness_average_adaptive_rho{rho:g}"] - expected) < \
        4 * errors[f"sharpness_average_adaptive_rho{rho:g}"]


def mlp_and_data():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(64, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (64,), generator=g)
    return net, x, y


def test_worst_case_sharpness_of_an_mlp_lies_between_its_independent_bounds():
    """Lower bound: the loss increase along the top Hessian eigenvector at radius rho (explicit Hessian, numpy).
    Upper bound, for small rho: rho |g| + rho^2 lambda_max / 2 plus a third-order slack."""
    net, x, y = mlp_and_data()
    params = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    shapes = [p.shape for p in net.parameters()]

    def loss_of(flat):
        pieces, offset = [], 0
        for shape in shapes:
            count = int(np.prod(shape))
            pieces.append(flat[offset:offset + count].view(shape))
            offset += count
        hidden = torch.tanh(x @ pieces[0].T + pieces[1])
        return F.cross_entropy(hidden @ pieces[2].T + pieces[3], y)

    hessian = torch.autograd.functional.hessian(loss_of, params).numpy()
    gradient = torch.autograd.functional.jacobian(loss_of, params).numpy()
    values, vectors = np.linalg.eigh(hessian)
    rho = 0.02
    along = max(float(loss_of(params + s * rho * torch.as_tensor(vectors[:, -1]))) for s in (-1, 1)) - \
        float(loss_of(params))
    upper = rho * np.linalg.norm(gradient) + rho ** 2 * values[-1] / 2
    result = landscape.measures(net, (x, y), measures="worst", rho=rho, steps=30, restarts=2)
    worst = result.values[f"sharpness_worst_rho{rho:g}"]
    assert along - 1e-9 <= worst <= upper * 1.05


def test_gap_and_norms_are_plain_evaluations_and_the_model_is_unchanged(tmp_path):
    net, x, y = mlp_and_data()
    before = {n: p.clone() for n, p in net.state_dict().items()}
    start = {n: p + 0.1 for n, p in before.items()}
    result = landscape.measures(net, (x[:40], y[:40]), test_data=(x[40:], y[40:]), init=start,
                                measures="gap,norms,li,hessian", radius=(0.1, 0.2), trace_samples=9)
    with torch.no_grad():
        train_loss = float(F.cross_entropy(net(x[:40]), y[:40]))
        test_loss = float(F.cross_entropy(net(x[40:]), y[40:]))
        test_acc = float((net(x[40:]).argmax(1) == y[40:]).double().mean())
    values = result.values
    assert values["train_loss"] == pytest.approx(train_loss) and values["test_acc"] == pytest.approx(test_acc)
    assert values["gap_loss"] == pytest.approx(test_loss - train_loss)
    assert values["param_norm"] == pytest.approx(float(torch.sqrt(sum((p ** 2).sum() for p in net.parameters()))))
    assert values["distance_from_init"] == pytest.approx(0.1 * np.sqrt(sum(p.numel() for p in net.parameters())))
    assert "flatness_li_r0.1" in values and "flatness_li_r0.2" in values and values["hessian_top"] > 0
    assert all(torch.equal(before[n], p) for n, p in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters()) and net.training
    saved = landscape.read_measures(result.save(tmp_path / "m.h5"))
    assert saved.cells == ["model"] and saved.values["gap_loss"][0] == pytest.approx(values["gap_loss"])


def test_m_sharpness_averages_the_worst_case_of_each_batch_of_m():
    net, x, y = mlp_and_data()
    whole = landscape.measures(net, (x, y), measures="worst", rho=0.02, steps=10, m=16, seed=3)
    parts = [landscape.measures(net, (x[i:i + 16], y[i:i + 16]), measures="worst", rho=0.02, steps=10,
                                seed=3).values["sharpness_worst_rho0.02"] for i in range(0, 64, 16)]
    assert whole.values["sharpness_worst_rho0.02"] > 0
    assert min(parts) * 0.5 <= whole.values["sharpness_worst_rho0.02"] <= max(parts) * 1.5


@pytest.mark.parametrize("kwargs,message", [
    ({"rho": 0.0}, "rho"), ({"rho": float("nan")}, "rho"), ({"rho": -1}, "rho"),
    ({"measures": "sharpest"}, "measures"), ({"radius": ()}, "radius"), ({"m": -2}, "m -2"),
])
def test_bad_measure_options_are_one_line_errors(kwargs, message):
    net, x, y = mlp_and_data()
    with pytest.raises(UsageError, match=message) as caught:
        landscape.measures(net, (x, y), **kwargs)
    assert "\n" not in str(caught.value)


def test_the_measure_command_gives_the_api_s_numbers_for_a_snapshot(tmp_path, tiny_run, capsys):
    from landscape.commands.sources import ImageSet, snapshot_model
    from landscape.files.run_file import read_run
    from landscape.files.weights_file import weights_of_run
    from tests.test_cli import landscape as cli

    out = tmp_path / "m.h5"
    code, stdout, _ = cli("measure", tiny_run, "--lr", "3e-4", "--measures", "worst,average,gap,norms", "--rho",
                          "0.01,0.02", "--images", "64", "--test-images", "32", "--steps", "2", "--samples", "2",
                          "--device", "cpu", "--out", out, capsys=capsys)
    assert code in (0, None) and "sharpness_worst_rho0.02" in stdout and "distance_from_init" in stdout
    run = read_run(tiny_run)
    weights = weights_of_run(run)
    model = snapshot_model(run, weights, 1, weights.epochs[-1], torch.device("cpu"))
    initial = snapshot_model(run, weights, 1, 0, torch.device("cpu"))
    images = ImageSet.of_run(run, torch.device("cpu"))
    direct = landscape.measures(model, images.batches(images.split("train", 64), images.batch_size),
                                test_data=images.batches(images.split("test", 32), images.batch_size), init=initial,
                                measures="worst,average,gap,norms", rho=(0.01, 0.02), steps=2, samples=2)
    stored = landscape.read_measures(out)
    for name, value in direct.values.items():
        assert stored.values[name][0] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    code, _, err = cli("measure", tiny_run, "--lr", "3e-4", "--rho", "abc", "--out", tmp_path / "x.h5",
                       capsys=capsys)
    assert code == 2 and "--rho 'abc'" in err and not (tmp_path / "x.h5").exists()


def logistic_regression_at_its_minimum():
    """Logistic regression (5 inputs, 3 classes, float64) trained by L-BFGS until the gradient norm is ~1e-9, its
    data, and its explicit Hessian at the minimum."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(200, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (200,), generator=g)
    model = nn.Linear(5, 3).double()
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=500, tolerance_grad=1e-12,
                                  tolerance_change=1e-14, history_size=50)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(3):
        optimizer.step(closure)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])

    def loss_of(vector):
        parts, start = {}, 0
        for name, shape in zip(names, shapes):
            parts[name] = vector[start:start + shape.numel()].view(shape)
            start += shape.numel()
        return F.cross_entropy(torch.func.functional_call(model, parts, (x,)), y)

    return model, x, y, flat, loss_of, torch.autograd.functional.hessian(loss_of, flat)


@pytest.mark.parametrize("rho", [0.01, 0.05])
def test_worst_case_at_a_minimum_reaches_the_rise_along_the_top_eigenvector(rho):
    """At a minimum the gradient is ~0: an ascent from a random start turns toward the top eigenvector slowly; the
    default (a start along the top Hessian direction by Lanczos) must reach the rise along the explicit top
    eigenvector, a lower bound of the maximum, to 1e-3 relative."""
    model, x, y, flat, loss_of, hessian = logistic_regression_at_its_minimum()
    top = torch.linalg.eigh(hessian).eigenvectors[:, -1]
    base = float(loss_of(flat))
    along = max(float(loss_of(flat + sign * rho * top)) - base for sign in (1.0, -1.0))
    worst = landscape.measures(model, (x, y), measures="worst", rho=rho, bn="eval").values[f"sharpness_worst_rho{rho:g}"]
    assert worst >= along * (1 - 1e-3)
    assert worst <= rho ** 2 * float(torch.linalg.eigvalsh(hessian)[-1]) / 2 * 1.2 + 1e-12  # and near the quadratic's
