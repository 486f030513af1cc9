"""Mode connectivity: barriers against closed forms and plain evaluations, weight matching against known
permutations, a trained Bezier curve on a toy valley, BatchNorm recomputation, the command and bad input."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.connectivity.connect import connect
from landscape.connectivity.matching import weight_matching
from landscape.connectivity.permutations import apply_permutation, permutation_spec, random_orders
from landscape.errors import UsageError
from landscape.files.path_file import read_path
from landscape.training.models import build_model
from tests.test_cli import checksums, landscape


def two_blobs(n: int = 256, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 4, generator=g) + 2.0 * (2 * y[:, None] - 1)
    return x, y


def trained_mlp(seed: int = 0) -> nn.Module:
    """An MLP with BatchNorm, trained to a low loss on two Gaussian blobs."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                        nn.Linear(16, 2))
    x, y = two_blobs()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(100):
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    return net.eval()


def permuted_copy(net: nn.Module, example: torch.Tensor, seed: int = 1) -> tuple[nn.Module, dict]:
    spec = permutation_spec(net, example)
    copy = type(net)(*net.children()) if isinstance(net, nn.Sequential) else None
    state = apply_permutation(spec, net.state_dict(), random_orders(spec, seed))
    return copy, state


@pytest.mark.parametrize("name", ["vgg_bn", "resnet20"])
def test_weight_matching_undoes_a_random_permutation_of_a_registry_model(name):
    """Every hidden unit permuted (BatchNorm statistics and residual shortcuts, option-A padding included): the copy
    computes the same function, and matching it back to the original recovers the original weights exactly."""
    torch.manual_seed(0)
    model = build_model(name, width=0.25)
    model.train()
    model(torch.randn(16, 3, 32, 32))  # running statistics away from their defaults
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    spec = permutation_spec(model, x)
    original = model.state_dict()
    permuted = apply_permutation(spec, original, random_orders(spec, 3))
    twin = build_model(name, width=0.25)
    twin.load_state_dict(permuted)
    twin.eval()
    assert torch.allclose(model(x), twin(x), atol=1e-5)
    assert any(not torch.equal(original[n], permuted[n]) for n in spec.axes)
    matched = weight_matching(spec, original, permuted)
    aligned = apply_permutation(spec, permuted, matched.orders)
    assert all(torch.equal(aligned[n], original[n]) for n in original)


def test_a_model_against_itself_and_against_its_permuted_copy():
    net = trained_mlp()
    x, y = two_blobs(seed=1)
    same = connect(net, net, (x, y), points=5, align="weights", bn="eval")
    for path in ("line", "aligned_line"):
        assert same.barriers[path]["train"]["loss"] == pytest.approx(0, abs=1e-6)
        assert np.allclose(same.values[path]["train"]["loss"], same.values[path]["train"]["loss"][0], atol=1e-6)
    _, permuted = permuted_copy(net, x[:2])
    apart = connect(net, permuted, (x, y), points=9, align="weights", bn="eval")
    assert apart.barriers["line"]["train"]["loss"] > 0.1  # the permuted copy's line crosses a barrier
    assert apart.barriers["aligned_line"]["train"]["loss"] == pytest.approx(0, abs=1e-6)
    assert apart.alignment.moved > 0


def test_path_ends_are_plain_evaluations_of_a_and_b():
    a, b = trained_mlp(0), trained_mlp(1)
    x, y = two_blobs(seed=2)
    result = connect(a, b, (x, y), test_data=(x[:64], y[:64]), points=4, bn="eval")
    assert result.attrs["end_statistics"] == "running"  # the models' own statistics: plain evaluations
    with torch.no_grad():
        for end, model in ((0, a), (-1, b)):
            assert result.values["line"]["train"]["loss"][end] == pytest.approx(float(F.cross_entropy(model(x), y)),
                                                                              rel=1e-5)
            accuracy = float((model(x[:64]).argmax(1) == y[:64]).float().mean())
            assert result.values["line"]["test"]["acc"][end] == pytest.approx(accuracy)
    assert not a.training


def test_recomputed_batchnorm_at_the_ends_is_a_fresh_train_mode_pass():
    """At t = 0 the recomputed statistics are the cumulative average of a train-mode pass over the BatchNorm images:
    the same as resetting A's statistics and running those batches through a copy with momentum None."""
    import copy

    a, b = trained_mlp(0), trained_mlp(1)
    x, y = two_blobs(seed=3)
    bn_x = torch.randn(96, 4)
    result = connect(a, b, (x, y), points=3, bn="recompute", bn_data=[(bn_x[:64], y[:64]), (bn_x[64:], y[:32])])
    fresh = copy.deepcopy(a)
    fresh[1].reset_running_stats()
    fresh[1].momentum = None
    fresh.train()
    with torch.no_grad():
        fresh(bn_x[:64])
        fresh(bn_x[64:])
        fresh.eval()
        expected = float(F.cross_entropy(fresh(x), y))
    assert result.values["line"]["train"]["loss"][0] == pytest.approx(expected, rel=1e-5)
    assert result.attrs["bn"] == "recompute"


class Point(nn.Module):
    """A 2D point whose 'output' is itself: the loss of a toy landscape in the plane."""

    def __init__(self, x: float, y: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([x, y]))

    def forward(self, inputs):
        return self.w.expand(inputs.shape[0], 2)


CENTRE = torch.tensor([0.0, -0.5])


def ring(outputs, targets):
    """(|w - c|^2 - 1.25)^2 with c = (0, -0.5): (-1, 0) and (1, 0) lie on the circle, a valley of zero loss; the
    straight line between them crosses a hill of height 1 at the origin, the valley arcs over it through (0, 0.62)."""
    return (((outputs - CENTRE) ** 2).sum(dim=1) - 1.25).pow(2).mean()


def test_a_trained_bezier_curve_follows_a_curved_valley():
    data = [(torch.zeros(1, 1), torch.zeros(1)) for _ in range(40)]
    result = connect(Point(-1.0, 0.0), Point(1.0, 0.0), data, loss=ring, metrics={}, points=21, curve="bezier",
                     curve_epochs=20, curve_lr=0.05, bn="eval")
    line = result.values["line"]["train"]["loss"]
    curve = result.values["curve"]["train"]["loss"]
    assert line.max() == pytest.approx(1.0, abs=1e-6)
    assert curve.max() < 0.1 * line.max()
    assert result.barriers["curve"]["train"]["loss"] < 0.1


def test_the_command_connects_two_snapshots_writes_a_path_file_and_refuses_bad_input(tmp_path, tiny_run, capsys):
    out = tmp_path / "connect.h5"
    code, stdout, _ = landscape("connect", tiny_run, tiny_run, "--lr", "1e-3", "--lr-b", "3e-4", "--align", "weights",
                                "--points", "3", "--images", "64", "--test-images", "32", "--bn-images", "64",
                                "--out", out, capsys=capsys)
    assert code in (0, None) and "connect.png" in stdout
    read = read_path(out)
    assert set(read.values) == {"line", "aligned_line"} and read.attrs["bn"] == "recompute"
    assert read.attrs["end_statistics"] == "recomputed"  # the ends too: not the models' own running statistics
    assert np.isfinite(read.barriers["line"]["test"]["loss"])
    code, stdout, _ = landscape("info", out, capsys=capsys)
    assert "loss barrier" in stdout and "weight matching" in stdout and "re-estimated on the training images" in stdout
    before = checksums(tmp_path)
    for arguments, message in (
            (("--points", "1"), "at least 2 points"),
            (("--epoch", "99"), "epoch"),
            (("--align", "sideways"), "align"),
    ):
        code, _, err = landscape("connect", tiny_run, tiny_run, "--lr", "1e-3", *arguments, "--out", tmp_path / "bad.h5",
                                 capsys=capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert checksums(tmp_path) == before and not (tmp_path / "bad.h5").exists()


def test_bad_pairs_are_one_line_errors():
    net = trained_mlp()
    x, y = two_blobs()
    other = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(UsageError, match="not of model A's architecture"):
        connect(net, other, (x, y))

    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, inputs):
            return self.out(self.a(inputs) * self.b(inputs))

    gated = Gated()
    with pytest.raises(UsageError, match="cannot follow hidden units through mul"):
        connect(gated, Gated().state_dict(), (x, y), align="weights")
    with pytest.raises(UsageError, match="at least 2 points"):
        connect(net, net, (x, y), points=1)


def test_a_curve_resumed_from_its_epoch_checkpoint_ends_where_an_uninterrupted_one_does():
    data = [(torch.zeros(1, 1), torch.zeros(1)) for _ in range(10)]
    common = dict(loss=ring, metrics={}, points=3, curve="bezier", curve_epochs=3, curve_lr=0.05, bn="eval")
    whole = connect(Point(-1.0, 0.0), Point(1.0, 0.0), data, **common)
    kept = []

    def stop_after_one(state):
        kept.append(state)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        connect(Point(-1.0, 0.0), Point(1.0, 0.0), data, after_epoch=stop_after_one, **common)
    resumed = connect(Point(-1.0, 0.0), Point(1.0, 0.0), data, curve_state=kept[0], **common)
    assert np.array_equal(resumed.bend["w"], whole.bend["w"])
    assert resumed.curve_losses == whole.curve_losses


def test_a_saved_bend_is_re_evaluated_and_the_report_shows_the_path(tmp_path, tiny_run, capsys):
    from landscape.views.report import build_report

    common = ["--lr", "1e-3", "--lr-b", "3e-4", "--points", "3", "--images", "64", "--test-images", "32",
              "--bn-images", "64"]
    trained = tmp_path / "curve.h5"
    code, _, _ = landscape("connect", tiny_run, tiny_run, *common, "--curve", "polychain", "--out", trained,
                           "--quiet", capsys=capsys)
    assert code in (0, None) and not (tmp_path / "curve.h5.curve.pt").exists()  # the checkpoint goes when done
    again = tmp_path / "again.h5"
    code, _, _ = landscape("connect", tiny_run, tiny_run, *common, "--curve", "polychain", "--bend-from", trained,
                           "--out", again, "--quiet", capsys=capsys)
    first, second = read_path(trained), read_path(again)
    assert np.array_equal(first.values["curve"]["train"]["loss"], second.values["curve"]["train"]["loss"])
    assert all(np.array_equal(first.bend[n], second.bend[n]) for n in first.bend)
    page = build_report([trained], tmp_path / "report.html").html()
    assert "Mode connectivity" in page and "loss barrier" in page
