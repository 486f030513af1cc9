"""The measures Jiang et al. (2019) rank highest, against closed forms: PAC-Bayes flatness and the worst-case
bound on a linear classifier (an exact expectation, an exact box corner), the path norm of a two-layer ReLU net
written out as a sum over paths, spectral norms against numpy's SVD, and the gradient noise scale of softmax
regression from per-sample gradients written out by hand."""
import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.stats import norm
from torch import nn

import landscape


def separable_data(n: int, seed: int = 0):
    """A linear classifier of 2 classes and n points it classifies correctly, with margins of several sizes."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(4, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(2, 4, generator=g, dtype=torch.float64))
        model.bias.copy_(torch.randn(2, generator=g, dtype=torch.float64) * 0.1)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    y = model(x).argmax(dim=1)
    return model, x, y


def margins_and_inputs(model, x, y):
    logits = model(x).detach()
    margin = (logits.gather(1, y[:, None]) - logits.gather(1, 1 - y[:, None]))[:, 0].numpy()
    augmented = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1).numpy()  # the bias as an input of 1
    return margin, augmented


def weights_of(model):
    return torch.cat([model.weight, model.bias[:, None]], dim=1).detach().numpy()  # [2, d+1]


def solve_sigma(margin, spread_of_sigma, bound):
    """The sigma where the exact expected error rise, mean_i Phi(-m_i / sd_i(sigma)), equals `bound`."""
    return brentq(lambda s: np.mean(norm.cdf(-margin / spread_of_sigma(s))) - bound, 1e-6, 1e3)


@pytest.mark.parametrize("magnitude", [False, True])
def test_pacbayes_sigma_of_a_linear_classifier_is_the_closed_form(magnitude):
    model, x, y = separable_data(64)
    before = {n: p.clone() for n, p in model.state_dict().items()}
    margin, inputs = margins_and_inputs(model, x, y)
    w, eps = weights_of(model), 1e-3
    labels = y.numpy()
    if magnitude:
        # the margin moves by (u_y - u_o) . x~, u_ij ~ N(0, sigma^2 w_ij^2 + eps^2) independently
        def spread(s):
            variance = (s ** 2 * w ** 2 + eps ** 2)
            return np.sqrt(((variance[labels] + variance[1 - labels]) * inputs ** 2).sum(axis=1))
    else:
        def spread(s):
            return s * np.sqrt(2 * (inputs ** 2).sum(axis=1))
    expected = solve_sigma(margin, spread, 0.1)
    group = "pacbayes_mag" if magnitude else "pacbayes"
    result = landscape.measures(model, (x, y), measures=group, draws=600, tolerance=0.005, bound=0.1, bn="eval")
    assert result.values[f"{group}_sigma"] == pytest.approx(expected, rel=0.04)
    assert result.values[f"{group}_flatness"] == pytest.approx(1 / result.values[f"{group}_sigma"] ** 2)
    assert result.attrs[f"{group}_deviation"] == "error"
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())


def test_pacbayes_stopping_draws_early_leaves_the_answer_and_saves_passes(monkeypatch):
    """The search stops drawing once the mean is settled above the bound: the same sigma as with every draw made."""
    from landscape.engine import bounds
    from landscape.engine.batches import BatchSet, Objective

    model, x, y = separable_data(64, seed=2)
    params = {n: p.detach() for n, p in model.named_parameters()}
    common = dict(bound=0.1, draws=10, tolerance=0.02, seed=0)
    early = bounds.pacbayes_sigma(model, params, {}, BatchSet([(x, y)]), Objective(), **common)
    monkeypatch.setattr(bounds, "lowest_deviation", lambda base: -math.inf)  # never settled before the last draw
    every = bounds.pacbayes_sigma(model, params, {}, BatchSet([(x, y)]), Objective(), **common)
    assert early.scale == every.scale and early.evaluations == every.evaluations
    assert every.passes == 1 + 10 * every.evaluations and early.passes < every.passes


def test_pacbayes_on_a_regression_loss_is_the_closed_form():
    """Without an accuracy the bound is on the loss: for least squares, E[L(w + u)] - L(w) = sigma^2 E|x~|^2."""
    g = torch.Generator().manual_seed(3)
    model = nn.Linear(6, 1).double()
    x = torch.randn(128, 6, generator=g, dtype=torch.float64)
    t = torch.randn(128, generator=g, dtype=torch.float64)

    def squared_error(outputs, targets):
        return ((outputs[:, 0] - targets) ** 2).mean()

    result = landscape.measures(model, (x, t), loss=squared_error, measures="pacbayes", draws=400, tolerance=0.005,
                                bound=0.05, bn="eval")
    expected = math.sqrt(0.05 / float((x ** 2).sum(dim=1).mean() + 1))
    assert result.values["pacbayes_sigma"] == pytest.approx(expected, rel=0.05)
    assert result.attrs["pacbayes_deviation"] == "loss"


@pytest.mark.parametrize("magnitude", [False, True])
def test_worst_case_alpha_of_one_point_is_the_box_corner(magnitude):
    """One point: its error jumps from 0 to 1 where the box's worst corner cancels its margin."""
    model, x, y = separable_data(1, seed=4)
    margin, inputs = margins_and_inputs(model, x, y)
    w, eps, label = weights_of(model), 1e-3, int(y[0])
    size = np.abs(inputs[0])
    if magnitude:  # |u_ij| <= alpha |w_ij| + eps on both rows
        expected = (margin[0] - 2 * eps * size.sum()) / ((np.abs(w[label]) + np.abs(w[1 - label])) @ size)
    else:
        expected = margin[0] / (2 * size.sum())
    group = "jiang_mag" if magnitude else "jiang"
    result = landscape.measures(model, (x, y), measures=group, tolerance=0.002, steps=10, bn="eval")
    assert result.values[f"{group}_alpha"] == pytest.approx(expected, rel=0.003)
    assert result.values[f"{group}_sharpness"] == pytest.approx(1 / result.values[f"{group}_alpha"] ** 2)


def test_path_norm_of_a_two_layer_relu_net_is_the_sum_over_paths():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    w1, b1 = net[0].weight.detach().numpy(), net[0].bias.detach().numpy()
    w2, b2 = net[2].weight.detach().numpy(), net[2].bias.detach().numpy()
    paths = sum(w2[k, j] ** 2 * w1[j, i] ** 2 for k in range(2) for j in range(5) for i in range(3))
    paths += sum(w2[k, j] ** 2 * b1[j] ** 2 for k in range(2) for j in range(5))
    paths += sum(b2[k] ** 2 for k in range(2))
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    result = landscape.measures(net, (x, y), measures="path_norm")
    assert result.values["path_norm"] == pytest.approx(paths, rel=1e-12)


def test_spectral_norms_are_numpys_largest_singular_values():
    torch.manual_seed(6)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).double()
    x, y = torch.randn(8, 3, 6, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    kernel = net[0].weight.detach().numpy().reshape(4, -1)
    dense = net[3].weight.detach().numpy()
    norms = [np.linalg.svd(kernel, compute_uv=False)[0], np.linalg.svd(dense, compute_uv=False)[0]]
    result = landscape.measures(net, (x, y), measures="spectral")
    assert result.values["log_spectral_product"] == pytest.approx(sum(np.log(norms)), rel=1e-10)
    assert result.values["spectral_sum"] == pytest.approx(sum(norms), rel=1e-10)


def test_gradient_noise_scale_of_softmax_regression_from_per_sample_gradients_by_hand():
    g = torch.Generator().manual_seed(7)
    model = nn.Linear(5, 3).double()
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    p = torch.softmax(model(x), dim=1).detach().numpy()
    residual = p - np.eye(3)[y.numpy()]  # d loss_i / d logits
    inputs = np.concatenate([x.numpy(), np.ones((40, 1))], axis=1)
    per_sample = np.einsum("nk,nd->nkd", residual, inputs).reshape(40, -1)  # g_i for [W | b]
    mean = per_sample.mean(axis=0)
    trace = ((per_sample - mean) ** 2).sum() / 39
    result = landscape.measures(model, (x, y), measures="noise_scale", batch_size=16)
    assert result.values["grad_norm_sq"] == pytest.approx(mean @ mean, rel=1e-10)
    assert result.values["grad_noise_trace"] == pytest.approx(trace, rel=1e-10)
    assert result.values["grad_noise_scale"] == pytest.approx(trace / (mean @ mean), rel=1e-10)


@pytest.mark.parametrize("options, message", [
    (dict(bound=0.0), "bound must be in"),
    (dict(draws=0), "draws"),
    (dict(tolerance=-1.0), "tolerance must be in"),
])
def test_bad_bound_options_are_refused(options, message):
    model, x, y = separable_data(8)
    with pytest.raises(landscape.UsageError, match=message):
        landscape.measures(model, (x, y), measures="pacbayes", **options)
