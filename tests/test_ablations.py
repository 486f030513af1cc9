"""Ablation specs: every spec validates, reference numbers match the reports, runs resume, tables read back."""
import csv
import hashlib
import signal
import subprocess
import sys

import h5py
import pytest

from landscape.ablations.runner import cell_status, plan
from landscape.ablations.spec import load_spec, spec_paths
from landscape.ablations.tables import regenerate
from landscape.cli.main import main
from landscape.errors import UsageError
from tests.conftest import wait_for

SPECS = spec_paths()


def test_there_is_a_spec_per_report_table():
    assert len(SPECS) >= 28
    reports = {load_spec(p).source.split(",")[0] for p in SPECS if load_spec(p).study is None}
    assert reports == {"report 000", "report 001", "report 002", "report 003", "report 004"}


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_spec_validates_under_both_presets(path):
    spec = load_spec(path)
    assert spec.cells and spec.metrics
    for cell in spec.cells:
        for preset in ("full", "quick", "cpu"):
            spec.config(cell, preset).validate()
    quick = spec.config(spec.cells[0], "quick")
    assert quick.epochs <= 7 and (quick.train_subset or 10**9) <= 1024  # CPU-sized
    assert quick.dataset in ("cifar10", "synthetic")


def reference(name, label, metric):
    spec = load_spec(spec_paths([name])[0])
    return next(c for c in spec.cells if c.label == label).reference[metric]


@pytest.mark.parametrize("name,label,metric,value", [
    ("cifar10_resnet18_stem", "Original ResNet-18", "final_test_acc", 69.55),      # report 004 1.3.2
    ("cifar10_resnet18_regularization", "Adjusted+DA+Dropout(0.1)", "final_test_acc", 88.27),
    ("cifar10_resnet18_regularization", "Adjusted+ES", "wall_time", 142.52),
    ("cifar10_resnet18_label_smoothing", "0.2", "final_test_acc", 91.64),
    ("cifar10_resnet18_batch_size", "16", "wall_time", 596.97),
    ("imagenette_resnet101_batch_size", "40", "best_test_acc", 94.29),              # report 000
    ("imagenette_resnet18_ranger_epochs", "526", "best_test_acc", 94.5223),         # report 001 Table 1
    ("imagenet64_resnet18_norm", "in", "best_test_acc", 6.58),                      # report 002 3.2
    ("imagenet64_resnet18_residual", "False", "best_test_acc", 41.84),
    ("imagenette_resnet_depth_sgd", "resnet50", "best_test_acc", 93.50),            # report 003 Table 1
    ("imagenette_resnet_depth_sgd", "resnet152", "model_size_mb", 230),
    ("imagenette_resnet18_weight_decay", "0.005", "best_test_acc", 93.02),          # report 003 Table 3
])
def test_reference_numbers_match_the_reports(name, label, metric, value):
    assert reference(name, label, metric) == value


SMALL_SPEC = '''
title = "test: activation on a CIFAR subset"
source = "report 004, test"
metrics = ["best_test_acc", "final_test_acc"]
[base]
model = "resnet20"
dataset = "cifar10"
width = 0.25
lrs = [0.05]
optimizer = "sgd"
train_subset = 1024
batch_size = 128
epochs = 2
[[axes]]
name = "activation"
values = ["relu", "silu", "leaky_relu"]
[[reference]]
where = { activation = "silu" }
best_test_acc = 89.57
[presets.quick]
epochs = 2
'''


@pytest.mark.slow
def test_quick_spec_runs_resumes_and_tables_read_back(tmp_path, cifar_root):
    spec_file = tmp_path / "small.toml"
    spec_file.write_text(SMALL_SPEC)
    results = tmp_path / "results"
    command = [sys.executable, "-m", "landscape", "ablate", "run", str(spec_file), "--preset", "quick",
               "--data-root", str(cifar_root), "--results", str(results)]
    spec = load_spec(spec_file)
    paths = [job.path for job in plan(spec, "quick", 1, results)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: cell_status(paths[0]) == "complete", process)
    process.send_signal(signal.SIGKILL)  # interrupted after the first cell
    process.wait()
    first = hashlib.sha256(paths[0].read_bytes()).hexdigest()
    result = subprocess.run(command + ["--jobs", "2"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "1 skipped" in result.stdout and "0 failed" in result.stdout
    assert hashlib.sha256(paths[0].read_bytes()).hexdigest() == first  # not redone
    assert all(cell_status(p) == "complete" for p in paths)

    written, done, missing = regenerate([spec], "quick", results)
    assert (done, missing) == (3, 0)
    with open(results / "small" / "quick" / "table.csv") as f:
        rows = list(csv.DictReader(f))
    for row, path in zip(rows, paths):
        with h5py.File(path, "r") as run:  # read back independently
            acc = run["epoch/test_acc"][0]
        assert float(row["best_test_acc_mean"]) == pytest.approx(100 * acc.max(), abs=1e-4)
        assert float(row["final_test_acc_mean"]) == pytest.approx(100 * acc[-1], abs=1e-4)
    silu = next(r for r in rows if r["activation"] == "silu")
    assert float(silu["best_test_acc_reported"]) == 89.57
    assert silu["best_test_acc_difference"] == "nan"  # a quick run is not compared with the report's full one
    assert silu["best_test_acc_std"] == "nan" and silu["best_test_acc_n"] == "1"
    from landscape.ablations.results import collect
    from landscape.ablations.tables import table_cells

    header, shown, machine = table_cells(spec, collect(spec, "quick", results), "full")
    first_metric = len(spec.axes) + 5 * spec.metrics.index("best_test_acc")  # reported, mean, std, n, difference
    difference = machine[[r[0] for r in machine].index("silu")][first_metric + 4]
    assert difference == pytest.approx(float(silu["best_test_acc_mean"]) - 89.57)  # shown for the full preset
    table = (results / "small" / "quick" / "table.md").read_text()
    assert "| silu | 89.57 |" in table and "3 of 3 cells done" in table
    rows_and_header = [line for line in table.splitlines() if line.startswith("| ")]
    assert "preset `quick` (changes" in table and "not a landscape run" not in table
    assert "difference" not in rows_and_header[0] and not any("±" in line for line in rows_and_header)
    assert r"\toprule" in (results / "small" / "quick" / "table.tex").read_text()
    assert (results / "index_quick.md").exists()


def test_table_on_empty_results_says_what_is_missing(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ablate", "table", "cifar10_resnet18_stem", "--preset", "quick", "--results", str(tmp_path)])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0
    assert "2 of 2 cells have no results yet" in err
    table = (tmp_path / "cifar10_resnet18_stem" / "quick" / "table.md").read_text()
    assert table.count("missing") >= 2 and "0 of 2 cells done; 2 missing" in table


def test_horizon_cells_share_one_run_file(tmp_path):
    spec = load_spec(spec_paths(["imagenette_resnet18_ranger_epochs"])[0])
    assert len(plan(spec, "quick", 1, tmp_path)) == 1
    assert spec.config(spec.cells[0], "quick").epochs == 7 and spec.config(spec.cells[0], "full").epochs == 526


@pytest.mark.parametrize("text,match", [
    ('title="t"\nsource="s"\nmetrics=["best_test_acc"]\n[base]\nmodle = "vgg"\n[[cells]]\nname="a"\n', r"bad\.toml:5: modle"),
    ('title="t"\nsource="s"\nmetrics=["best_test_acc"]\n[base]\nepochs = "many"\n[[cells]]\nname="a"\n', r":5: epochs"),
    ('title="t"\nsource="s"\nmetrics=[]\n[base]\n[[cells]]\nname="a"\n', r":3: metrics"),
    ('title="t"\nsource="s"\nmetrics=["accuracy"]\n[base]\n[[cells]]\nname="a"\n', "unknown metric"),
    ('title="t"\nsource="s"\nmetrics=["best_test_acc"]\n[base]\n[[axes]]\nname="batch_size"\nvalues=[32, 64]\n'
     '[[reference]]\nwhere = { batch_size = 48 }\nbest_test_acc = 1.0\n', r":9: where: reference .* matches 0 cells"),
    ('title="t"\nsource="s"\nmetrics=["best_test_acc"]\n[base]\n[[axes]]\nname="batch_size"\nvalues=["big"]\n',
     "batch_size"),
    ('title="t"\nsource="s"\nmetrics=["best_test_acc"]\n[base]\n[[cells]]\nname="a"\nset = { norm = "group", model = "resnet20" }\n',
     "cell 'a'.*--norm 'group'"),
])
def test_spec_errors_name_file_line_and_key(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=match):
        load_spec(path)


def test_ablate_usage_errors(capsys):
    for argv in (["ablate", "run"], ["ablate", "run", "no_such_spec"], ["ablate", "table", "x", "--all"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1


def test_a_cell_line_is_printed_even_when_tqdm_loses_its_lock(monkeypatch, capsys):
    """Seen once on a busy machine at Ctrl-C: tqdm's class lock vanished while another thread closed the last bar, and
    the line about the interrupted cells became a traceback."""
    from landscape.ablations import runner

    def broken(*args, **kwargs):
        raise AttributeError("type object 'tqdm' has no attribute '_lock'")

    monkeypatch.setattr(runner.tqdm, "write", broken)
    runner.print_err("cell 3 interrupted")
    assert capsys.readouterr().err == "cell 3 interrupted\n"
