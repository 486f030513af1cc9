"""Weight snapshots and loss surfaces, each checked against an independent computation."""
import signal

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.errors import RunFailed, UsageError
from landscape.commands.surface import SurfaceOptions, compute_surface
from landscape.engine.batches import BatchSet, Objective
from landscape.engine.directions import normalize_direction, pca_directions
from landscape.engine.functional import evaluate_points, expand_points, prepared_module
from landscape.engine.surface import PointEvaluator, SurfacePlan, along, parse_grid
from landscape.files.surface_file import read_surface
from tests.test_cli import checksums, landscape


@pytest.fixture(scope="module")
def snap_run(tmp_path_factory, tiny_config):
    """A tiny vgg_bn run (2 rates, 3 epochs) with a snapshot after every epoch."""
    from landscape.training.runner import train

    return train(tiny_config(epochs=3, snapshot_every=1), tmp_path_factory.mktemp("snap") / "snap.h5",
                 progress=False, keep_checkpoint=True)


def test_filter_normalisation_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    weights = {"conv.weight": torch.randn(4, 3, 3, 3, generator=g), "fc.weight": torch.randn(5, 7, generator=g),
               "conv.bias": torch.randn(4, generator=g)}
    direction = {n: torch.randn(w.shape, generator=g) * 10 for n, w in weights.items()}
    out = normalize_direction(direction, weights, "filter", "biasbn")
    for name in ("conv.weight", "fc.weight"):
        for i in range(weights[name].shape[0]):
            assert torch.linalg.norm(out[name][i]) == pytest.approx(float(torch.linalg.norm(weights[name][i])), rel=1e-5)
            cosine = F.cosine_similarity(out[name][i].flatten(), direction[name][i].flatten(), dim=0)
            assert float(cosine) == pytest.approx(1.0, abs=1e-6)  # rescaled, not turned
    assert torch.count_nonzero(out["conv.bias"]) == 0
    kept = normalize_direction(direction, weights, "filter", "none")
    assert torch.equal(kept["conv.bias"], weights["conv.bias"])  # as the reference code
    layer = normalize_direction(direction, weights, "layer", "biasbn")
    assert float(layer["fc.weight"].norm()) == pytest.approx(float(weights["fc.weight"].norm()), rel=1e-5)


def test_pca_directions_equal_numpy_svd():
    g = torch.Generator().manual_seed(1)
    origin = {"a.weight": torch.randn(3, 4, generator=g, dtype=torch.float64),
              "a.bias": torch.randn(3, generator=g, dtype=torch.float64)}
    path = [{n: v + torch.randn(v.shape, generator=g, dtype=torch.float64) * (k + 1) for n, v in origin.items()}
            for k in range(6)]
    directions, explained = pca_directions(path, origin, "biasbn", 2)
    rows = np.stack([np.concatenate([(s["a.weight"] - origin["a.weight"]).numpy().ravel(), np.zeros(3)])
                     for s in path])
    centred = rows - rows.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    for i in range(2):
        mine = np.concatenate([directions[i]["a.weight"].numpy().ravel(), directions[i]["a.bias"].numpy()])
        assert abs(np.dot(mine, vt[i])) == pytest.approx(1.0, abs=1e-8)  # same axis, up to sign
    assert np.allclose(explained, singular[:2] ** 2 / (singular ** 2).sum())


def linear_setup(xs, ys):
    """A softmax-regression model and two directions on fixed data."""
    g = torch.Generator().manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    origin = {n: p.detach().clone() for n, p in model.named_parameters()}
    directions = [{n: torch.randn(p.shape, generator=g) for n, p in origin.items()} for _ in range(2)]
    setup = SurfacePlan(module=prepared_module(model, "eval"), origin=origin, buffers={}, directions=directions,
                        buffer_directions=None, xs=xs, ys=ys, kind="given")
    images = torch.randn(40, 3, 2, 2, generator=g)
    labels = torch.randint(0, 3, (40,), generator=g)
    return setup, BatchSet([(images[:25], labels[:25]), (images[25:], labels[25:])]), images, labels


def test_a_softmax_regression_surface_equals_numpy_on_a_non_square_grid():
    xs, ys = np.linspace(-1, 1, 5), np.linspace(-0.5, 2, 3)
    setup, batches, images, labels = linear_setup(xs, ys)
    loss = np.full((3, 5), np.nan)
    acc = np.full((3, 5), np.nan)
    index = np.arange(15)
    evaluator = PointEvaluator(setup, batches, Objective())
    for chunk in (index[:4], index[4:11], index[11:]):  # uneven chunks, several points per pass
        values = evaluator.evaluate(chunk)
        loss.reshape(-1)[chunk], acc.reshape(-1)[chunk] = values["loss"], values["acc"]
    X = images.reshape(40, -1).double().numpy()
    W, b = (setup.origin[n].double().numpy() for n in ("1.weight", "1.bias"))
    (DW, Db), (EW, Eb) = [(d["1.weight"].double().numpy(), d["1.bias"].double().numpy()) for d in setup.directions]
    for iy, y in enumerate(ys):
        for ix, x in enumerate(xs):
            logits = X @ (W + x * DW + y * EW).T + (b + x * Db + y * Eb)
            logits -= logits.max(axis=1, keepdims=True)
            log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            assert loss[iy, ix] == pytest.approx(-log_p[np.arange(40), labels.numpy()].mean(), rel=1e-5)
            assert acc[iy, ix] == pytest.approx((logits.argmax(1) == labels.numpy()).mean())


def test_batched_points_equal_one_point_at_a_time_with_batchnorm():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3))
    model.train()
    model(torch.randn(16, 3, 4, 4))  # running statistics away from their defaults
    origin = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    direction = {n: torch.randn(p.shape) for n, p in origin.items()}
    batches = BatchSet([(torch.randn(10, 3, 4, 4), torch.randint(0, 3, (10,))) for _ in range(2)])
    coords = torch.linspace(-1, 1, 6)
    for bn in ("eval", "train"):
        module = prepared_module(model, bn)
        kept = {n: b for n, b in buffers.items() if n in dict(module.named_buffers())}
        together = evaluate_points(module, along(origin, [direction], [coords]), expand_points(kept, 6), batches,
                                   Objective())["loss"]
        alone = [evaluate_points(module, along(origin, [direction], [c.view(1)]), expand_points(kept, 1),
                                 batches, Objective())["loss"] for c in coords]
        assert torch.allclose(together, torch.cat(alone), rtol=1e-5)
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())


def independent_loss(run_path, lr_index, images, labels, bn):
    """The snapshot's loss computed by hand: build the model, load the HDF5 state with h5py, plain forward."""
    import json

    from landscape.training.models import build_model

    with h5py.File(run_path.with_name(run_path.stem + ".weights.h5"), "r") as f:
        group = f["snapshots"]["epoch_0003"]
        state = {k: torch.from_numpy(np.asarray(group[k][lr_index])) for k in group}
    with h5py.File(run_path, "r") as f:
        config = json.loads(f.attrs["config"])
    model = build_model("vgg_bn", width=config["width"], num_classes=10, image_size=32)
    model.load_state_dict(state)
    model.train(bn == "train")
    with torch.no_grad():
        losses = [F.cross_entropy(model(x), y, reduction="sum") for x, y in zip(images.split(32), labels.split(32))]
    return float(sum(losses)) / len(labels), state, model


def test_centre_point_equals_an_independent_evaluation_and_bn_modes(snap_run, tmp_path):
    from landscape.training.data import Normalizer, load_dataset

    data = load_dataset("synthetic", "data", device=torch.device("cpu"), train_subset=256)
    images = Normalizer(data.mean, data.std, torch.device("cpu"))(data.train.images[:64])
    labels = data.train.labels[:64]
    for bn in ("eval", "train"):
        out = compute_surface(snap_run, SurfaceOptions(lr=1e-3, dims=1, grid="-1:1:3", images=64, bn=bn,
                                                       batch_size=32, device="cpu"),
                              tmp_path / f"{bn}.h5", progress=False)
        surface = read_surface(out)
        expected, state, model = independent_loss(snap_run, 0, images, labels, bn)
        assert surface.loss[1] == pytest.approx(expected, rel=1e-5)
        assert surface.attrs["bn"] == bn and surface.done.all()
    # the snapshot file is what it was: no running statistic was moved by either mode
    _, again, _ = independent_loss(snap_run, 0, images, labels, "eval")
    assert all(torch.equal(state[k], again[k]) for k in state)


def test_snapshots_start_identical_and_end_at_the_trained_weights(snap_run):
    with h5py.File(snap_run.with_name("snap.weights.h5"), "r") as f:
        epochs = sorted(int(g.attrs["epoch"]) for g in f["snapshots"].values())
        assert epochs == [0, 1, 2, 3]
        first = f["snapshots/epoch_0000"]
        for name in first:
            assert np.array_equal(first[name][0], first[name][1])  # shared initialisation
        last = {k: v[...] for k, v in f["snapshots/epoch_0003"].items()}
        assert first["features.0.weight"].attrs["kind"] == "parameter"
        assert first["features.1.running_mean"].attrs["kind"] == "buffer"
    with h5py.File(snap_run, "r") as f:
        assert f.attrs["weights_file"] == "snap.weights.h5"
    saved = torch.load(str(snap_run) + ".ckpt", weights_only=True)["engine"]["models"]
    for run, state in enumerate(saved):
        for name, value in state.items():
            assert np.array_equal(last[name][run], value.numpy())


def test_an_interrupted_surface_resumes_to_the_identical_file(snap_run, tmp_path, monkeypatch):
    import landscape.commands.surface as surface_command

    options = dict(lr=3e-4, grid="-1:1:4", grid_y="-1:1:3", images=64, device="cpu", points_per_pass=2)
    whole = read_surface(compute_surface(snap_run, SurfaceOptions(**options), tmp_path / "whole.h5", progress=False))

    class InterruptAfterTwo(surface_command.Progress):
        def update(self, done: int) -> None:
            super().update(done)
            if done == 4:
                signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(surface_command, "Progress", InterruptAfterTwo)
    with pytest.raises(RunFailed, match="resume with"):
        compute_surface(snap_run, SurfaceOptions(**options), tmp_path / "part.h5", progress=True)
    part = read_surface(tmp_path / "part.h5")
    assert part.status == "interrupted" and part.done.sum() == 4 and np.isnan(part.loss[~part.done]).all()
    monkeypatch.undo()
    with pytest.raises(UsageError, match="other options"):
        compute_surface(snap_run, SurfaceOptions(**{**options, "seed": 5}), tmp_path / "part.h5", resume=True)
    done = read_surface(compute_surface(snap_run, SurfaceOptions(**options), tmp_path / "part.h5", resume=True,
                                        progress=False))
    assert done.status == "complete"
    assert np.array_equal(done.loss, whole.loss) and np.array_equal(done.acc, whole.acc)


def test_pca_and_between_surfaces(snap_run, tmp_path, capsys):
    code, out, _ = landscape("surface", snap_run, "--lr", "1e-3", "--directions", "pca", "--grid", "-1:1:3",
                             "--images", "32", "--device", "cpu", "--quiet", "--out", tmp_path / "pca.h5",
                             capsys=capsys)
    assert code in (0, None) and out == ""  # --quiet: no progress, no list of files
    assert (tmp_path / "pca_contour.png").is_file()
    pca = read_surface(tmp_path / "pca.h5")
    assert list(pca.trajectory["epoch"]) == [0, 1, 2, 3] and pca.trajectory["x"][-1] == 0
    assert 0 < pca.explained_variance.sum() <= 1 + 1e-9
    between = read_surface(compute_surface(snap_run, SurfaceOptions(
        lr=1e-3, dims=1, directions="between", to="3e-4", grid="0:1:2", images=64, device="cpu"),
        tmp_path / "between.h5", progress=False))
    from landscape.training.data import Normalizer, load_dataset

    data = load_dataset("synthetic", "data", device=torch.device("cpu"), train_subset=256)
    images = Normalizer(data.mean, data.std, torch.device("cpu"))(data.train.images[:64])
    labels = data.train.labels[:64]
    for end, run in ((0, 0), (1, 1)):  # the two end points are the two runs' own weights and statistics
        assert between.loss[end] == pytest.approx(independent_loss(snap_run, run, images, labels, "eval")[0],
                                                  rel=1e-5)


def test_a_bare_count_keeps_the_default_extent(snap_run, tmp_path):
    from landscape.engine.surface import axis_grid

    assert np.allclose(axis_grid("5", "random", None, "x", "grid"), [-1, -0.5, 0, 0.5, 1])
    assert np.allclose(axis_grid(4, "between", None, "x", "grid"), [-0.25, 0.25, 0.75, 1.25])
    pca = read_surface(compute_surface(snap_run, SurfaceOptions(lr=1e-3, directions="pca", grid="3", grid_y="4",
                                                                images=16, device="cpu"),
                                       tmp_path / "pca.h5", progress=False))
    for axis, count in (("x", 3), ("y", 4)):  # the trajectory with a 25% margin on each side, in `count` points
        low, high = pca.trajectory[axis].min(), pca.trajectory[axis].max()
        margin = 0.25 * (high - low)
        assert np.allclose(getattr(pca, axis), np.linspace(low - margin, high + margin, count), rtol=1e-12)


def test_grid_parsing():
    assert np.allclose(parse_grid("-1:1:5"), [-1, -0.5, 0, 0.5, 1])
    assert np.allclose(parse_grid("0.5:0.5:1"), [0.5])
    for bad in ("1:-1:0", "1:-1:5", "a:b:c", "0:1"):
        with pytest.raises(UsageError):
            parse_grid(bad)


BAD_SURFACE_OPTIONS = [
    ("--grid", "1:-1:0"),
    ("--directions", "sideways"),
    ("--directions", "between", "--to", "5e-2", "--dims", "1"),
    ("--directions", "between", "--to", "3e-4"),  # 2D needs two end points
    ("--lr", "7e-3"),
    ("--epoch", "9"),
    ("--bn", "batch"),
    ("--images", "100000"),
]


@pytest.mark.parametrize("extra", BAD_SURFACE_OPTIONS)
def test_bad_surface_options_exit_2_with_one_line(snap_run, extra, capsys):
    before = checksums(snap_run.parent)
    code, _, err = landscape("surface", snap_run, "--lr", "1e-3", "--device", "cpu", "--quiet", *extra,
                             capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert checksums(snap_run.parent) == before


def test_runs_without_snapshots_and_foreign_weights_are_refused(tmp_path, tiny_config, snap_run, capsys):
    import shutil

    from landscape.training.runner import train

    bare = train(tiny_config(epochs=1, snapshots=False), tmp_path / "bare.h5", progress=False)
    code, _, err = landscape("surface", bare, "--lr", "1e-3", "--device", "cpu", capsys=capsys)
    assert code == 2 and "no weight snapshots" in err
    other = train(tiny_config(epochs=1, width=1 / 8), tmp_path / "other.h5", progress=False)
    shutil.copy(snap_run.with_name("snap.weights.h5"), other.with_name("other.weights.h5"))
    code, _, err = landscape("surface", other, "--lr", "1e-3", "--device", "cpu", capsys=capsys)
    assert code == 2 and "does not fit the model" in err and len(err.strip().splitlines()) == 1
