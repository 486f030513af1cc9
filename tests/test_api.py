"""The engine on any model: surfaces, Hessians and probes through the Python API, each against an independent
computation (closed forms, explicit Hessians, the run-file command), and the model never changed."""
import pickle
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import landscape
from landscape.errors import UsageError
from tests.conftest import REPO
from tests.test_cli import checksums, landscape as run_cli

MODEL_DEFS = REPO / "tests" / "model_defs.py"


def mse(outputs, targets):
    return ((outputs.squeeze(-1) - targets) ** 2).mean()


def regression(n=40, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    model = nn.Linear(d, 1).double()
    return model, x, y


def snapshot(model: nn.Module) -> dict:
    """Everything a call must leave as it was: weights, buffers, modes, requires_grad, gradients."""
    return {"state": {k: v.clone() for k, v in model.state_dict().items()},
            "modes": [m.training for m in model.modules()],
            "grad": [(p.requires_grad, None if p.grad is None else p.grad.clone()) for p in model.parameters()]}


def unchanged(model: nn.Module, before: dict) -> bool:
    now = snapshot(model)
    return (all(torch.equal(now["state"][k], v) for k, v in before["state"].items()) and now["modes"] == before["modes"]
            and all(a[0] == b[0] and ((a[1] is None and b[1] is None) or torch.equal(a[1], b[1]))
                    for a, b in zip(now["grad"], before["grad"])))


def test_import_is_cheap_and_names_resolve_lazily():
    import subprocess

    code = "import landscape, sys; assert 'torch' not in sys.modules; landscape.surface; assert 'torch' in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_a_linear_model_with_mse_gives_the_closed_form_surface_and_spectrum():
    model, x, y = regression()
    before = snapshot(model)
    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    g = torch.Generator().manual_seed(4)
    d1 = {"weight": torch.randn(w.shape, generator=g, dtype=torch.float64), "bias": torch.zeros(1, dtype=torch.float64)}
    d2 = {"weight": torch.randn(w.shape, generator=g, dtype=torch.float64), "bias": torch.ones(1, dtype=torch.float64)}
    s = landscape.surface(model, (x, y), loss=mse, directions=[d1, d2], grid="-1:1:5", grid_y=(-2.0, 0.5, 3),
                          batch_size=16)
    assert s.loss.shape == (3, 5) and s.metrics == {} and s.done.all()
    for iy, cy in enumerate(s.y):
        for ix, cx in enumerate(s.x):
            wp = w + cx * d1["weight"] + cy * d2["weight"]
            bp = b + cx * d1["bias"] + cy * d2["bias"]
            assert s.loss[iy, ix] == pytest.approx(float(((x @ wp.T).squeeze(-1) + bp - y).pow(2).mean()), rel=1e-9)
    design = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1).numpy()
    exact = np.linalg.eigvalsh(2 * design.T @ design / len(x))[::-1]  # the Hessian of the mean squared error
    h = landscape.hessian(model, (x, y), loss=mse, top_k=3, tol=1e-10, max_steps=6, trace=True, trace_samples=200,
                          density=True, density_steps=6, batch_size=16)
    assert np.allclose(h.eigenvalues, exact[:3], rtol=1e-8) and h.converged.all()
    assert h.trace == pytest.approx(exact.sum(), rel=1e-12)  # the Lanczos basis spans all 6 directions: exact
    assert np.allclose(np.sort(h.density_nodes[0][np.isfinite(h.density_nodes[0])]), np.sort(exact), rtol=1e-6)
    assert h.eigen_hvps == h.lanczos_steps and h.trace_hvps == 0 and h.density_hvps == 6  # no product left to do
    assert unchanged(model, before)


def explicit_block_hessian(model, x, y, names):
    """torch.autograd.functional.hessian of the mean cross-entropy over the parameters `names` (others fixed)."""
    params = {n: p.detach().double() for n, p in model.named_parameters()}
    shapes = [(n, params[n]) for n in names]

    def loss(flat):
        point, offset = dict(params), 0
        for name, value in shapes:
            point[name] = flat[offset:offset + value.numel()].view_as(value)
            offset += value.numel()
        return F.cross_entropy(functional_call(model.double(), point, (x.double(),)), y)

    flat = torch.cat([v.reshape(-1) for _, v in shapes])
    return torch.autograd.functional.hessian(loss, flat).numpy()


def test_a_per_layer_spectrum_is_that_of_the_block_of_the_explicit_hessian():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(30, 6), torch.randint(0, 3, (30,))
    block = explicit_block_hessian(model, x, y, ["2.weight", "2.bias"])
    model.float()
    exact = np.linalg.eigvalsh(block)[::-1]
    h = landscape.hessian(model, (x, y), params="2.*", top_k=3, tol=1e-8, max_steps=27)
    assert h.parameters == 27 and np.allclose(h.eigenvalues, exact[:3], rtol=1e-3, atol=1e-5)
    full = landscape.hessian(model, (x, y), top_k=1, tol=1e-8, max_steps=83)
    assert full.parameters == 83 and full.eigenvalues[0] >= h.eigenvalues[0] - 1e-6  # Cauchy interlacing
    with pytest.raises(UsageError, match="matches no parameter"):
        landscape.hessian(model, (x, y), params="conv.*")


def test_a_closure_takes_batches_that_are_not_pairs_and_the_model_is_never_changed():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 3))
    model[0].weight.requires_grad_(False)
    model.train()
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    model(x).sum().backward()
    before = snapshot(model)
    loader = [{"image": x[:16], "label": y[:16]}, {"image": x[16:], "label": y[16:]}]

    def closure(forward, batch):
        return F.cross_entropy(forward(batch["image"]), batch["label"])

    with pytest.raises(UsageError, match="dict batches"):
        landscape.surface(model, loader, grid="-1:1:3", dims=1)
    with pytest.raises(UsageError, match="must be a torch.nn.Module"):
        landscape.surface({"weight": x}, (x, y))
    by_closure = landscape.surface(model, loader, closure=closure, grid="-1:1:3", dims=1, bn="train")
    by_pairs = landscape.surface(model, (x, y), grid="-1:1:3", dims=1, bn="train", batch_size=16)
    assert np.allclose(by_closure.loss, by_pairs.loss, rtol=1e-6)
    for bn in ("eval", "recompute"):
        landscape.surface(model, (x, y), grid="-1:1:3", bn=bn, batch_size=16)
    landscape.hessian(model, loader, closure=closure, top_k=2, max_steps=10)
    landscape.probe(model, (x, y), "gradient", lr=0.1)
    assert unchanged(model, before)


def test_the_probe_equals_a_direct_computation():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2))
    x, y = torch.randn(20, 5), torch.randint(0, 2, (20,))
    update = {n: 0.05 * torch.randn(p.shape) for n, p in model.named_parameters()}
    result = landscape.probe(model, (x, y), update, multipliers=(0.5, 2.0))
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    base = torch.autograd.grad(F.cross_entropy(functional_call(model, params, (x,)), y), list(params.values()))
    for j, m in enumerate((0.5, 2.0)):
        point = {n: (p + m * update[n]).detach().requires_grad_(True) for n, p in params.items()}
        loss = F.cross_entropy(functional_call(model, point, (x,)), y)
        grads = torch.autograd.grad(loss, list(point.values()))
        dist = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(grads, base)))
        step = m * torch.sqrt(sum((u ** 2).sum() for u in update.values()))
        assert result.loss[j] == pytest.approx(float(loss.detach()), rel=1e-5)
        assert result.grad_dist[j] == pytest.approx(float(dist), rel=1e-4)
        assert result.distance[j] == pytest.approx(float(step), rel=1e-5)
    assert result.beta == pytest.approx(float(np.max(result.grad_dist / result.distance)))


def cifar_pair(root, count):
    from landscape.training.data import CIFAR10_MEAN, CIFAR10_STD, cifar_folder, read_cifar10

    images, labels, _, _ = read_cifar10(cifar_folder(root, False))
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    x = (torch.from_numpy(images[:count]).float() / 255 - mean) / std
    return x, torch.from_numpy(labels[:count]).long()


def test_a_torchvision_resnet18_through_both_doors_gives_one_surface(cifar_root, tmp_path, capsys):
    sys.path.insert(0, str(REPO))
    from tests.model_defs import resnet18

    model = resnet18()
    before = snapshot(model)
    x, y = cifar_pair(cifar_root, 48)
    api = landscape.surface(model, (x, y), grid="-1:1:3", batch_size=128)
    assert unchanged(model, before)
    with landscape.Recorder(tmp_path / "tv.h5", model, torch.optim.SGD(model.parameters(), lr=0.1),
                            dataset="cifar10", data_root=str(cifar_root)):
        pass  # no step: the file holds the initial weights as its snapshot
    code, _, err = run_cli("surface", tmp_path / "tv.h5", "--model-def", f"{MODEL_DEFS}:resnet18", "--grid",
                           "-1:1:3", "--images", "48", "--device", "cpu", "--quiet", capsys=capsys)
    assert code in (0, None), err
    cli = landscape.read_surface(tmp_path / "tv_surface_lr0.1_e0_random_2d.h5")
    assert np.allclose(cli.loss, api.loss, rtol=1e-6) and np.allclose(cli.acc, api.acc)
    saved = api.save(tmp_path / "api.h5")
    code, out, _ = run_cli("plot", saved, "--out", tmp_path / "fig", capsys=capsys)
    assert code in (0, None) and (tmp_path / "fig" / "api_contour.png").is_file()


def test_a_small_timm_model_if_timm_is_installed():
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet10t", num_classes=10, pretrained=False)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    s = landscape.surface(model, (x, y), grid="-0.5:0.5:2", dims=1)
    assert np.isfinite(s.loss).all()
    h = landscape.hessian(model, (x, y), params="fc.*", top_k=1, max_steps=8)
    assert np.isfinite(h.eigenvalues).all()


def test_foreign_model_and_weights_from_the_command_line(cifar_root, tmp_path, capsys):
    sys.path.insert(0, str(REPO))
    from tests.model_defs import small_cnn

    model = small_cnn()
    torch.save(model.state_dict(), tmp_path / "cnn.pt")
    common = ("--model-def", f"{MODEL_DEFS}:small_cnn", "--weights", tmp_path / "cnn.pt", "--data-root", cifar_root,
              "--images", "64", "--device", "cpu", "--quiet")
    code, _, err = run_cli("surface", *common, "--grid", "-1:1:3", capsys=capsys)
    assert code in (0, None), err
    surface = landscape.read_surface(tmp_path / "cnn_surface_random_2d.h5")
    x, y = cifar_pair(cifar_root, 64)
    direct = landscape.surface(model, (x, y), grid="-1:1:3", batch_size=128)
    assert np.allclose(surface.loss, direct.loss, rtol=1e-6)
    code, _, err = run_cli("hessian", *common, "--top-k", "2", "--max-steps", "12", "--params", "9.*", capsys=capsys)
    assert code in (0, None), err
    result = landscape.read_hessian(tmp_path / "cnn_hessian.h5")
    assert result.attrs["params"] == "9.weight,9.bias" and np.isfinite(result.arrays["eigenvalues"]).all()


class Payload:
    """A pickle that would create a marker file when unpickled by a careless loader."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_bad_foreign_inputs_give_one_line_and_write_nothing(cifar_root, tmp_path, capsys):
    sys.path.insert(0, str(REPO))
    from tests.model_defs import small_cnn

    state = small_cnn().state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("9.")} | {"extra.weight": torch.zeros(2)},
               tmp_path / "wrong.pt")
    marker = tmp_path / "ran.txt"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"9.weight": Payload(marker)}, f)
    torch.save(state, tmp_path / "good.pt")
    (tmp_path / "syntax.py").write_text("def make(:\n")
    cases = [
        (("--model-def", f"{MODEL_DEFS}:small_cnn", "--weights", tmp_path / "wrong.pt"), "missing 2"),
        (("--model-def", f"{MODEL_DEFS}:small_cnn", "--weights", tmp_path / "evil.pt"), "could run code"),
        (("--model-def", f"{MODEL_DEFS}:broken", "--weights", tmp_path / "good.pt"), "broken on purpose"),
        (("--model-def", f"{MODEL_DEFS}:not_a_module", "--weights", tmp_path / "good.pt"), "not a torch.nn.Module"),
        (("--model-def", f"{MODEL_DEFS}:nothing", "--weights", tmp_path / "good.pt"), "no callable"),
        (("--model-def", f"{tmp_path / 'syntax.py'}:make", "--weights", tmp_path / "good.pt"), "SyntaxError"),
        (("--model-def", f"{MODEL_DEFS}:small_cnn"), "--weights"),
    ]
    before = checksums(tmp_path)
    for command in ("surface", "hessian"):
        for extra, expected in cases:
            code, _, err = run_cli(command, *extra, "--data-root", cifar_root, "--device", "cpu", capsys=capsys)
            assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert checksums(tmp_path) == before and not marker.exists()
    assert "unexpected 1 (extra.weight)" in run_cli("surface", *cases[0][0], "--data-root", cifar_root,
                                                    capsys=capsys)[2]


def test_bad_api_inputs_are_exceptions_of_ours():
    model, x, y = regression()
    for call, expected in [
        (lambda: landscape.surface(model, "not data"), "must be a DataLoader"),
        (lambda: landscape.surface(model, (x, y[:3])), "disagree in length"),
        (lambda: landscape.surface(model, (x, y), loss=mse, grid="1:0:5"), "empty or reversed"),
        (lambda: landscape.surface(model, (x, y), loss=mse, directions="between"), "needs to="),
        (lambda: landscape.surface(model, (x, y), loss=mse, norm="rows"), "norm"),
        (lambda: landscape.hessian(model, (x, y), loss=mse, top_k=0), "top_k"),
        (lambda: landscape.hessian(model, (x, y), loss=mse, bn="batch"), "bn"),
        (lambda: landscape.probe(model, (x, y), "gradient"), "lr"),
        (lambda: landscape.surface(nn.Linear(3, 1).double(), (x, y), loss=mse), "cannot be evaluated"),
    ]:
        with pytest.raises(UsageError, match=expected):
            call()


def test_a_surface_through_a_dataloader_of_a_dataset():
    from torch.utils.data import DataLoader, TensorDataset

    model, x, y = regression()
    loader = DataLoader(TensorDataset(x, y), batch_size=7, shuffle=True)
    a = landscape.surface(model, loader, loss=mse, grid="-1:1:3", dims=1)
    b = landscape.surface(model, TensorDataset(x, y), loss=mse, grid="-1:1:3", dims=1)
    assert np.allclose(a.loss, b.loss, rtol=1e-9)  # the mean over all samples, whatever the batches


@pytest.mark.parametrize("case", ["inputs of another dtype", "targets of two columns", "test inputs too narrow"])
def test_measures_of_a_model_that_cannot_take_the_data_is_our_one_line_error(case):
    """Every API function checks the model on the first batch before any work: measures raised torch's own
    RuntimeError from inside a measure."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 3))
    x, y = torch.randn(32, 10), torch.randint(0, 3, (32,))
    data, test = {"inputs of another dtype": ((x.double(), y), None),
                  "targets of two columns": ((x, torch.zeros(32, 2, dtype=torch.long)), None),
                  "test inputs too narrow": ((x, y), (x[:, :5], y))}[case]
    with pytest.raises(UsageError, match="cannot be evaluated on this data") as raised:
        landscape.measures(model, data, test_data=test, measures="gap")
    assert "\n" not in str(raised.value)


def test_load_model_holds_the_weights_file_snapshot_read_with_h5py(tmp_path, capsys):
    import h5py

    out = tmp_path / "two.h5"
    code, _, err = run_cli("run", "--model", "vgg_bn", "--width", "0.0625", "--lrs", "1e-3,1e-2", "--dataset",
                           "synthetic", "--train-subset", "64", "--epochs", "2", "--snapshot-every", "1", "--out",
                           out, "--quiet", capsys=capsys)
    assert code in (0, None), err
    model = landscape.load_model(out, lr=1e-2, epoch=1)
    assert not model.training
    with h5py.File(tmp_path / "two.weights.h5") as f:
        assert list(f["lrs"][()]) == [1e-3, 1e-2]
        stored = {name: torch.from_numpy(np.asarray(data[1])) for name, data in f["snapshots/epoch_0001"].items()}
    state = model.state_dict()
    assert set(state) == set(stored)
    for name, value in stored.items():
        assert torch.equal(state[name].cpu(), value.to(state[name].dtype)), name
    with pytest.raises(UsageError, match="lr"):
        landscape.load_model(out)  # two rates: which one
    with pytest.raises(UsageError, match="epoch"):
        landscape.load_model(out, lr=1e-3, epoch=7)
