"""Crashes, signals, concurrent writers, damaged files and full disks (subprocesses on the real CIFAR subset)."""
import errno
import hashlib
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from landscape.cli.main import main
from landscape.files.lock import WriterLock
from landscape.training.checkpoint import checkpoint_path
from landscape.errors import RunFailed
from landscape.files.run_file import read_run
from tests.conftest import HANG_GUARD, wait_for

pytestmark = pytest.mark.slow
RUN = ["--model", "vgg_bn", "--width", "0.0625", "--lrs", "1e-3,3e-4", "--train-subset", "768",
       "--batch-size", "64", "--epochs", "3", "--device", "cpu", "--threads", "1", "--quiet"]  # one thread: one
# arithmetic for the reference and every interrupted run, however busy the machine


def start(cifar_root, out, *extra, env=None):
    """`landscape run` in a subprocess."""
    return subprocess.Popen([sys.executable, "-m", "landscape", "run", *RUN, "--data-root", str(cifar_root),
                             "--out", str(out), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def finish(cifar_root, *args):
    result = subprocess.run([sys.executable, "-m", "landscape", "run", *args], capture_output=True, text=True)
    return result


def wait_for_epochs(out, epochs, process):
    """Poll the run file while it trains (it is always readable) until `epochs` epochs are in it."""
    wait_for(lambda: out.exists() and read_run(out).epochs_done >= epochs, process, poll=0.02)
    return read_run(out)


@pytest.fixture(scope="module")
def reference(cifar_root, tmp_path_factory):
    """The uninterrupted run's step losses and test accuracy."""
    out = tmp_path_factory.mktemp("ref") / "run.h5"
    process = start(cifar_root, out)
    assert process.wait() == 0, process.communicate()
    run = read_run(out)
    assert not checkpoint_path(out).exists()  # removed once the run completed
    return run.train_loss, run.epoch["test_acc"]


def assert_same_as_reference(out, reference):
    run = read_run(out)
    assert run.status == "complete"
    assert np.array_equal(run.train_loss, reference[0])  # bit-identical on CPU
    assert np.array_equal(run.epoch["test_acc"], reference[1])


def test_sigkill_mid_epoch_then_resume(tmp_path, cifar_root, reference):
    out = tmp_path / "run.h5"
    process = start(cifar_root, out)
    seen = wait_for_epochs(out, 1, process)
    assert seen.status == "running"  # readable while it trains
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = read_run(out)
    assert 1 <= kept.epochs_done < 3 and kept.steps == 12 * kept.epochs_done
    result = finish(cifar_root, "--resume", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert_same_as_reference(out, reference)


@pytest.mark.parametrize("target", ["run.h5:3", "run.h5.ckpt:3"])  # checkpoint writes: epoch 0, 1, 2
def test_sigkill_during_a_write(tmp_path, cifar_root, reference, target):
    out = tmp_path / "run.h5"
    process = start(cifar_root, out, env={"LANDSCAPE_TEST_KILL_BEFORE_RENAME": target})
    assert process.wait() == -signal.SIGKILL
    kept = read_run(out)  # the run file is whole: the old copy or the new one
    assert kept.epochs_done == (1 if target == "run.h5:3" else 2)
    assert checkpoint_path(out).exists()
    result = finish(cifar_root, "--resume", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert_same_as_reference(out, reference)
    assert not list(tmp_path.glob(".*.tmp"))  # the killed writer's temporaries are cleaned up


def test_sigterm_saves_mid_epoch_and_resumes(tmp_path, cifar_root, reference):
    out = tmp_path / "run.h5"
    process = start(cifar_root, out)
    wait_for_epochs(out, 1, process)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=HANG_GUARD)
    assert process.returncode == 1
    assert len(stderr.strip().splitlines()) == 1 and "landscape run --resume" in stderr and "SIGTERM" in stderr
    assert read_run(out).status == "interrupted"
    result = finish(cifar_root, "--resume", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert_same_as_reference(out, reference)


def test_resume_refuses_changed_options_and_says_when_complete(tmp_path, cifar_root, capsys):
    out = tmp_path / "run.h5"
    process = start(cifar_root, out, "--epochs", "1")
    assert process.wait() == 0
    before = hashlib.sha256(out.read_bytes()).hexdigest()
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--resume", str(out), "--epochs", "5", "--lrs", "0.1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--epochs 5 (the run has 1)" in err and "--lrs" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--resume", str(out)])
    assert exit_info.value.code == 0 and "nothing to resume" in capsys.readouterr().out
    assert hashlib.sha256(out.read_bytes()).hexdigest() == before


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(tmp_path, tiny_config, capsys):
    out = tmp_path / "run.h5"
    out.write_bytes(b"an older run")
    with WriterLock(out):
        with pytest.raises(SystemExit) as exit_info:
            main(["run", "--dataset", "synthetic", "--out", str(out), "--overwrite"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "is being written by process" in err
    assert out.read_bytes() == b"an older run"
    # a lock file whose process is gone holds no flock: the next writer takes it over
    (tmp_path / "run.h5.lock").write_text("process 999999 on elsewhere")
    from landscape.training.runner import train
    train(tiny_config(epochs=1), out, overwrite=True, progress=False)
    assert read_run(out).status == "complete" and not (tmp_path / "run.h5.lock").exists()


def test_full_disk_stops_cleanly_and_keeps_the_last_good_state(tmp_path, tiny_config, monkeypatch):
    import landscape.files.run_file as store

    real = store.write_atomically
    calls = {"n": 0}

    def flaky(path, write, replace=True):
        calls["n"] += 1
        if calls["n"] == 4:  # create, epoch 1, checkpoint 1, then epoch 2 fails
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, write, replace=replace)

    monkeypatch.setattr(store, "write_atomically", flaky)
    import landscape.training.checkpoint as checkpoint
    monkeypatch.setattr(checkpoint, "write_atomically", flaky)
    from landscape.training.runner import resume, train
    out = tmp_path / "run.h5"
    with pytest.raises(RunFailed, match="No space left"):
        train(tiny_config(epochs=3), out, progress=False)
    run = read_run(out)
    assert run.epochs_done == 1 and run.status == "failed"
    monkeypatch.setattr(store, "write_atomically", real)
    monkeypatch.setattr(checkpoint, "write_atomically", real)
    path, resumed = resume(out, progress=False)
    assert resumed and read_run(path).epochs_done == 3


def test_damaged_files_give_one_line_and_never_a_traceback(tmp_path, tiny_run, capsys):
    data = tiny_run.read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SystemExit) as exit_info:
        main(["info", str(truncated)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "truncated or corrupt" in err and len(err.strip().splitlines()) == 1
    for offset in (64, 200, 800, 2000, len(data) // 3, len(data) // 2, len(data) - 100):
        flipped = tmp_path / f"flipped{offset}.h5"
        damaged = bytearray(data)
        for i in range(offset, min(offset + 16, len(damaged))):
            damaged[i] ^= 0xFF
        flipped.write_bytes(bytes(damaged))
        result = subprocess.run([sys.executable, "-m", "landscape", "info", str(flipped)], capture_output=True,
                                text=True)
        assert result.returncode in (0, 2), result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 1


def test_plot_and_info_go_on_past_a_bad_file(tmp_path, tiny_run, capsys):
    bad = tmp_path / "bad.h5"
    bad.write_text("not a run")
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", str(tiny_run), str(bad), "--out", str(tmp_path / "figs")])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 1 and "skipped" in err and "bad.h5" in err
    assert (tmp_path / "figs" / "tiny_envelope.png").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["info", str(bad), str(tiny_run)])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 1 and "vgg_bn" in out and "bad.h5" in err
