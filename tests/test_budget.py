"""Every long command times its first unit of work and refuses, in one line with exit status 2, work estimated
beyond --budget-hours (48 by default; the option confirms a longer job): nothing is left on disk, no lock."""
import shutil

import pytest

from tests.test_cli import checksums, landscape

ABSURD = [
    ("surface", "--dims", "1", "--grid=-1:1:1000000", "--images", "64", "--budget-hours", "0.001"),
    ("hessian", "--trace", "--trace-samples", "1000000000", "--images", "64"),
    ("measure", "--steps", "1000000000", "--measures", "worst", "--images", "64", "--test-images", "64"),
]


@pytest.mark.parametrize("command", ABSURD, ids=[c[0] for c in ABSURD])
def test_work_beyond_the_budget_is_refused_with_its_estimate(tiny_run, tmp_path, command, capsys):
    run = tmp_path / tiny_run.name
    shutil.copy(tiny_run, run)
    if tiny_run.with_name(tiny_run.stem + ".weights.h5").exists():
        shutil.copy(tiny_run.with_name(tiny_run.stem + ".weights.h5"), tmp_path)
    before = checksums(tmp_path)
    name, *options = command
    code, _, err = landscape(name, run, "--lr", "1e-3", "--device", "cpu", "--quiet", *options,
                             "--out", tmp_path / "out.h5", capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "--budget-hours" in err and "about" in err
    assert checksums(tmp_path) == before  # no output, no lock, the inputs untouched


def test_connect_beyond_the_budget_is_refused_and_a_larger_budget_runs(tiny_run, tmp_path, capsys):
    common = ("connect", tiny_run, tiny_run, "--lr", "1e-3", "--lr-b", "3e-4", "--device", "cpu", "--quiet",
              "--images", "64", "--test-images", "64", "--bn-images", "64", "--batch-size", "64")
    code, _, err = landscape(*common, "--points", "10001", "--budget-hours", "1e-6", "--out", tmp_path / "c.h5",
                             capsys=capsys)
    assert code == 2 and "--budget-hours" in err and not list(tmp_path.iterdir())
    code, _, err = landscape(*common, "--points", "3", "--out", tmp_path / "c.h5", capsys=capsys)
    assert code in (0, None), err


def test_a_resumed_surface_refused_over_budget_stays_resumable(tiny_run, tmp_path, capsys):
    """The resumed file is not removed: it goes back to interrupted, its finished points untouched."""
    import h5py
    import numpy as np

    out = tmp_path / "s.h5"
    common = ("surface", tiny_run, "--lr", "1e-3", "--device", "cpu", "--quiet", "--grid=-1:1:5", "--images", "64")
    assert landscape(*common, "--out", out, capsys=capsys)[0] in (0, None)
    with h5py.File(out, "a") as f:  # as if stopped after two points
        f["done"][...] = False
        f["done"][0, :2] = True
        f.attrs["status"] = "interrupted"
        kept = f["loss"][0, :2].copy()
    code, _, err = landscape(*common, "--resume", "--budget-hours", "1e-9", "--out", out, capsys=capsys)
    assert code == 2 and "--budget-hours" in err
    with h5py.File(out) as f:
        assert f.attrs["status"] == "interrupted" and f["done"][...].sum() >= 2
        assert np.array_equal(f["loss"][0, :2], kept)
    assert landscape(*common, "--resume", "--out", out, capsys=capsys)[0] in (0, None)  # and it finishes
    with h5py.File(out) as f:
        assert f.attrs["status"] == "complete" and f["done"][...].all()
