"""Envelopes against numpy, and the HDF5 schema read back with plain h5py."""
import json

import h5py
import numpy as np
import pytest

from landscape.views.analysis import envelope, moving_average
from landscape.errors import UsageError
from landscape.files.run_file import EPOCH_METRICS, SCHEMA_VERSION, RunWriter, read_run


def test_envelope_against_numpy_with_nans():
    rng = np.random.default_rng(0)
    losses = rng.random((4, 50))
    losses[1, 10:] = np.nan  # a run that diverged
    losses[:, 30] = np.nan  # a step no run has
    band = envelope(losses)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        expected_low, expected_high = np.nanmin(losses, axis=0), np.nanmax(losses, axis=0)
    assert np.array_equal(band.low, expected_low, equal_nan=True)
    assert np.array_equal(band.high, expected_high, equal_nan=True)
    assert np.allclose(band.range, expected_high - expected_low, equal_nan=True)
    assert np.isnan(band.range[30])


def test_envelope_stride():
    losses = np.arange(20, dtype=float).reshape(2, 10)
    band = envelope(losses, stride=3)
    assert band.steps.tolist() == [0, 3, 6, 9]
    assert band.low.tolist() == [0, 3, 6, 9] and band.high.tolist() == [10, 13, 16, 19]


def test_moving_average_against_a_loop():
    rng = np.random.default_rng(1)
    values = rng.random((3, 40))
    values[0, 5:9] = np.nan
    window = 4
    expected = np.empty_like(values)
    for r in range(values.shape[0]):
        for s in range(values.shape[1]):
            chunk = values[r, max(0, s - window + 1):s + 1]
            chunk = chunk[np.isfinite(chunk)]
            expected[r, s] = chunk.mean() if chunk.size else np.nan
    assert np.allclose(moving_average(values, window), expected, equal_nan=True)


def make_file(path, lrs=(0.1, 0.01), epochs=2, steps=5):
    writer = RunWriter(path, config_json=json.dumps({"model": "vgg", "epochs": epochs}), lrs=list(lrs),
                       attrs={"model": "vgg"})
    writer.create()
    rng = np.random.default_rng(2)
    written = []
    for epoch in range(epochs):
        losses = rng.random((len(lrs), steps)).astype(np.float32)
        metrics = {k: rng.random(len(lrs)) for k in EPOCH_METRICS}
        writer.append_epoch(step_losses=losses, epoch=epoch, metrics=metrics, wall_time=epoch + 1.0,
                            diverged_step=np.array([-1, 7]), stopped_epoch=np.array([-1, -1]))
        written.append((losses, metrics))
    writer.set_status("complete")
    return written


def test_round_trip_through_plain_h5py(tmp_path):
    path = tmp_path / "run.h5"
    written = make_file(path)
    with h5py.File(path, "r") as f:
        assert f.attrs["schema_version"] == SCHEMA_VERSION and f.attrs["status"] == "complete"
        assert f["lrs"][...].tolist() == [0.1, 0.01]
        assert np.array_equal(f["train/loss"][...], np.concatenate([w[0] for w in written], axis=1))
        assert f["train/epoch"][...].tolist() == [0] * 5 + [1] * 5
        assert np.allclose(f["epoch/test_acc"][:, 1], written[1][1]["test_acc"])
        assert [d.label for d in f["train/loss"].dims] == ["run", "step"]
        assert [d.label for d in f["epoch/test_acc"].dims] == ["run", "epoch"]
        assert f["diverged_step"][...].tolist() == [-1, 7]
        for name in ("lrs", "train/loss", "train/epoch", "epoch/train_loss", "epoch/wall_time", "diverged_step"):
            assert f[name].attrs["description"]
    run = read_run(path)
    assert run.steps == 10 and run.epochs_done == 2 and run.model == "vgg"


def test_create_never_replaces_an_existing_file(tmp_path):
    path = tmp_path / "run.h5"
    path.write_bytes(b"precious")
    with pytest.raises(UsageError, match="--overwrite"):
        RunWriter(path, config_json="{}", lrs=[0.1], attrs={}).create()
    assert path.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["run.h5"]  # no temporary left behind


def test_reader_refuses_foreign_and_newer_files(tmp_path):
    not_hdf5 = tmp_path / "a.h5"
    not_hdf5.write_text("hello")
    with pytest.raises(UsageError, match="not an HDF5 file"):
        read_run(not_hdf5)
    foreign = tmp_path / "b.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    with pytest.raises(UsageError, match="not a landscape run"):
        read_run(foreign)
    newer = tmp_path / "c.h5"
    make_file(newer)
    with h5py.File(newer, "a") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(UsageError, match="newer"):
        read_run(newer)
