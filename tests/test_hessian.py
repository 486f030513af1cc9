"""Curvature: Hessian-vector products, eigenvalues, trace and density against explicit Hessians; sharpness tracking."""
import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from landscape.views.analysis import stability_threshold
from landscape.engine.functional import flatten, module_buffers, prepared_module
from landscape.engine.curvature import lanczos, smoothed_density, spectral_density, top_eigenvalues
from landscape.engine.operators import HessianOperator
from landscape.engine.trace import hutchinson_trace
from tests.test_cli import checksums, landscape


def small_net(batch_norm: bool) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(6, 10)] + ([nn.BatchNorm1d(10)] if batch_norm else []) + [nn.Tanh(), nn.Linear(10, 4)]
    net = nn.Sequential(*layers)
    net.train()
    net(torch.randn(32, 6))  # running statistics away from their defaults
    return net


def data():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, 6, generator=g), torch.randint(0, 4, (30,), generator=g)
    return [(x[:16], y[:16]), (x[16:], y[16:])]


def explicit_hessian(net: nn.Module, bn: str, batches) -> np.ndarray:
    """torch.autograd.functional.hessian of the batch-size-weighted mean of the batch losses."""
    module = prepared_module(net, bn)
    params = {n: p.detach().double() for n, p in net.named_parameters()}
    buffers = {n: b.double() if b.is_floating_point() else b
               for n, b in module_buffers(module, dict(net.named_buffers())).items()}
    module = module.double()
    total = sum(len(y) for _, y in batches)

    def loss(flat):
        point, offset = {}, 0
        for name, value in params.items():
            point[name] = flat[offset:offset + value.numel()].view_as(value)
            offset += value.numel()
        return sum(len(y) / total * F.cross_entropy(functional_call(module, (point, buffers), (x.double(),)), y)
                   for x, y in batches)

    return torch.autograd.functional.hessian(loss, flatten(params)).numpy()


def operator_for(net, bn, batches, method="auto"):
    module = prepared_module(net, bn)
    params = {n: p.detach() for n, p in net.named_parameters()}
    return HessianOperator(module, params, module_buffers(module, dict(net.named_buffers())), batches, method=method)


@pytest.mark.parametrize("batch_norm,bn", [(False, "eval"), (True, "eval"), (True, "train")])
def test_hvps_equal_the_explicit_hessian_and_both_methods_agree(batch_norm, bn):
    net = small_net(batch_norm)
    hessian = explicit_hessian(net, bn, data())
    v = torch.randn(hessian.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for method in ("double-backward", "forward-over-reverse"):
        product = operator_for(net, bn, data(), method)(v).numpy()
        assert np.allclose(product, hessian @ v.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_top_eigenvalues_trace_and_density_against_numpy(batch_norm):
    net = small_net(batch_norm)
    hessian = explicit_hessian(net, "train", data())
    exact = np.linalg.eigvalsh(hessian)
    operator = operator_for(net, "train", data())
    eigen = top_eigenvalues(operator, 3, tol=1e-8, max_steps=hessian.shape[0])
    assert np.allclose(eigen.values, exact[::-1][:3], rtol=1e-4, atol=1e-6)
    assert (eigen.residuals < 1e-5).all() and eigen.steps <= hessian.shape[0]
    trace, stderr = hutchinson_trace(operator, 300, seed=0)
    assert abs(trace - np.trace(hessian)) <= 3 * stderr and stderr < 0.2 * abs(np.trace(hessian))
    nodes, weights = spectral_density(operator, 2, 60, seed=0)
    assert np.allclose(weights.sum(axis=1), 1.0)
    width = exact[-1] - exact[0]
    assert np.nanmin(nodes) <= exact[0] + 1e-3 * width and np.nanmax(nodes) >= exact[-1] - 1e-3 * width
    assert np.nanmin(nodes) >= exact[0] - 1e-6 * width and np.nanmax(nodes) <= exact[-1] + 1e-6 * width
    grid, density = smoothed_density(nodes, weights)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-3)


class Quadratic:
    """f(w) = w'Aw / 2 with a known spectrum: its Hessian-vector product is A v."""

    def __init__(self, spectrum):
        q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(len(spectrum),) * 2))
        self.matrix = torch.from_numpy(q @ np.diag(spectrum) @ q.T)
        self.size, self.device, self.products = len(spectrum), torch.device("cpu"), 0

    def __call__(self, v):
        self.products += 1
        return self.matrix @ v


def test_a_quadratic_gives_its_known_spectrum():
    spectrum = np.concatenate([[50.0, 20.0, 10.0], np.linspace(-1, 1, 197)])
    quadratic = Quadratic(spectrum)
    eigen = top_eigenvalues(quadratic, 3, tol=1e-10, max_steps=200)
    assert np.allclose(eigen.values, [50, 20, 10], rtol=1e-9)
    assert eigen.steps < 60  # Lanczos converges on well separated extremes in far fewer steps than the size
    result = lanczos(quadratic, torch.ones(200, dtype=torch.float64), 200)
    assert np.allclose(np.sort(result.ritz()[0].numpy())[-3:], [10, 20, 50])


def test_a_call_leaves_the_model_its_mode_and_buffers():
    net = small_net(True)
    before = {n: b.clone() for n, b in net.named_buffers()}
    top_eigenvalues(operator_for(net, "train", data()), 2)
    top_eigenvalues(operator_for(net, "eval", data()), 2)
    assert net.training and all(torch.equal(b, before[n]) for n, b in net.named_buffers())
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("overrides", [dict(), dict(model="resnet20", dropout=0.2, width=1 / 8, engine="loop"),
                                       dict(engine="fused")])
def test_training_is_bit_identical_with_and_without_sharpness(tmp_path, tiny_config, overrides):
    from landscape.files.run_file import read_run
    from landscape.training.runner import train

    plain = read_run(train(tiny_config(**overrides), tmp_path / "plain.h5", progress=False))
    tracked = read_run(train(tiny_config(sharpness_every=3, sharpness_images=64, sharpness_iters=4,
                                         sharpness_top_k=2, **overrides), tmp_path / "tracked.h5", progress=False))
    assert np.array_equal(plain.train_loss, tracked.train_loss)
    assert np.array_equal(plain.epoch["test_acc"], tracked.epoch["test_acc"])
    assert list(tracked.sharpness["step"]) == list(range(0, tracked.steps, 3))
    top = tracked.sharpness["top"]
    assert top.shape == (2, len(tracked.sharpness["step"]), 2) and (top[:, :, 0] >= top[:, :, 1]).all()
    assert np.allclose(top[0, 0], top[1, 0], rtol=1e-9)  # step 0: the runs share their weights and start vector
    with h5py.File(tmp_path / "plain.weights.h5", "r") as a, h5py.File(tmp_path / "tracked.weights.h5", "r") as b:
        last = sorted(a["snapshots"])[-1]
        for name in a["snapshots"][last]:
            assert np.array_equal(a["snapshots"][last][name][...], b["snapshots"][last][name][...])


def test_sharpness_survives_an_interruption_and_resume(tmp_path, tiny_config, monkeypatch):
    import signal

    import landscape.training.runner as training
    from landscape.errors import RunFailed
    from landscape.files.run_file import read_run

    config = tiny_config(sharpness_every=2, sharpness_images=32, sharpness_iters=3)
    whole = read_run(training.train(config, tmp_path / "whole.h5", progress=False))
    original = training.SharpnessTracker.measure
    calls = []

    def interrupting(self, runs, step, batch=None):
        calls.append(step)
        if len(calls) == 4:
            signal.raise_signal(signal.SIGTERM)
        return original(self, runs, step, batch)

    monkeypatch.setattr(training.SharpnessTracker, "measure", interrupting)
    with pytest.raises(RunFailed):
        training.train(config, tmp_path / "cut.h5", progress=False)
    monkeypatch.undo()
    training.resume(tmp_path / "cut.h5", progress=False)
    cut = read_run(tmp_path / "cut.h5")
    assert np.array_equal(cut.sharpness["step"], whole.sharpness["step"])
    assert np.array_equal(cut.sharpness["top"], whole.sharpness["top"])
    assert np.array_equal(cut.train_loss, whole.train_loss)


def test_thresholds_are_the_formulas():
    assert stability_threshold({"optimizer": "sgd", "momentum": 0.0}, 0.01) == pytest.approx(200)
    assert stability_threshold({"optimizer": "sgd", "momentum": 0.9}, 0.01) == pytest.approx(380)
    assert stability_threshold({"optimizer": "sgd", "momentum": 0.9, "nesterov": True}, 0.01) == \
        pytest.approx(3.8 / (0.01 * 2.8))
    assert stability_threshold({"optimizer": "adam"}, 0.01) is None


def test_hessian_command_plot_and_info(tmp_path, tiny_config, capsys):
    import csv

    from landscape.files.hessian_file import read_hessian
    from landscape.training.runner import train

    run = train(tiny_config(optimizer="sgd", momentum=0.0, lrs=(0.05, 0.01), sharpness_every=4,
                            sharpness_images=64, sharpness_iters=5), tmp_path / "sgd.h5", progress=False)
    code, out, _ = landscape("hessian", run, "--lr", "all", "--epoch", "all", "--top-k", "2", "--images", "64",
                             "--trace", "--trace-samples", "5", "--density", "--density-steps", "10", "--tol", "1e-2", "--device",
                             "cpu", capsys=capsys)
    assert code in (0, None) and "sgd_hessian_eigenvalues.png" in out and "sgd_hessian_density.png" in out
    result = read_hessian(tmp_path / "sgd_hessian.h5")
    assert result.arrays["eigenvalues"].shape == (2, 2, 2) and np.isfinite(result.arrays["eigenvalues"]).all()
    assert (result.arrays["eigenvalues"][..., 0] >= result.arrays["eigenvalues"][..., 1]).all()
    assert np.allclose(result.arrays["density/weights"].sum(axis=-1), 1.0)
    code, out, _ = landscape("plot", run, "--out", tmp_path / "fig", capsys=capsys)
    with open(tmp_path / "fig" / "sgd_sharpness.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:  # the dashed line is 2/lr (plain SGD, constant schedule)
        assert float(row["threshold"]) == pytest.approx(2 / float(row["lr"]))
    code, out, _ = landscape("info", run, capsys=capsys)
    assert "sharpness" in out and "2/lr" in out


BAD_HESSIAN = [
    ("--top-k", "0"), ("--bn", "recompute"), ("--lr", "9"), ("--epoch", "7"), ("--hvp", "finite-difference"),
    ("--lr", "fast"), ("--top-k", "9", "--max-steps", "3"), ("--trace", "--trace-samples", "2", "--trace-method", "hutch++"), ("--trace", "--trace-samples", "0"),
    ("--trace", "--trace-method", "exact"),
]


@pytest.mark.parametrize("extra", BAD_HESSIAN)
def test_bad_hessian_options_exit_2_with_one_line(tiny_run, extra, capsys):
    before = checksums(tiny_run.parent)
    code, _, err = landscape("hessian", tiny_run, "--device", "cpu", *(("--lr", "1e-3") if "--lr" not in extra else ()),
                             *extra, capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert checksums(tiny_run.parent) == before


@pytest.mark.parametrize("extra", [("--sharpness-every", "2", "--sharpness-images", "100000"),
                                   ("--sharpness-every", "2", "--sharpness-top-k", "5", "--sharpness-iters", "2"),
                                   ("--sharpness-every", "-1"), ("--snapshot-every", "-2")])
def test_bad_tracking_options_exit_2_and_write_nothing(tmp_path, extra, capsys):
    code, _, err = landscape("run", "--dataset", "synthetic", "--train-subset", "64", "--width", "0.0625",
                             "--epochs", "1", "--device", "cpu", "--out", tmp_path / "x.h5", *extra, capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


class ExplicitOperator:
    """A symmetric matrix as the operator the trace estimators take (size, device, __call__)."""

    def __init__(self, matrix: np.ndarray):
        self.matrix = torch.as_tensor(matrix, dtype=torch.float64)
        self.size, self.device, self.products = matrix.shape[0], torch.device("cpu"), 0

    def __call__(self, vector):
        self.products += 1
        return self.matrix @ vector


def test_hutchpp_is_exact_below_its_sketch_rank_and_counts_its_products():
    from landscape.engine.trace import hutchpp_trace

    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((60, 5)))[0]
    matrix = basis @ np.diag([9.0, 5.0, 3.0, -2.0, 1.0]) @ basis.T  # rank 5 < 30 // 3 sketch vectors
    operator = ExplicitOperator(matrix)
    trace, stderr = hutchpp_trace(operator, 30, seed=3)
    assert trace == pytest.approx(np.trace(matrix), abs=1e-9) and stderr < 1e-9
    assert operator.products == 30
    from landscape.errors import UsageError

    with pytest.raises(UsageError, match="at least 3 products"):
        hutchpp_trace(operator, 2)


def trained_mlp_hessian() -> np.ndarray:
    """The explicit Hessian (eval mode) of the small MLP after 300 SGD steps on its data."""
    net, batches = small_net(False), data()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(300):
        optimizer.zero_grad()
        sum(F.cross_entropy(net(x), y) * len(y) / 30 for x, y in batches).backward()
        optimizer.step()
    return explicit_hessian(net, "eval", batches)


def test_hutchpp_beats_hutchinson_at_a_full_budget_on_an_explicit_mlp_hessian():
    """Relative RMSE over 20 seeds at 99 products against the exact trace of the explicit Hessian of a trained MLP
    (114 parameters). At 10 and 30 products Hutch++ is slightly worse there (its sketch takes two thirds of the
    products): benchmarks/bench_trace.py prints the table."""
    from landscape.engine.trace import hutchinson_trace, hutchpp_trace

    hessian = trained_mlp_hessian()
    exact = np.trace(hessian)
    operator = ExplicitOperator(hessian)
    rmse = {name: np.sqrt(np.mean([(estimator(operator, 99, seed=seed)[0] - exact) ** 2 for seed in range(20)]))
            / abs(exact) for name, estimator in (("hutchinson", hutchinson_trace), ("hutch++", hutchpp_trace))}
    assert rmse["hutch++"] < 0.5 * rmse["hutchinson"], rmse
