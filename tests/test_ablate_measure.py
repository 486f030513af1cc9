"""`landscape ablate measure`: a grid's cells measured as the API measures them, the rank correlations against
scipy, resuming cell by cell, and bad input."""
import numpy as np
import pytest
from scipy.stats import kendalltau

from landscape.ablations.correlation import granulated, kendall
from landscape.ablations.runner import plan, run_job
from landscape.ablations.spec import load_spec
from landscape.files.measures_file import read_measures
from tests.test_cli import checksums, landscape as cli

GRID_SPEC = '''
title = "test: activation by batch size"
source = "report 004, test"
metrics = ["best_test_acc", "final_test_acc"]
[base]
model = "resnet20"
dataset = "synthetic"
width = 0.25
lrs = [0.01]
optimizer = "sgd"
train_subset = 128
batch_size = 32
epochs = 1
threads = 1
[[axes]]
name = "activation"
values = ["relu", "silu"]
[[axes]]
name = "batch_size"
values = [32, 64]
[presets.quick]
epochs = 1
'''


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grid")
    spec_file = folder / "grid.toml"
    spec_file.write_text(GRID_SPEC)
    spec = load_spec(spec_file)
    for job in plan(spec, "quick", 1, folder / "results"):
        run_job(job, threads=1)
    return spec_file, folder / "results"


def test_measures_of_every_cell_equal_the_api_on_the_same_weights(grid, capsys):
    import landscape
    from landscape.commands.sources import ImageSet, snapshot_model
    from landscape.files.run_file import read_run
    from landscape.files.weights_file import weights_of_run

    spec_file, results = grid
    common = ["--preset", "quick", "--results", results, "--measures", "worst,average,gap,norms", "--rho", "0.01",
              "--images", "64", "--test-images", "64", "--steps", "2", "--samples", "3", "--device", "cpu"]
    code, out, err = cli("ablate", "measure", spec_file, *common, capsys=capsys)
    assert code in (0, None), err
    path = results / "grid" / "quick" / "measures.h5"
    table = read_measures(path)
    assert len(table.cells) == 4 and table.done.all()
    assert (path.parent / "correlations.md").exists() and (path.parent / "measures_scatter.png").exists()
    run_path = sorted((results / "grid" / "quick").glob("*silu*64*_seed0.h5"))[0]
    run = read_run(run_path)
    weights = weights_of_run(run)
    model = snapshot_model(run, weights, 0, weights.epochs[-1], __import__("torch").device("cpu"))
    images = ImageSet.of_run(run, __import__("torch").device("cpu"))
    direct = landscape.measures(model, images.batches(images.split("train", 64), images.batch_size),
                                test_data=images.batches(images.split("test", 64), images.batch_size),
                                measures="worst,average,gap,norms", rho=0.01, steps=2, samples=3)
    row = [i for i, c in enumerate(table.cells) if table.info[c]["activation"] == "silu"
           and table.info[c]["batch_size"] == "64"][0]
    for name, value in direct.values.items():
        assert table.values[name][row] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    stored = checksums(path.parent)["measures.h5"]
    code, out, err = cli("ablate", "measure", spec_file, *common, capsys=capsys)
    assert code in (0, None) and "measured" not in err  # every cell was done: nothing is measured again
    assert checksums(path.parent)["measures.h5"] == stored
    before = checksums(path.parent)
    code, out, err = cli("ablate", "measure", spec_file, *common, "--rho", "0", capsys=capsys)
    assert code == 2 and "rho" in err and len(err.strip().splitlines()) == 1
    assert checksums(path.parent) == before


def test_cells_measured_in_parallel_processes_have_the_values_of_one_process(grid, tmp_path, capsys):
    import shutil

    spec_file, results = grid
    common = ["--preset", "quick", "--measures", "pacbayes,norms", "--images", "64", "--test-images", "64",
              "--draws", "2", "--tolerance", "0.5", "--device", "cpu", "--threads", "1"]
    tables = {}
    for name, extra in (("one process", []), ("two processes", ["--jobs", "2"])):
        copy = tmp_path / name.replace(" ", "_")
        shutil.copytree(results, copy)
        (copy / "grid" / "quick" / "measures.h5").unlink(missing_ok=True)
        code, _, err = cli("ablate", "measure", spec_file, *common, "--results", copy, *extra, capsys=capsys)
        assert code in (0, None), err
        tables[name] = read_measures(copy / "grid" / "quick" / "measures.h5")
    one, two = tables["one process"], tables["two processes"]
    assert list(one.cells) == list(two.cells) and two.done.all()
    for name, column in one.values.items():
        np.testing.assert_array_equal(column, two.values[name], err_msg=name)
    code, _, err = cli("ablate", "measure", spec_file, *common, "--results", tmp_path / "ray", "--jobs", "2",
                       "--executor", "ray", capsys=capsys)
    assert code == 2 and "--jobs" in err and len(err.strip().splitlines()) == 1


def test_a_spec_without_finished_cells_or_weights_is_refused(grid, tmp_path, capsys):
    spec_file, results = grid
    code, _, err = cli("ablate", "measure", spec_file, "--preset", "quick", "--results", tmp_path / "empty",
                             capsys=capsys)
    assert code == 2 and "no finished cell" in err and len(err.strip().splitlines()) == 1
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(results, copy)
    next((copy / "grid" / "quick").glob("*.weights.h5")).unlink()
    (copy / "grid" / "quick" / "measures.h5").unlink(missing_ok=True)
    code, _, err = cli("ablate", "measure", spec_file, "--preset", "quick", "--results", copy,
                             "--measures", "norms", capsys=capsys)
    assert code == 2 and "weights" in err and len(err.strip().splitlines()) == 1
    assert not (copy / "grid" / "quick" / "measures.h5").exists()


def test_kendall_and_granulated_tau_equal_scipy_on_the_same_numbers():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=12), rng.normal(size=12)
    assert kendall(x, y) == pytest.approx(kendalltau(x, y).statistic)
    first = np.array(["a", "b"] * 6)
    second = np.repeat(["p", "q", "r", "s", "t", "u"], 2)
    overall, per_axis = granulated(x, y, {"first": first, "second": second})
    # axis "first" varies alone within each value of "second": pairs of two points
    expected_first = np.mean([kendalltau(x[second == v], y[second == v]).statistic for v in np.unique(second)])
    expected_second = np.mean([kendalltau(x[first == v], y[first == v]).statistic for v in np.unique(first)])
    assert per_axis["first"] == pytest.approx(expected_first)
    assert per_axis["second"] == pytest.approx(expected_second)
    assert overall == pytest.approx((expected_first + expected_second) / 2)


def test_the_table_shows_the_measures_and_says_when_the_cells_are_too_few(grid, tmp_path, capsys):
    import shutil

    from landscape.ablations.tables import regenerate

    spec_file, shared = grid
    results = tmp_path / "results"
    shutil.copytree(shared, results)
    (results / "grid" / "quick" / "measures.h5").unlink(missing_ok=True)
    code, _, err = cli("ablate", "measure", spec_file, "--preset", "quick", "--results", results, "--measures",
                       "worst,gap,norms", "--rho", "0.01", "--images", "32", "--test-images", "32", "--steps", "1",
                       "--device", "cpu", capsys=capsys)
    assert code in (0, None), err
    written, _, _ = regenerate([load_spec(spec_file)], "quick", results)
    assert results / "grid" / "quick" / "correlations.md" in written
    text = (results / "grid" / "quick" / "correlations.md").read_text()
    assert "only 4 points: too few" in text and "sharpness_worst_rho0.01" in text
    from landscape.views.report import Page, measures_section

    page = Page("measures")
    measures_section(page, results / "grid" / "quick" / "measures.h5", ["activation", "batch_size"])
    assert "Does the landscape explain the ablation?" in page.html() and "too few" in page.html()


def test_the_seed_to_seed_barrier_of_a_cell_is_a_measure(tmp_path, capsys):
    from landscape.connectivity.connect import connect
    from landscape.commands.sources import ImageSet, snapshot_model
    from landscape.files.run_file import read_run
    from landscape.files.weights_file import weights_of_run
    import torch

    spec_file = tmp_path / "seeds.toml"
    spec_file.write_text(GRID_SPEC.split("[[axes]]\nname = \"batch_size\"")[0] + "[presets.quick]\nepochs = 1\n")
    spec = load_spec(spec_file)
    for job in plan(spec, "quick", 2, tmp_path / "results"):
        run_job(job, threads=1)
    code, _, err = cli("ablate", "measure", spec_file, "--preset", "quick", "--results", tmp_path / "results",
                       "--measures", "barrier,norms", "--images", "64", "--test-images", "32", "--device", "cpu",
                       capsys=capsys)
    assert code in (0, None), err
    table = read_measures(tmp_path / "results" / "seeds" / "quick" / "measures.h5")
    assert len(table.cells) == 4
    relu = [i for i, c in enumerate(table.cells) if table.info[c]["activation"] == "relu"]
    assert np.isnan(table.values["barrier_loss"][relu[1]])  # a pair's barrier is stored once, in its first seed
    runs = [read_run(p) for p in sorted((tmp_path / "results" / "seeds" / "quick").glob("activation-relu_seed*.h5"))
            if not p.name.endswith(".weights.h5")]
    models = [snapshot_model(r, weights_of_run(r), 0, weights_of_run(r).epochs[-1], torch.device("cpu")) for r in runs]
    images = ImageSet.of_run(runs[0], torch.device("cpu"))
    found = connect(models[0], models[1], images.batches(images.split("train", 64), images.batch_size), points=11)
    assert table.values["barrier_loss"][relu[0]] == pytest.approx(found.barriers["line"]["train"]["loss"], rel=1e-6)


def test_ablate_measure_takes_the_data_threads_and_quiet_options_of_ablate_run(tmp_path, cifar_root, capsys):
    """A grid trained on data that has since moved is measured with --data-root, as `ablate run` takes it."""
    moved = tmp_path / "moved"
    moved.symlink_to(cifar_root, target_is_directory=True)
    spec_file = tmp_path / "real.toml"
    spec_file.write_text(GRID_SPEC.replace('dataset = "synthetic"', f'dataset = "cifar10"\ndata_root = "{moved}"')
                         .replace('values = [32, 64]', 'values = [32]').replace('values = ["relu", "silu"]',
                                                                             'values = ["relu"]'))
    for job in plan(load_spec(spec_file), "quick", 1, tmp_path / "results"):
        run_job(job, threads=1)
    moved.unlink()  # the data moved since training
    common = ["--preset", "quick", "--results", tmp_path / "results", "--measures", "norms,gap", "--images", "32",
              "--test-images", "32", "--device", "cpu"]
    code, _, err = cli("ablate", "measure", spec_file, *common, capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(moved) in err
    code, out, err = cli("ablate", "measure", spec_file, *common, "--data-root", cifar_root, "--threads", "1",
                         "--quiet", capsys=capsys)
    assert code in (0, None) and out == "" and err == "", err
    assert read_measures(tmp_path / "results" / "real" / "quick" / "measures.h5").done.all()
