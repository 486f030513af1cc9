"""Hostile and broken inputs: one line, the right exit status, nothing on disk changed, no code run."""
import json
import pickle
import resource
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tests.conftest import HANG_GUARD
from tests.test_cli import checksums, landscape

TINY = ["--model", "vgg_bn", "--width", "0.0625", "--train-subset", "64", "--epochs", "1", "--batch-size", "32",
        "--lrs", "1e-3", "--device", "cpu", "--quiet"]


def cifar_folder(root, batch=None, **overrides):
    """A CIFAR-10 folder of 20 random images per batch; `batch` replaces data_batch_1's dict."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        content = {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, 20))}
        if name == "data_batch_1" and batch is not None:
            content = batch
        (folder / name).write_bytes(pickle.dumps(content))
    return root


class Payload:
    """Unpickling this would create `marker` (as a code-running payload would do anything else)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def one_line_error(code, err, expected_code=2):
    lines = err.strip().splitlines()
    assert code == expected_code and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_malicious_pickle_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    root = cifar_folder(tmp_path / "data", {"data": Payload(marker), "labels": [0]})
    code, _, err = landscape("run", *TINY, "--data-root", root, "--out", tmp_path / "r.h5", capsys=capsys)
    assert "refusing to unpickle" in one_line_error(code, err) and "open" in err
    assert not marker.exists() and not (tmp_path / "r.h5").exists()


BAD_DATA = [
    ({"data": np.zeros((20, 3072), dtype=np.uint8), "labels": [12] * 20}, "labels outside [0, 10)"),
    ({"data": np.zeros((20, 3072), dtype=np.uint8), "labels": [-1] * 20}, "labels outside"),
    ({"data": np.zeros((20, 100), dtype=np.uint8), "labels": [1] * 20}, "not uint8 [N, 3072]"),
    ({"data": np.zeros((20, 3072), dtype=np.uint8)}, "unreadable"),
    (["not", "a", "dict"], "not a dict"),
]


@pytest.mark.parametrize("batch,message", BAD_DATA)
def test_readable_but_wrong_data_is_refused_at_load(tmp_path, batch, message, capsys):
    root = cifar_folder(tmp_path / "data", batch)
    code, _, err = landscape("run", *TINY, "--data-root", root, "--out", tmp_path / "r.h5", capsys=capsys)
    assert message in one_line_error(code, err)
    assert not (tmp_path / "r.h5").exists()


def test_a_batch_file_that_is_a_folder_is_named(tmp_path, capsys):
    root = cifar_folder(tmp_path / "data")
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    (root / "cifar-10-batches-py" / "data_batch_3").mkdir()
    code, _, err = landscape("run", *TINY, "--data-root", root, "--out", tmp_path / "r.h5", capsys=capsys)
    assert "data_batch_3 is a folder" in one_line_error(code, err)


BAD_RUNS = [
    (["--width", "100000"], "GiB"),  # parameters alone would need terabytes
    (["--image-size", "100000", "--dataset", "synthetic"], "GiB"),
    (["--image-size", "8", "--dataset", "synthetic"], "cannot take 8x8 images"),
    (["--seed", str(2 ** 70), "--dataset", "synthetic"], "--seed"),
    (["--model", "vgg_bn_fc", "--batch-size", "1", "--dataset", "synthetic"], "at least 2 images"),
]


@pytest.mark.parametrize("extra,message", BAD_RUNS)
def test_sizes_and_values_out_of_range_are_refused_up_front(tmp_path, extra, message, capsys):
    code, _, err = landscape("run", *TINY, "--dataset", "synthetic", *extra, "--out", tmp_path / "r.h5",
                             capsys=capsys)
    assert message in one_line_error(code, err)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("toml,message", [("lrs = true\n", "lrs must be numbers"), ("epochs = true\n", "epochs"),
                                          ("milestones = [1.5]\n", "whole numbers"), (None, "is a folder")])
def test_config_types_python_would_forgive_are_refused(tmp_path, toml, message, capsys):
    config = tmp_path / "c.toml"
    if toml is None:
        config.mkdir()
    else:
        config.write_text(toml)
    code, _, err = landscape("run", "--config", config, "--dataset", "synthetic", "--out", tmp_path / "r.h5",
                             capsys=capsys)
    assert message in one_line_error(code, err)


def test_output_folders_are_checked_before_drawing(tiny_run, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    before = checksums(tmp_path)
    for argv in (["plot", tiny_run, "--out", blocker], ["plot", tiny_run, "--out", blocker / "sub"],
                 ["ablate", "table", "cifar10_resnet18_stem", "--preset", "quick", "--results", blocker]):
        code, _, err = landscape(*argv, capsys=capsys)
        one_line_error(code, err)
    assert checksums(tmp_path) == before


def edited_copy(tiny_run, tmp_path, edit):
    path = tmp_path / "edited.h5"
    shutil.copy(tiny_run, path)
    with h5py.File(path, "a") as f:
        edit(f)
    return path


@pytest.mark.parametrize("edit,message", [
    (lambda f: f.attrs.__setitem__("config", json.dumps([1, 2])), "not a JSON object"),
    (lambda f: f.attrs.__setitem__("config", "{not json"), "unreadable"),
    (lambda f: (f.__delitem__("lrs"), f.create_dataset("lrs", data=np.zeros(0))), "no learning rate"),
    (lambda f: (f.__delitem__("lrs"), f.create_dataset("lrs", data=np.ones(5))), "/train/loss has shape"),
])
def test_inconsistent_run_files_are_refused_per_file(tiny_run, tmp_path, edit, message, capsys):
    path = edited_copy(tiny_run, tmp_path, edit)
    for command in ("info", "plot"):
        code, _, err = landscape(command, path, capsys=capsys)
        assert message in one_line_error(code, err)
    code, out, err = landscape("info", path, tiny_run, capsys=capsys)
    assert code == 1 and "skipped" in err and "tiny" in out  # the good file is still shown


def test_a_flipped_byte_inside_a_dataset_is_caught_by_its_checksum(tiny_run, tmp_path, capsys):
    path = tmp_path / "flipped.h5"
    shutil.copy(tiny_run, path)
    with h5py.File(path, "r") as f:
        offset = f["train/loss"].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    code, _, err = landscape("info", path, capsys=capsys)
    assert "unreadable run file" in one_line_error(code, err)


SPEC = 'title="t"\nsource="s"\nmetrics=["best_test_acc"]\n[base]\nmodel="vgg"\n[[axes]]\nname="width"\nvalues=[1.0]\n'
BAD_SPECS = [
    (SPEC.replace('metrics=["best_test_acc"]', 'metrics="best_test_acc"'), ":3: metrics"),
    (SPEC.replace('values=[1.0]', 'values=3'), "values must be a list"),
    (SPEC.replace('[[axes]]\nname="width"\nvalues=[1.0]\n', 'axes={name="width"}\n'), "axes"),
    (SPEC + '[[reference]]\nwhere=5\nbest_test_acc=1\n', "where"),
    ('presets=[1]\n' + SPEC, "presets"),
    (SPEC + 'quick=[1]\n', "unknown axis key"),
    (SPEC + '[[reference]]\nwhere={width=1.0}\nbest_test_acc=true\n', "must be a number"),
    (SPEC.replace('title="t"', 'title=3'), "title"),
]


@pytest.mark.parametrize("text,message", BAD_SPECS + [(b"title='\xff\xfe'\n", "not UTF-8")])
def test_spec_files_with_wrong_types_name_file_line_and_key(tmp_path, text, message, capsys):
    spec = tmp_path / "bad.toml"
    spec.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, _, err = landscape("ablate", "run", spec, "--preset", "quick", "--results", tmp_path / "r", capsys=capsys)
    line = one_line_error(code, err)
    assert "bad.toml" in line and message in line


def test_ablate_run_with_an_unknown_device_fails_once_up_front(tmp_path, capsys):
    code, _, err = landscape("ablate", "run", "cifar10_resnet18_stem", "--preset", "quick", "--device", "tpu",
                             "--results", tmp_path, capsys=capsys)
    assert "tpu" in one_line_error(code, err) and not list(tmp_path.iterdir())


def test_a_run_that_failed_before_its_first_epoch_does_not_block_the_retry(tmp_path, capsys):
    from landscape.files.run_file import RunWriter, read_run

    path = tmp_path / "r.h5"
    writer = RunWriter(path, config_json="{}", lrs=[1e-3], attrs={})
    writer.create()
    writer.set_status("failed", "the data was wrong")
    code, _, err = landscape("run", *TINY, "--dataset", "synthetic", "--out", path, capsys=capsys)
    assert code == 0 and read_run(path).status == "complete"


def test_resume_without_a_checkpoint_refuses_to_drop_epochs(tmp_path, tiny_config, capsys):
    from landscape.training.checkpoint import checkpoint_path
    from landscape.training.runner import train

    path = train(tiny_config(epochs=2), tmp_path / "r.h5", progress=False, keep_checkpoint=True)
    with h5py.File(path, "a") as f:
        f.attrs["status"] = "interrupted"
    checkpoint_path(path).unlink()
    before = checksums(tmp_path)
    code, _, err = landscape("run", "--resume", path, capsys=capsys)
    assert "drop the 2 epoch(s)" in one_line_error(code, err) and checksums(tmp_path) == before


def test_a_killed_writer_shows_as_interrupted(tiny_run, tmp_path, capsys):
    import fcntl

    path = edited_copy(tiny_run, tmp_path, lambda f: f.attrs.__setitem__("status", "running"))
    code, out, _ = landscape("info", path, capsys=capsys)
    assert "interrupted (writer gone; resume with: landscape run --resume" in out
    with open(str(path) + ".lock", "w") as lock:  # a live writer holds the lock
        fcntl.flock(lock, fcntl.LOCK_EX)
        code, out, _ = landscape("info", path, capsys=capsys)
        assert "status      running" in out


def test_a_file_size_limit_during_the_checkpoint_write_keeps_the_last_good_files(tmp_path):
    limit = 400 * 1024  # above the run file (about 100 KB), below the checkpoint (about 1 MB)

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    command = [sys.executable, "-m", "landscape", "run", *TINY, "--dataset", "synthetic", "--train-subset", "256",
               "--lrs", "1e-3,3e-4", "--epochs", "2", "--no-snapshots", "--out", str(tmp_path / "r.h5")]
    done = subprocess.run(command, preexec_fn=limited, capture_output=True, text=True, timeout=HANG_GUARD)
    assert done.returncode == 1, done.stderr
    line = one_line_error(1, done.stderr, 1)
    assert "no space left on the device (or a file-size limit) while writing r.h5.ckpt" in line
    assert "resume with: landscape run --resume" in line
    # the last good files: the run file and the checkpoint taken before the first epoch; no temporary, no lock
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5", "r.h5.ckpt"]
    from landscape.files.run_file import read_run

    run = read_run(tmp_path / "r.h5")
    assert run.status == "failed" and "r.h5.ckpt" in run.attrs["message"] and run.epochs_done == 1
    resumed = subprocess.run([sys.executable, "-m", "landscape", "run", "--resume", str(tmp_path / "r.h5"), "--quiet"],
                             capture_output=True, text=True, timeout=HANG_GUARD)  # space again: it goes on
    assert resumed.returncode == 0 and read_run(tmp_path / "r.h5").status == "complete"


def test_the_index_lists_every_spec_with_results_and_list_explains_horizons(tmp_path, capsys):
    for name in ("a", "b"):
        folder = tmp_path / name / "quick"
        folder.mkdir(parents=True)
        (folder / "table.md").write_text(f"# Study {name}\n\n1 of 2 cells done.\n")
    from landscape.ablations.spec import load_spec, spec_paths
    from landscape.ablations.tables import regenerate

    spec = load_spec(next(p for p in spec_paths() if p.stem == "cifar10_resnet18_stem"))
    regenerate([spec], "quick", tmp_path)
    index = (tmp_path / "index_quick.md").read_text()
    assert "Study a" in index and "Study b" in index and spec.title in index
    code, out, _ = landscape("ablate", "list", "--results", tmp_path, capsys=capsys)
    assert "horizon cells are epochs of one long run" in out
