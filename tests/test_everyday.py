"""Everyday use on real machines: threads honoured and recorded, Ctrl-C stops an ablation, progress off a
terminal, partial files said to be partial, and an install that adds no generic top-level modules."""
import os
import re
import signal
import subprocess
import sys

import h5py
import pytest

from tests.conftest import HANG_GUARD, REPO, read_until, wait_for
from tests.test_cli import landscape

SPEC = '''
title = "test: three widths"
source = "test"
metrics = ["best_test_acc"]
[base]
model = "vgg_bn"
dataset = "synthetic"
train_subset = 256
batch_size = 32
lrs = [1e-3]
epochs = 4
device = "cpu"
[[axes]]
name = "width"
values = [0.0625, 0.09375, 0.125]
'''


@pytest.fixture(scope="module")
def snap(tmp_path_factory, tiny_config):
    from landscape.training.runner import train

    return train(tiny_config(snapshot_every=1, epochs=3), tmp_path_factory.mktemp("every") / "snap.h5",
                 progress=False)


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "landscape", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=HANG_GUARD, **kwargs)


def test_threads_are_honoured_and_recorded(snap, tmp_path):
    commands = {"run": ("--dataset", "synthetic", "--train-subset", "64", "--width", "0.0625", "--epochs", "1",
                        "--lrs", "1e-3", "--quiet"),
                "surface": (snap, "--lr", "1e-3", "--grid", "-1:1:3", "--images", "32"),
                "hessian": (snap, "--lr", "1e-3", "--top-k", "1", "--max-steps", "4", "--images", "32")}
    processes = {name: subprocess.Popen([sys.executable, "-m", "landscape", name, *map(str, args), "--device", "cpu",
                                         "--threads", "1", "--out", str(tmp_path / f"{name}.h5")], cwd=REPO,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name, args in commands.items()}  # one thread each: the three side by side
    for name, process in processes.items():
        _, err = process.communicate(timeout=HANG_GUARD)
        assert process.returncode == 0, err
        with h5py.File(tmp_path / f"{name}.h5") as f:
            assert f.attrs["threads"] == 1
        if name != "run":
            assert ("points (" if name == "surface" else "HVPs (") in err  # progress lines off a terminal


def test_ctrl_c_stops_an_ablation_after_saving_the_running_cell_and_the_rerun_resumes(tmp_path):
    spec = tmp_path / "three.toml"
    spec.write_text(SPEC)
    results = tmp_path / "results"
    command = [sys.executable, "-m", "landscape", "ablate", "run", str(spec), "--preset", "quick", "--results",
               str(results), "--quiet"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: list(results.rglob("*.ckpt")), process)  # the first cell has finished an epoch
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=HANG_GUARD)
    assert process.returncode == 1 and "Traceback" not in err
    assert "interrupted" in err and "rerun the same" in err and "landscape run --resume" not in err
    # On a loaded machine the first cell may end before the signal lands; then the next one is the running cell.
    finished = int(re.search(r"(\d+) trained", out).group(1))
    assert finished < 3 and "1 interrupted" in out, out
    files = sorted(p.name for p in results.rglob("*_seed0.h5"))
    assert len(files) == finished + 1 and len(list(results.rglob("*.ckpt"))) == 1  # no further cell started
    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD)
    assert rerun.returncode == 0 and "1 resumed" in rerun.stdout, rerun.stderr
    assert f"{2 - finished} trained" in rerun.stdout and f"{finished} skipped" in rerun.stdout, rerun.stdout


def test_a_partial_hessian_file_is_said_to_be_partial(snap, tmp_path, capsys):
    command = [sys.executable, "-m", "landscape", "hessian", str(snap), "--lr", "all", "--epoch", "all",
               "--top-k", "1", "--max-steps", "16", "--tol", "1e-9", "--images", "128", "--device", "cpu", "--out",
               str(tmp_path / "h.h5")]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    seen = read_until(process.stderr, "hessian: lr=")  # the first measurement is in the file
    process.send_signal(signal.SIGINT)
    rest = process.communicate(timeout=HANG_GUARD)[1]
    assert process.returncode == 1 and "keeps them (status interrupted)" in rest, seen + rest
    code, out, _ = landscape("info", tmp_path / "h.h5", capsys=capsys)
    assert "partial" in out and "not measured" in out
    code, out, err = landscape("plot", tmp_path / "h.h5", "--out", tmp_path / "fig", capsys=capsys)
    assert code in (0, None), err
    from landscape.files.hessian_file import read_hessian
    from landscape.views.curvature_plots import partial_note

    assert "partial" in partial_note([read_hessian(tmp_path / "h.h5")])


def test_the_install_adds_no_generic_top_level_modules(tmp_path):
    for module in ("cli", "ablations"):
        done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=tmp_path, capture_output=True)
        assert done.returncode != 0, f"`import {module}` works outside the repository"
    done = subprocess.run([sys.executable, "-c", "import landscape.cli.main, landscape.ablations.spec"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_surface_and_its_figures_start_without_torchs_compiler_sympy_or_scipy_stats(tiny_run, tmp_path):
    """Imports that once took 1-3 s of every command's start stay out of a surface command (with its figures):
    torch._dynamo (imported by a weight initialiser's `normal_` on the meta device), sympy (by a meta `empty_like`)
    and scipy.stats (by seaborn)."""
    code = ("import runpy, sys\n"
            f"sys.argv = ['landscape', 'surface', {str(tiny_run)!r}, '--lr', '1e-3', '--grid', '-1:1:3', '--images',"
            f" '32', '--out', {str(tmp_path / 's.h5')!r}, '--quiet']\n"
            "try:\n    runpy.run_module('landscape', run_name='__main__')\nexcept SystemExit as exc:\n"
            "    assert exc.code in (0, None), exc.code\n"
            "print(sorted(m for m in ('torch._dynamo', 'sympy', 'scipy.stats', 'seaborn') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "MPLBACKEND": "Agg"}, timeout=HANG_GUARD)
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(tmp_path.glob("s_*contour.png")) and done.stdout.strip() == "[]", done.stdout


def test_hessian_images_beyond_the_run_and_unconverged_eigenvalues_are_said(snap, tmp_path, capsys):
    code, _, err = landscape("hessian", snap, "--lr", "1e-3", "--images", "999999", "--device", "cpu", "--out",
                             tmp_path / "h.h5", capsys=capsys)
    assert code == 2 and "exceeds the 256 train images" in err
    code, out, err = landscape("hessian", snap, "--lr", "1e-3", "--top-k", "1", "--max-steps", "1", "--device",
                               "cpu", "--out", tmp_path / "h1.h5", capsys=capsys)
    assert code in (0, None) and "NOT CONVERGED" in err
    code, out, _ = landscape("info", tmp_path / "h1.h5", capsys=capsys)
    assert "NO" in out and "the first 256 images" in out
    code, out, err = landscape("hessian", snap, "--lr", "1e-3", "--top-k", "1", "--max-steps", "4", "--device",
                               "cpu", "--quiet", "--out", tmp_path / "h2.h5", capsys=capsys)
    assert code in (0, None) and out == "" and err == ""  # --quiet: nothing but errors


def run_printed(line: str, **kwargs):
    """Run a `landscape ...` line exactly as printed (with this interpreter)."""
    import shlex

    words = shlex.split(line)
    assert words[0] == "landscape", line
    return subprocess.run([sys.executable, "-m", "landscape", *words[1:]], capture_output=True, text=True, cwd=REPO,
                          timeout=HANG_GUARD, **kwargs)


@pytest.mark.parametrize("command", ["hessian", "surface"])
def test_ctrl_c_stops_within_a_product_or_point_and_the_printed_resume_line_finishes(snap, tmp_path, command, capsys):
    out = tmp_path / f"{command}.h5"
    args = {"hessian": ("--lr", "3e-4", "--top-k", "1", "--max-steps", "150", "--tol", "1e-12", "--images", "128"),
            "surface": ("--lr", "3e-4", "--dims", "1", "--grid", "-1:1:200", "--images", "32")}[command]
    process = subprocess.Popen([sys.executable, "-m", "landscape", command, str(snap), *args, "--device", "cpu",
                                "--threads", "1", "--out", str(out)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    read_until(process.stderr, "the first")  # one product (one point) is done: the measurement is under way
    process.send_signal(signal.SIGINT)
    rest = process.communicate(timeout=HANG_GUARD)[1]
    assert process.returncode == 1 and "Traceback" not in rest, rest
    line = rest.strip().splitlines()[-1]
    assert "resume with: landscape" in line and ("--lr 0.0003" in line or "--lr 3e-4" in line), line
    code, info, _ = landscape("info", out, capsys=capsys)
    assert "interrupted" in info
    if command == "hessian":  # a single measurement stopped within its products: nothing done, nothing wrong kept
        with h5py.File(out) as f:
            assert f["done"][...].sum() == 0
        resumed = run_printed(line.split("resume with: ")[1].replace("--max-steps 150", "--max-steps 8"))
        assert resumed.returncode == 2 and "other options" in resumed.stderr  # other options are refused
    resumed = run_printed(line.split("resume with: ")[1])
    assert resumed.returncode == 0, resumed.stderr
    with h5py.File(out) as f:
        assert f.attrs["status"] == "complete"


def test_a_killed_surface_leaves_no_lock_that_blocks_and_shows_as_interrupted(snap, tmp_path, capsys):
    out = tmp_path / "killed.h5"
    command = [sys.executable, "-m", "landscape", "surface", str(snap), "--lr", "3e-4", "--dims", "1", "--grid",
               "-1:1:200", "--images", "32", "--device", "cpu", "--threads", "1", "--out", str(out)]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    read_until(process.stderr, "the first")
    wait_for(out.exists, process)
    process.kill()
    process.wait(timeout=HANG_GUARD)
    code, info, _ = landscape("info", out, capsys=capsys)
    assert "interrupted" in info and "running" not in info
    again = subprocess.run(command[:-2] + ["--resume", "--out", str(out), "--quiet"],
                           cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD)
    assert again.returncode == 0, again.stderr


def run_file_numbers(path) -> dict:
    """Every dataset of a run file that training computes (not the wall times), by name."""
    numbers = {}

    def keep(name, item):
        if isinstance(item, h5py.Dataset) and "time" not in name and "seconds" not in name:
            numbers[name] = item[...]

    with h5py.File(path) as f:
        f.visititems(keep)
        numbers["threads"] = f.attrs["threads"]
    return numbers


def test_the_same_command_gives_identical_files_on_a_quiet_and_a_busy_machine(tmp_path):
    """The default threads do not follow the load: two CPU-bound processes beside the second run change nothing."""
    import numpy as np

    import os

    machine = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # torch's own choice, as a user has

    def run(out):
        done = cli("run", "--dataset", "synthetic", "--train-subset", "128", "--width", "0.125", "--epochs", "2",
                   "--lrs", "1e-3,3e-4", "--batch-size", "32", "--device", "cpu", "--quiet", "--out", out, env=machine)
        assert done.returncode == 0, done.stderr

    run(tmp_path / "quiet.h5")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        run(tmp_path / "busy.h5")
    finally:
        for process in busy:
            process.kill()
            process.wait()
    quiet, loaded = run_file_numbers(tmp_path / "quiet.h5"), run_file_numbers(tmp_path / "busy.h5")
    assert quiet.keys() == loaded.keys() and "train/loss" in quiet
    for name in quiet:
        assert np.array_equal(quiet[name], loaded[name], equal_nan=quiet[name].dtype.kind == "f"), name


def test_the_default_threads_ignore_the_load_and_auto_follows_it(monkeypatch):
    from landscape.engine import devices

    monkeypatch.setattr(devices, "TORCH_DEFAULT_THREADS", 4)  # a 4-core machine whose cores are all busy elsewhere
    monkeypatch.setattr(devices, "usable_cores", lambda: 4)
    monkeypatch.setattr(devices, "cores_busy_elsewhere", lambda: 3.6)
    monkeypatch.setattr(devices, "idle_cores", lambda: 1)
    assert devices.resolve_threads(0) == devices.resolve_threads(None) == 4
    assert devices.resolve_threads("auto") == 1 and devices.resolve_threads(3) == 3
    assert "4 core(s) busy elsewhere: --threads 1 (or auto)" in devices.busy_hint(4)
    monkeypatch.setattr(devices, "cores_busy_elsewhere", lambda: 0.2)
    monkeypatch.setattr(devices, "idle_cores", lambda: 4)
    assert devices.busy_hint(4) is None


def test_threads_auto_is_accepted_and_a_bad_value_is_one_line(tmp_path, capsys):
    code, _, _ = landscape("run", "--dataset", "synthetic", "--train-subset", "64", "--width", "0.0625", "--epochs",
                           "1", "--lrs", "1e-3", "--device", "cpu", "--threads", "auto", "--quiet", "--out",
                           tmp_path / "auto.h5", capsys=capsys)
    assert code in (0, None)
    with h5py.File(tmp_path / "auto.h5") as f:
        assert f.attrs["threads"] >= 1
    code, _, err = landscape("run", "--threads", "many", "--out", tmp_path / "bad.h5", capsys=capsys)
    assert code == 2 and "--threads 'many'" in err and "auto" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad.h5").exists()


def test_no_test_finds_processes_by_name():
    """A test signals only processes it started (their process tree), never a user's jobs found by name."""
    import re

    by_name = re.compile(r"pg[r]ep\s+-f|pk[i]ll|kil[l]all|process_[i]ter")  # brackets: this line matches none
    for path in (REPO / "tests").glob("*.py"):
        assert not by_name.search(path.read_text()), path.name


def test_the_sharpness_images_default_adapts_to_a_small_subset(tmp_path, capsys):
    out = tmp_path / "sharp.h5"
    code, _, err = landscape("run", "--dataset", "synthetic", "--train-subset", "256", "--width", "0.0625", "--epochs",
                             "1", "--lrs", "1e-3", "--batch-size", "64", "--sharpness-every", "2", "--device", "cpu",
                             "--threads", "1", "--quiet", "--out", out, capsys=capsys)
    assert code in (0, None), err
    with h5py.File(out) as f:
        assert f["sharpness"].attrs["images"] == 256  # all of the subset, fewer than the 2048 of the default
    code, stdout, _ = landscape("info", out, capsys=capsys)
    assert "on 256 images (the default, 2048 or all training images when fewer)" in stdout
    code, _, err = landscape("run", "--dataset", "synthetic", "--train-subset", "256", "--sharpness-every", "2",
                             "--sharpness-images", "512", "--out", tmp_path / "bad.h5", "--quiet", capsys=capsys)
    assert code == 2 and "--sharpness-images 512" in err and not (tmp_path / "bad.h5").exists()


def test_a_signal_caught_between_two_cells_stops_the_next_cell_at_its_first_safe_point():
    from landscape.stopping import StopSignals

    before = signal.getsignal(signal.SIGINT)
    with StopSignals() as command:
        signal.raise_signal(signal.SIGINT)  # lands while no cell runs: only the command's block sees it
        assert command.received == signal.SIGINT
        with StopSignals() as cell:
            assert cell.received == signal.SIGINT  # the next cell stops at once instead of running to its end
    with StopSignals() as command:
        with StopSignals():
            signal.raise_signal(signal.SIGTERM)
        assert command.received == signal.SIGTERM  # the inner block passes its signal on
    assert signal.getsignal(signal.SIGINT) is before
