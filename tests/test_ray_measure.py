"""Surfaces and Hessian spectra on Ray (a local Ray on this machine): the in-process values, a killed worker's
points done again, Ctrl-C and --resume, and bad executor options refused before anything is written."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from landscape.files.hessian_file import read_hessian
from landscape.files.surface_file import read_surface
from tests.conftest import HANG_GUARD, REPO, read_until
from tests.test_cli import checksums, landscape

pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[dev]'")
pytestmark = pytest.mark.xdist_group("ray-measure")  # one at a time: they count and kill workers


@pytest.fixture(scope="module")
def snap(tmp_path_factory, tiny_config):
    """A tiny run with two rates and a snapshot after every epoch (epochs 0, 1, 2)."""
    from landscape.training.runner import train

    return train(tiny_config(snapshot_every=1), tmp_path_factory.mktemp("ray") / "snap.h5", progress=False)


def cli(*args, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "landscape", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=HANG_GUARD, **kwargs)


SURFACE = ("--lr", "1e-3", "--grid", "-1:1:5", "--images", "64", "--device", "cpu", "--threads", "1")
RAY = ("--executor", "ray", "--workers", "2", "--cpus-per-worker", "1", "--points-per-task", "3")


def test_a_surface_on_ray_workers_equals_the_one_in_process_even_when_a_worker_dies(snap, tmp_path, capsys):
    code, _, err = landscape("surface", snap, *SURFACE, "--quiet", "--out", tmp_path / "here.h5", capsys=capsys)
    assert code in (0, None), err
    marker = tmp_path / "killed"
    done = cli("surface", snap, *SURFACE, *RAY, "--out", tmp_path / "ray.h5",
               env={"LANDSCAPE_TEST_KILL_WORKER": f"{marker}:2"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert marker.exists() and "a surface worker died" in done.stderr  # one worker killed itself (SIGKILL)
    here, there = read_surface(tmp_path / "here.h5"), read_surface(tmp_path / "ray.h5")
    assert there.status == "complete" and there.done.all()
    assert np.array_equal(here.loss, there.loss) and np.array_equal(here.acc, there.acc)  # bit-identical
    assert there.attrs["executor"] == "RayExecutor"


def test_ctrl_c_on_the_driver_keeps_the_points_done_and_resume_completes_them(snap, tmp_path, capsys):
    code, _, err = landscape("surface", snap, *SURFACE, "--quiet", "--out", tmp_path / "here.h5", capsys=capsys)
    assert code in (0, None), err
    command = [sys.executable, "-m", "landscape", "surface", str(snap), *SURFACE, "--executor", "ray", "--workers",
               "1", "--points-per-task", "1", "--out", str(tmp_path / "ray.h5")]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    seen = read_until(process.stderr, "points (")  # a progress line: some points have landed
    process.send_signal(signal.SIGINT)
    rest = process.communicate(timeout=HANG_GUARD)[1]
    assert process.returncode == 1 and "resume with" in rest, seen + rest
    part = read_surface(tmp_path / "ray.h5")
    assert part.status == "interrupted" and 0 < part.done.sum() < part.done.size
    done = cli("surface", snap, *SURFACE, *RAY, "--resume", "--out", tmp_path / "ray.h5")
    assert done.returncode == 0, done.stderr[-2000:]
    whole, here = read_surface(tmp_path / "ray.h5"), read_surface(tmp_path / "here.h5")
    assert whole.status == "complete" and np.array_equal(whole.loss, here.loss)


def test_a_hessian_over_two_runs_and_two_snapshots_on_ray_equals_the_one_in_process(snap, tmp_path, capsys):
    common = ("--lr", "all", "--epoch", "all", "--top-k", "2", "--max-steps", "10", "--images", "64", "--trace",
              "--trace-samples", "3", "--device", "cpu", "--threads", "1")
    code, _, err = landscape("hessian", snap, *common, "--quiet", "--out", tmp_path / "here.h5", capsys=capsys)
    assert code in (0, None), err
    done = cli("hessian", snap, *common, "--executor", "ray", "--cpus-per-worker", "1", "--quiet", "--out",
               tmp_path / "ray.h5")
    assert done.returncode == 0, done.stderr[-2000:]
    here, there = read_hessian(tmp_path / "here.h5"), read_hessian(tmp_path / "ray.h5")
    assert here.arrays["eigenvalues"].shape == (2, 3, 2) and there.status == "complete"
    for name in ("eigenvalues", "residuals", "trace", "eigen_hvps"):
        assert np.array_equal(here.arrays[name], there.arrays[name]), name


@pytest.mark.parametrize("extra,expected", [
    (("--executor", "ray", "--address", "127.0.0.1:9"), "no Ray cluster answers"),
    (("--executor", "ray", "--address", "ray://127.0.0.1:9"), "no Ray cluster answers"),
    (("--executor", "ray", "--address", "not-an-address"), "not host:port"),
    (("--executor", "ray", "--gpus-per-worker", "2.5"), "whole GPUs"),
    (("--executor", "ray", "--cpus-per-worker", "512"), "cluster has"),
    (("--workers", "2",), "apply to --executor ray"),
])
def test_bad_executor_options_are_one_line_and_write_nothing(snap, extra, expected):
    before = checksums(snap.parent)
    done = cli("surface", snap, *SURFACE, *extra)
    assert done.returncode == 2 and expected in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert checksums(snap.parent) == before


def test_without_ray_the_option_says_how_to_install_it(snap, tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from landscape.cli.main import main; "
            f"main(['surface', {str(snap)!r}, '--lr', '1e-3', '--executor', 'ray', '--out', {str(tmp_path / 'x.h5')!r}])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=HANG_GUARD)
    assert done.returncode == 2 and "pip install" in done.stderr and not (tmp_path / "x.h5").exists()


def test_the_python_api_takes_the_ray_executor(tmp_path):
    """landscape.surface(..., executor=RayExecutor(...)) on a model of one's own equals the in-process surface."""
    code = '''
import numpy as np, torch
from torch import nn
import landscape
torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
here = landscape.surface(model, (x, y), grid="-1:1:4")
with landscape.RayExecutor(workers=2, cpus_per_worker=1, points_per_task=3) as executor:  # one Ray
    there = landscape.surface(model, (x, y), grid="-1:1:4", executor=executor)
    spectrum = landscape.hessian(model, (x, y), top_k=2, executor=executor)
    assert executor.ray.is_initialized()  # still up between the calls
assert np.array_equal(here.loss, there.loss) and np.array_equal(here.acc, there.acc)
assert np.allclose(spectrum.eigenvalues, landscape.hessian(model, (x, y), top_k=2).eigenvalues, rtol=1e-9)
print("ok")
'''
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=HANG_GUARD,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
