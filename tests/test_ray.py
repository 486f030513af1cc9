"""Ablation grids on Ray (a local Ray with 2 CPUs): same results as in-process, retries, Ctrl-C, resources."""
import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

from landscape.ablations.runner import cell_status, plan
from landscape.ablations.spec import load_spec
from tests.conftest import HANG_GUARD, command_line, descendants, wait_for
from tests.test_cli import checksums, landscape

pytestmark = pytest.mark.xdist_group("ray-cells")  # one local Ray at a time

pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[dev]'")

SPEC = '''
title = "test: widths on the synthetic set"
source = "test"
metrics = ["best_test_acc"]
[base]
model = "vgg_bn"
dataset = "synthetic"
train_subset = 256
batch_size = 32
lrs = [1e-3]
epochs = 3
device = "cpu"
[[axes]]
name = "width"
values = [0.0625, 0.125]
'''


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(SPEC)
    return path


def command(spec_file, results, *extra):
    return [sys.executable, "-m", "landscape", "ablate", "run", str(spec_file), "--preset", "quick", "--results",
            str(results), "--quiet", *extra]


def losses(results, spec_file):
    out = {}
    for job in plan(load_spec(spec_file), "quick", 1, results):
        with h5py.File(job.path, "r") as f:
            out[job.cell] = f["train/loss"][...]
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same grid with the in-process executor, one cell after another, 2 torch threads each (as the Ray cells
    with --cpus-per-cell 2: equal results need equal thread counts); trained once for the module."""
    folder = tmp_path_factory.mktemp("reference")
    spec_file, results = folder / "grid.toml", folder / "local"
    spec_file.write_text(SPEC)
    subprocess.run(command(spec_file, results, "--threads", "2"), check=True, capture_output=True, timeout=HANG_GUARD)
    return losses(results, spec_file)


def test_ray_gives_the_in_process_results_with_fractional_gpus_passed_on(spec_file, tmp_path, reference):
    results = tmp_path / "ray"
    env = {**os.environ, "LANDSCAPE_RAY_NUM_GPUS": "1"}  # a GPU resource on this GPU-less machine
    done = subprocess.run(command(spec_file, results, "--executor", "ray", "--cpus-per-cell", "2",
                                  "--gpus-per-cell", "0.25"), capture_output=True, text=True, timeout=HANG_GUARD, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("[CPU 2, GPU 0.25]") == 2  # what the scheduler gave each task
    assert "cells: 2 done, 0 running, 0 waiting, 0 failed" in done.stderr
    mine = losses(results, spec_file)
    assert all(np.array_equal(mine[cell], reference[cell]) for cell in reference)
    assert not list(results.rglob("*.ckpt")) and not list(results.rglob(".*.tmp"))


def test_a_killed_worker_is_retried_and_resumes_to_the_identical_result(spec_file, tmp_path, reference):
    results = tmp_path / "ray"
    process = subprocess.Popen(command(spec_file, results, "--executor", "ray", "--cpus-per-cell", "2"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = []

    def worker_of_a_checkpointed_cell_killed() -> bool:
        """The awaited event: an unfinished cell has shipped a checkpoint, and the one task worker of this command's
        own Ray (2 CPUs, 2 per cell: one cell at a time, so it is that cell's) is killed."""
        for checkpoint in results.rglob("*.ckpt"):
            run = checkpoint.with_name(checkpoint.name[:-len(".ckpt")])
            workers = [pid for pid in descendants(process.pid) if "ray::cell_task" in command_line(pid)]
            if len(workers) == 1 and cell_status(run) != "complete" and checkpoint.exists():
                os.kill(workers[0], signal.SIGKILL)
                killed.append(run)
                return True
        return False

    wait_for(worker_of_a_checkpointed_cell_killed, process)
    out, err = process.communicate(timeout=HANG_GUARD)
    assert process.returncode == 0, err[-2000:]
    assert "resumed" in err  # the retry went on from the shipped checkpoint, it did not start over
    mine = losses(results, spec_file)
    assert all(np.array_equal(mine[cell], reference[cell]) for cell in reference)


def test_ctrl_c_keeps_finished_cells_and_a_rerun_trains_the_rest(spec_file, tmp_path):
    results = tmp_path / "ray"
    paths = [job.path for job in plan(load_spec(spec_file), "quick", 1, results)]
    process = subprocess.Popen(command(spec_file, results, "--executor", "ray", "--cpus-per-cell", "2"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any(cell_status(p) == "complete" for p in paths), process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=HANG_GUARD)
    finished = [p for p in paths if cell_status(p) == "complete"]
    # exit 0 only when the last cell finished before the signal landed (a loaded machine): then all are complete
    assert (process.returncode != 0 or len(finished) == len(paths)) and "Traceback" not in err, err
    kept = checksums(finished[0].parent)
    rerun = subprocess.run(command(spec_file, results, "--executor", "ray", "--cpus-per-cell", "2"),
                           capture_output=True, text=True, timeout=HANG_GUARD)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{len(finished)} skipped" in rerun.stdout
    assert all(cell_status(p) == "complete" for p in paths)
    after = checksums(finished[0].parent)
    assert all(after[p.name] == kept[p.name] for p in finished)  # finished cells untouched


def test_shared_results_are_written_by_the_tasks(spec_file, tmp_path):
    results = tmp_path / "shared"
    done = subprocess.run(command(spec_file, results, "--executor", "ray", "--cpus-per-cell", "1", "--shared-results"),
                          capture_output=True, text=True, timeout=HANG_GUARD)
    assert done.returncode == 0, done.stderr[-2000:]
    assert all(cell_status(job.path) == "complete" for job in plan(load_spec(spec_file), "quick", 1, results))


def test_missing_ray_and_bad_addresses_are_one_line(spec_file, tmp_path, monkeypatch, capsys):
    for address, message in (("not-an-address", "not host:port"), ("127.0.0.1:9", "no Ray cluster answers")):
        code, _, err = landscape("ablate", "run", spec_file, "--preset", "quick", "--results", tmp_path / "r",
                                 "--executor", "ray", "--address", address, capsys=capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    code, _, err = landscape("ablate", "run", spec_file, "--preset", "quick", "--results", tmp_path / "r",
                             "--executor", "ray", capsys=capsys)
    assert code == 2 and "pip install" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_a_branching_spec_trains_and_measures_its_pairs_on_ray_workers(tmp_path):
    """Parents then children on Ray tasks without shared storage (a child fetches its parent's kept state from
    the driver), then the pairs' barriers measured on Ray workers: equal to `connect` on the two children."""
    from landscape.files.measures_file import read_measures
    from landscape.files.run_file import read_run
    from tests.test_connectivity_studies import BRANCHING, by_hand

    spec_file = tmp_path / "toy_instability.toml"
    spec_file.write_text(BRANCHING.replace("threads = 1\n", ""))
    results = tmp_path / "results"
    done = subprocess.run([sys.executable, "-m", "landscape", "ablate", "run", str(spec_file), "--preset", "full",
                           "--results", str(results), "--quiet", "--executor", "ray"], capture_output=True, text=True,
                          timeout=HANG_GUARD)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 trained, 6 branched" in done.stdout
    spec = load_spec(spec_file)
    child = spec.result_path(results, "full", spec.cells[0], 0)
    assert read_run(child).attrs["parent_file"] == "parent_seed0.h5"
    mid_epoch = read_run(spec.result_path(results, "full", spec.cells[1], 0))  # from a step's state, shipped too
    assert int(mid_epoch.attrs["branch_step"]) == 2 and mid_epoch.status == "complete"
    measured = subprocess.run([sys.executable, "-m", "landscape", "ablate", "measure", str(spec_file), "--preset",
                               "full", "--results", str(results), "--images", "64", "--test-images", "48",
                               "--executor", "ray", "--workers", "2"], capture_output=True, text=True,
                              timeout=HANG_GUARD)
    assert measured.returncode == 0, measured.stderr[-2000:]
    table = read_measures(results / spec.name / "full" / "measures.h5")
    found = by_hand(child, spec.twin_path(results, "full", spec.cells[0], 0), 64, 48)
    assert table.values["barrier_test_loss"][table.cells.index("0 seed0")] == pytest.approx(
        found.barriers["line"]["test"]["loss"], rel=1e-5, abs=1e-8)
    assert table.values["barrier_test_acc"][table.cells.index("2 seed0")] == 0.0
