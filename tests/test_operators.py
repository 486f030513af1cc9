"""The Gauss-Newton and Fisher operators against explicit matrices and closed forms; the restarted Lanczos and its
stopping rule against eigvalsh; bad input to the new options."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import landscape
from landscape.engine.curvature import top_eigenvalues
from landscape.engine.functional import flatten, module_buffers, prepared_module
from landscape.engine.operators import curvature_operator
from landscape.errors import UsageError


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def classification_data():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(24, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (24,), generator=g)
    return [(x[:10], y[:10]), (x[10:], y[10:])]


def operator_matrix(operator) -> np.ndarray:
    """The operator applied to every unit vector: its explicit matrix."""
    eye = torch.eye(operator.size, dtype=torch.float64)
    return torch.stack([operator(e) for e in eye], dim=1).numpy()


def make(name, net, batches, bn="eval", loss=None, ggn_method="auto"):
    from landscape.engine.batches import Objective

    module = prepared_module(net, bn)
    params = {n: p.detach() for n, p in net.named_parameters()}
    return curvature_operator(name, module, params, module_buffers(module, dict(net.named_buffers())), batches,
                              Objective(loss=loss), ggn_method=ggn_method)


def explicit_ggn_and_fisher(net, batches) -> tuple[np.ndarray, np.ndarray]:
    """J' H_out J from the Jacobian of the outputs (torch.autograd.functional.jacobian) and softmax's closed-form
    output Hessian (diag(p) - pp') / B; the Fisher from per-sample autograd gradients, one sample at a time."""
    params = {n: p.detach() for n, p in net.named_parameters()}
    total = sum(len(y) for _, y in batches)

    def outputs_of(flat, x):
        point, offset = {}, 0
        for name, value in params.items():
            point[name] = flat[offset:offset + value.numel()].view_as(value)
            offset += value.numel()
        return functional_call(net, point, (x,))

    flat = flatten(params)
    ggn = np.zeros((flat.numel(), flat.numel()))
    fisher = np.zeros_like(ggn)
    for x, y in batches:
        jac = torch.autograd.functional.jacobian(lambda f: outputs_of(f, x), flat).numpy()  # [B, K, P]
        probs = torch.softmax(outputs_of(flat, x), dim=1).detach().numpy()
        for i in range(len(y)):
            h_out = (np.diag(probs[i]) - np.outer(probs[i], probs[i])) / len(y)
            ggn += len(y) / total * jac[i].T @ h_out @ jac[i]
            leaf = flat.clone().requires_grad_(True)
            g = torch.autograd.grad(F.cross_entropy(outputs_of(leaf, x[i:i + 1]), y[i:i + 1]), leaf)[0].numpy()
            fisher += np.outer(g, g) / total
    return ggn, fisher


def test_ggn_and_fisher_equal_their_explicit_matrices_on_an_mlp():
    net, batches = mlp(), classification_data()
    ggn, fisher = explicit_ggn_and_fisher(net, batches)
    assert make("ggn", net, batches).closed_form  # the default for cross-entropy: softmax's Hessian written out
    for method in ("closed-form", "autograd"):
        assert np.allclose(operator_matrix(make("ggn", net, batches, ggn_method=method)), ggn, atol=1e-10), method
    assert np.allclose(operator_matrix(make("fisher", net, batches)), fisher, atol=1e-10)
    assert np.linalg.eigvalsh(ggn).min() > -1e-10  # positive semi-definite, as it must be
    for name, explicit in (("ggn", ggn), ("fisher", fisher)):
        eigen = top_eigenvalues(make(name, net, batches), 3, tol=1e-10, max_steps=60)
        assert np.allclose(eigen.values, np.linalg.eigvalsh(explicit)[::-1][:3], rtol=1e-7)


def test_hessian_ggn_and_fisher_coincide_for_least_squares_with_unit_residuals():
    """A linear model under mean squared error: H = GGN = 2 X'X / n; the empirical Fisher is mean 4 r_i^2 x_i x_i',
    which is the same matrix when every squared residual r_i^2 is 1/2."""
    g = torch.Generator().manual_seed(2)
    net = nn.Linear(4, 1, bias=False).double()
    x = torch.randn(20, 4, generator=g, dtype=torch.float64)
    signs = torch.where(torch.rand(20, 1, generator=g) < 0.5, -1.0, 1.0).double()
    y = (net(x) + signs / np.sqrt(2)).detach()
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]
    closed_form = 2 * x.T.numpy() @ x.numpy() / 20
    for name in ("hessian", "ggn", "fisher"):
        assert np.allclose(operator_matrix(make(name, net, batches, loss=F.mse_loss)), closed_form, atol=1e-10), name


def test_restarted_lanczos_matches_eigvalsh_within_a_small_basis():
    net, batches = mlp(), classification_data()
    operator = make("hessian", net, batches)
    truth = np.linalg.eigvalsh(operator_matrix(operator))[::-1]
    eigen = top_eigenvalues(operator, 3, tol=1e-9, max_steps=400, basis_vectors=10)
    assert eigen.restarts > 0 and eigen.basis == 10
    assert eigen.converged.all()
    assert np.allclose(eigen.values, truth[:3], rtol=1e-7)


def diagonal_operator(values: np.ndarray):
    diagonal = torch.as_tensor(values, dtype=torch.float64)

    class Diagonal:
        size, device, products = len(values), torch.device("cpu"), 0

        def __call__(self, v):
            self.products += 1
            return diagonal * v
    return Diagonal()


def test_stopping_waits_for_an_eigenvalue_the_start_barely_holds():
    """The top eigenvalue 10 has a component of 1e-7 in the start vector, a close pair 4, 3.999 and a bulk below:
    the error bounds of the top Ritz value (standing for 4) fall below tol before 10 has appeared, so a rule on the
    bounds alone reports 4; the confirmed rule must wait until 10 arrives."""
    values = np.concatenate([[10.0, 4.0, 3.999], np.linspace(0, 1, 400)])
    start = torch.ones(len(values), dtype=torch.float64)
    start[0] = 1e-7
    eigen = top_eigenvalues(diagonal_operator(values), 1, tol=1e-3, max_steps=200, start=start)
    assert abs(eigen.values[0] - 10) < 1e-3 * 10


def test_the_api_takes_an_operator_and_names_it_in_the_file(tmp_path):
    net, batches = mlp(), classification_data()
    spectrum = landscape.hessian(net, batches, operator="ggn", top_k=2, trace=True, trace_samples=30, bn="eval")
    ggn, _ = explicit_ggn_and_fisher(net, batches)
    assert np.allclose(spectrum.eigenvalues, np.linalg.eigvalsh(ggn)[::-1][:2], rtol=1e-3)
    assert spectrum.trace == pytest.approx(np.trace(ggn), rel=0.2)
    path = spectrum.save(tmp_path / "ggn.h5")
    read = landscape.read_hessian(path)
    assert read.attrs["operator"] == "ggn" and read.arrays["basis_vectors"][0, 0] > 0


@pytest.mark.parametrize("kwargs,message", [
    ({"operator": "kfac"}, "operator"),
    ({"operator": "fisher", "bn": "train"}, "bn='eval'"),
    ({"operator": "fisher", "bn": "eval", "loss": lambda o, t: F.cross_entropy(o, t, reduction="sum")},
     "mean of per-sample"),
    ({"operator": "ggn", "closure": lambda m, b: F.cross_entropy(m(b[0]), b[1])}, "closure"),
    ({"trace": True, "trace_samples": 2, "trace_method": "hutch++"}, "at least 3"),
    ({"basis_vectors": 3, "top_k": 2}, "basis_vectors"),
])
def test_bad_operator_options_are_one_line_errors(kwargs, message):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    before = {n: p.clone() for n, p in net.state_dict().items()}
    with pytest.raises(UsageError, match=message.replace("(", r"\(")) as caught:
        landscape.hessian(net, (x, y), **kwargs)
    assert "\n" not in str(caught.value)
    assert all(torch.equal(before[n], p) for n, p in net.state_dict().items())


def test_the_command_line_names_its_own_option_for_the_fisher_with_batchnorm(tmp_path, tiny_run, capsys):
    from tests.test_cli import landscape as cli

    out = tmp_path / "fisher.h5"
    code, _, err = cli("hessian", tiny_run, "--lr", "1e-3", "--operator", "fisher", "--images", "32", "--out", out,
                       capsys=capsys)
    assert code == 2 and "--bn eval" in err and "bn='eval'" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_the_closed_form_ggn_equals_autograds_with_batchnorm_on_batch_statistics():
    """On a CNN with BatchNorm normalising by each batch's statistics (the samples coupled), forward-mode J v with
    softmax's closed-form Hessian against the double-vector-Jacobian trick with autograd's output Hessian."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 5)).double()
    g = torch.Generator().manual_seed(4)
    batches = [(torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 5, (6,), generator=g))]
    closed, generic = (make("ggn", net, batches, bn="train", ggn_method=m) for m in ("closed-form", "autograd"))
    vectors = torch.randn(3, closed.size, generator=g, dtype=torch.float64)
    for v in vectors:
        assert torch.allclose(closed(v), generic(v), rtol=1e-10, atol=1e-12)
    with pytest.raises(UsageError, match="closed-form is for the default loss"):
        make("ggn", net, batches, loss=F.mse_loss, ggn_method="closed-form")
