"""The fused engine against the per-run loop (the reference), and the speed switches on CPU."""
import h5py
import numpy as np
import pytest

from landscape.errors import UsageError
from landscape.training.runner import train


def run_file(tmp_path, tiny_config, name, **overrides):
    return h5py.File(train(tiny_config(**overrides), tmp_path / f"{name}.h5", progress=False), "r")


@pytest.mark.parametrize("options", [
    dict(optimizer="adam"),
    dict(optimizer="sgd", momentum=0.9, nesterov=True, weight_decay=5e-4, lrs=(0.05, 0.01)),
    dict(optimizer="adamw", weight_decay=0.05),
    dict(optimizer="sgd", momentum=0.0, lrs=(0.1, 0.02), schedule="step", step_size=1, gamma=0.5),
])
def test_fused_matches_the_loop(tmp_path, tiny_config, options):
    with run_file(tmp_path, tiny_config, "loop", engine="loop", **options) as loop, \
            run_file(tmp_path, tiny_config, "fused", engine="fused", **options) as fused:
        assert fused.attrs["engine"] == "FusedRuns" and loop.attrs["engine"] == "LockstepRuns"
        a, b = loop["train/loss"][...], fused["train/loss"][...]
        # the same maths, summed in another order (a grouped convolution): equal at first, then float
        # rounding grows with the training dynamics, so later steps agree to about a percent
        assert np.allclose(a[:, :5], b[:, :5], rtol=1e-4, atol=1e-5)
        assert np.allclose(loop["epoch/train_loss"][...], fused["epoch/train_loss"][...], rtol=1e-2)
        assert np.allclose(loop["epoch/test_loss"][...], fused["epoch/test_loss"][...], rtol=2e-2)
        assert np.array_equal(loop["epoch/lr"][...], fused["epoch/lr"][...])


def test_fused_probes_match_the_loop(tmp_path, tiny_config):
    options = dict(probe_every=4, probe_multipliers=(0.5, 2.0), epochs=1)
    with run_file(tmp_path, tiny_config, "loop", engine="loop", **options) as loop, \
            run_file(tmp_path, tiny_config, "fused", engine="fused", **options) as fused:
        for name in ("loss", "grad_dist", "distance", "beta", "grad_norm"):
            assert np.allclose(loop[f"probe/{name}"][...], fused[f"probe/{name}"][...], rtol=5e-3, atol=1e-4), name


def test_fused_divergence_is_contained_to_its_run(tmp_path, tiny_config):
    with run_file(tmp_path, tiny_config, "div", engine="fused", model="vgg", optimizer="sgd", lrs=(0.01, 1e4)) as f:
        loss, step = f["train/loss"][...], f["diverged_step"][...]
        assert step[0] == -1 and step[1] >= 0
        assert np.all(np.isfinite(loss[0])) and np.all(np.isnan(loss[1, step[1]:]))
        assert np.isfinite(f["epoch/test_acc"][0, -1])


def test_fused_refuses_optimizers_it_does_not_batch(tmp_path, tiny_config):
    with pytest.raises(UsageError, match="--engine loop"):
        train(tiny_config(engine="fused", optimizer="ranger"), tmp_path / "r.h5", progress=False)
    assert not (tmp_path / "r.h5").exists()


def test_bf16_autocast_and_channels_last_run_on_cpu(tmp_path, tiny_config):
    with run_file(tmp_path, tiny_config, "fp32", epochs=1) as ref, \
            run_file(tmp_path, tiny_config, "bf16", epochs=1, precision="bf16", channels_last=True) as bf16, \
            run_file(tmp_path, tiny_config, "cl", epochs=1, channels_last=True) as cl:
        a, b = ref["train/loss"][...], cl["train/loss"][...]
        # the same function to float rounding: equal first steps; the trajectories then drift apart slowly (Adam
        # amplifies rounding differences), by how much depends on the CPU's thread count
        assert np.allclose(a[:, 0], b[:, 0], rtol=1e-5) and np.allclose(a.mean(axis=1), b.mean(axis=1), rtol=1e-3)
        assert np.allclose(ref["train/loss"][:, 0], bf16["train/loss"][:, 0], rtol=2e-2)
        assert np.all(np.isfinite(bf16["train/loss"][...]))


@pytest.mark.slow
def test_compile_gives_the_same_losses(tmp_path, tiny_config):
    options = dict(epochs=1, lrs=(1e-3,), train_subset=128, batch_size=64)
    with run_file(tmp_path, tiny_config, "eager", **options) as eager, \
            run_file(tmp_path, tiny_config, "compiled", compile=True, **options) as compiled:
        assert np.allclose(eager["train/loss"][...], compiled["train/loss"][...], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_fused_run_resumes_to_the_identical_result(tmp_path, tiny_config, monkeypatch, optimizer):
    from landscape.files.run_file import read_run
    from landscape.training.runner import resume
    from tests.conftest import cut_at_epoch_three

    config = tiny_config(engine="fused", optimizer=optimizer, lrs=(0.01, 0.002), epochs=3)
    reference = read_run(train(config, tmp_path / "whole.h5", progress=False))
    cut_at_epoch_three(monkeypatch, config, tmp_path / "cut.h5")
    assert read_run(tmp_path / "cut.h5").epochs_done == 2
    resumed = read_run(resume(tmp_path / "cut.h5", progress=False)[0])
    assert np.array_equal(resumed.train_loss, reference.train_loss)
    assert np.array_equal(resumed.epoch["test_acc"], reference.epoch["test_acc"])
