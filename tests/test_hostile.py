"""Hostile inputs and faults for surface, hessian, report and plot: files that read outside themselves, outputs
that would replace data, concurrent writers, damaged files, limits and impossible sizes. Each: the exit status,
one line without a traceback, and every file that existed before byte-identical afterwards."""
import resource
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tests.conftest import HANG_GUARD, REPO
from tests.test_cli import checksums, landscape
from tests.test_hardening import cifar_folder, one_line_error

FAST = ("--grid", "-1:1:3", "--images", "32", "--device", "cpu", "--quiet")
HESSIAN = ("--lr", "1e-3", "--top-k", "1", "--max-steps", "4", "--images", "32", "--device", "cpu", "--quiet")


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_config):
    """A run with a snapshot per epoch, a surface and a Hessian file of it: the good files to spoil."""
    from landscape.commands.hessian import HessianOptions, compute_hessian
    from landscape.commands.surface import SurfaceOptions, compute_surface
    from landscape.training.runner import train

    folder = tmp_path_factory.mktemp("good")
    run = train(tiny_config(snapshot_every=1), folder / "good.h5", progress=False)
    surface = compute_surface(run, SurfaceOptions(lr=1e-3, grid="-1:1:3", images=32, device="cpu"),
                              folder / "good_surface.h5", progress=False)
    hessian = compute_hessian(run, HessianOptions(lr="1e-3", top_k=1, max_steps=4, images=32, device="cpu"),
                              folder / "good_hessian.h5", progress=False)
    return {"run": run, "weights": run.with_name("good.weights.h5"), "surface": surface, "hessian": hessian}


@pytest.fixture
def files(made, tmp_path):
    """Fresh copies of the good files in this test's folder."""
    return {k: shutil.copy(v, tmp_path / v.name) for k, v in made.items()} | {"folder": tmp_path}


def spoil(path, kind, dataset):
    """Give `path` an object that reads outside the file, in place of `dataset` (or beside it, for links)."""
    secret = path.parent / "secret.txt"
    secret.write_bytes(b"user:password\n" * 64)
    with h5py.File(path, "a") as f:
        if kind == "external storage":
            shape, dtype = f[dataset].shape, f[dataset].dtype
            del f[dataset]
            f.create_dataset(dataset, shape=shape, dtype=dtype, external=[(str(secret), 0, h5py.h5f.UNLIMITED)])
        elif kind == "external link":
            f["leak"] = h5py.ExternalLink(str(secret.with_suffix(".h5")), "/x")
        elif kind == "soft link":
            f["alias"] = h5py.SoftLink(dataset)
        else:  # a virtual dataset gathered from another file
            source = path.parent / "source.h5"
            with h5py.File(source, "w") as s:
                s["x"] = np.arange(4.0)
            layout = h5py.VirtualLayout(shape=(4,), dtype="f8")
            layout[:] = h5py.VirtualSource(str(source), "x", shape=(4,))
            f.create_virtual_dataset("virtual", layout)


KINDS = ["external storage", "external link", "soft link", "virtual dataset"]
READERS = [  # (file spoiled, its dataset, command lines reading it)
    ("run", "train/loss", [("info", "{run}"), ("plot", "{run}", "--out", "{folder}/fig"),
                           ("report", "{run}", "--out", "{folder}/r.html")]),
    ("weights", "snapshots/epoch_0002/features.0.weight", [("surface", "{run}", "--lr", "1e-3", *FAST),
                                                           ("hessian", "{run}", *HESSIAN)]),
    ("surface", "loss", [("info", "{surface}"), ("plot", "{surface}", "--out", "{folder}/fig"),
                         ("report", "{surface}", "--out", "{folder}/r.html")]),
    ("hessian", "eigenvalues", [("info", "{hessian}"), ("plot", "{hessian}", "--out", "{folder}/fig")]),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("target,dataset,commands", READERS, ids=[r[0] for r in READERS])
def test_files_that_read_outside_themselves_are_refused_by_every_reader(files, kind, target, dataset, commands,
                                                                        capsys):
    spoil(files[target], kind, dataset)
    before = checksums(files["folder"])
    for command in commands:
        args = [a.format(**files) for a in command]
        code, out, err = landscape(*args, capsys=capsys)
        if args[0] == "report":  # one bad input is a note on the page, the rest renders
            page = (files["folder"] / "r.html").read_text()
            assert "outside the file" in page and "user:password" not in page
            (files["folder"] / "r.html").unlink()
            continue
        assert "outside the file" in one_line_error(code, err), (args, err)
        assert "user:password" not in out + err
    assert checksums(files["folder"]) == before


def test_ablate_table_refuses_a_cell_that_reads_outside_itself(files, capsys):
    from landscape.ablations.spec import load_spec

    spec_path = files["folder"] / "cells.toml"
    spec_path.write_text('title = "t"\nsource = "t"\nmetrics = ["best_test_acc"]\n[base]\ndataset = "synthetic"\n'
                         '[[axes]]\nname = "width"\nvalues = [0.0625]\n')
    spec = load_spec(spec_path)
    cell = spec.result_path(files["folder"] / "results", "quick", spec.cells[0], 0)
    cell.parent.mkdir(parents=True)
    shutil.copy(files["run"], cell)
    spoil(cell, "external storage", "train/loss")
    code, out, err = landscape("ablate", "table", spec_path, "--preset", "quick", "--results",
                               files["folder"] / "results", capsys=capsys)
    table = (cell.parent / "table.md").read_text()
    assert "outside the file" in table and "1 missing" in table
    written = "".join(p.read_text(errors="ignore") for p in cell.parent.glob("*.*") if p.suffix in (".md", ".csv"))
    assert "user:password" not in written + out + err


def test_report_and_markdown_never_write_over_an_input(files, capsys):
    before = checksums(files["folder"])
    for extra in ((), ("--overwrite",), ("--markdown",), ("--markdown", "--overwrite")):
        code, _, err = landscape("report", files["run"], files["surface"], "--out", files["run"], *extra, capsys=capsys)
        assert "one of this command's inputs" in one_line_error(code, err)
    (files["folder"] / "page.html").write_text("mine")
    code, _, err = landscape("report", files["run"], "--out", files["folder"] / "page.html", capsys=capsys)
    assert "already exists" in one_line_error(code, err)
    assert checksums(files["folder"]) == {**before, "page.html": checksums(files["folder"])["page.html"]}


@pytest.mark.parametrize("command", ["surface", "hessian"])
def test_one_writer_per_output(files, command, capsys):
    from landscape.files.lock import WriterLock

    out = files["folder"] / "busy.h5"
    extra = FAST if command == "surface" else HESSIAN[2:]
    with WriterLock(out):
        code, _, err = landscape(command, files["run"], "--lr", "1e-3", *extra, "--out", out, capsys=capsys)
    assert "is being written by" in one_line_error(code, err) and not out.exists()
    commands = [[sys.executable, "-m", "landscape", command, str(files["run"]), "--lr", "1e-3", *extra, "--out",
                 str(files["folder"] / "both.h5")] for _ in range(2)]
    processes = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    outcomes = [(p.wait(timeout=HANG_GUARD), p.stderr.read()) for p in processes]
    assert sorted(code for code, _ in outcomes) == [0, 2], outcomes  # one writes, the other is refused in one line
    refused = next(err for code, err in outcomes if code == 2)
    assert len(refused.strip().splitlines()) == 1 and ("being written" in refused or "already exists" in refused)


def test_a_one_dimensional_pca_surface_is_drawn_and_redrawn(files, capsys):
    code, _, err = landscape("surface", files["run"], "--lr", "1e-3", "--directions", "pca", "--dims", "1", "--grid",
                             "-1:1:3", "--images", "32", "--device", "cpu", "--out", files["folder"] / "pca.h5",
                             capsys=capsys)
    assert code in (0, None), err
    code, out, err = landscape("plot", files["folder"] / "pca.h5", capsys=capsys)
    assert code in (0, None) and "pca_1d.png" in out, err


def surface_and_hessian_refuse(files, expected: str, capsys) -> None:
    """Both measuring commands on the (spoiled) run: one line naming `expected`, nothing on disk changed."""
    before = checksums(files["folder"])
    for args in (("surface", files["run"], "--lr", "1e-3", *FAST),
                 ("hessian", files["run"], *HESSIAN, "--out", files["folder"] / "new.h5")):
        code, _, err = landscape(*args, capsys=capsys)
        assert expected in one_line_error(code, err)
    assert checksums(files["folder"]) == before


def test_a_damaged_weights_chunk_is_one_line_for_surface_and_hessian(files, capsys):
    path = files["weights"]
    with h5py.File(path, "r") as f:
        dset = f["snapshots/epoch_0002/features.0.weight"]
        offset = dset.id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 16] ^= 0xFF
    path.write_bytes(bytes(data))
    surface_and_hessian_refuse(files, "unreadable weights file", capsys)


@pytest.mark.parametrize("command", ["surface", "hessian", "report", "plot"])
def test_a_file_size_limit_while_writing_is_one_line_and_keeps_what_was_there(files, command):
    limit = 4096

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    args = {"surface": ("surface", files["run"], "--lr", "1e-3", *FAST, "--out", files["folder"] / "s.h5"),
            "hessian": ("hessian", files["run"], *HESSIAN, "--out", files["folder"] / "h.h5"),
            "report": ("report", files["run"], "--out", files["folder"] / "r.html"),
            "plot": ("plot", files["run"], "--out", files["folder"] / "fig")}[command]
    before = checksums(files["folder"])
    done = subprocess.run([sys.executable, "-m", "landscape", *map(str, args)], preexec_fn=limited,
                          capture_output=True, text=True, timeout=HANG_GUARD, cwd=REPO)
    assert "no space left on the device (or a file-size limit)" in one_line_error(done.returncode, done.stderr, 1)
    after = checksums(files["folder"])
    assert all(after.get(name) == digest for name, digest in before.items())
    assert not [p for p in files["folder"].rglob(".*.tmp")]


@pytest.mark.parametrize("args,expected", [
    (("surface", "{run}", "--lr", "1e-3", "--grid", "-1:1:1000000", "--device", "cpu"), "for its values alone"),
    (("surface", "{run}", "--lr", "1e-3", "--device", "tpu"), "--device 'tpu' is unknown"),
    (("hessian", "{run}", "--lr", "1e-3", "--device", "tpu"), "--device 'tpu' is unknown"),
    (("surface", "{run}", "--lr", "1e-3", "--seed", str(2 ** 40)), "--seed must be a whole number"),
    (("hessian", "{run}", "--lr", "1e-3", "--seed", str(2 ** 40)), "--seed must be a whole number"),
    (("hessian", "{run}", "--lr", "1e-3", "--images", "32", "--top-k", "5", "--basis-vectors", "6", "--device", "cpu",
      "--out", "{folder}/new.h5"), "needs at least 9 vectors"),
    (("hessian", "{run}", "--lr", "1e-3", "--images", "999999", "--device", "cpu", "--out", "{folder}/new.h5"),
     "exceeds the 256 train images"),
    (("surface", "{run}", "--lr", "1e-3", "--directions", "between", "--to", "1e-3", "--dims", "1", "--device",
      "cpu"), "the centre itself"),
    (("run", "--width", "1e6", "--dataset", "synthetic", "--device", "cpu", "--out", "{folder}/w.h5"),
     "too large"),
    (("connect", "{run}", "{run}", "--lr", "1e-3", "--points", "1000000", "--images", "32", "--device", "cpu",
      "--out", "{folder}/p.h5"), "give at most 10,001"),
    (("hessian", "{run}", "--lr", "1e-3", "--density", "--density-steps", "100000000", "--images", "32", "--device",
      "cpu", "--out", "{folder}/new.h5"), "Lanczos takes at most as many steps as the"),
])
def test_impossible_or_meaningless_requests_are_refused_before_any_work(files, args, expected, capsys):
    before = checksums(files["folder"])
    code, _, err = landscape(*[a.format(**files) for a in args], capsys=capsys)
    line = one_line_error(code, err)
    assert expected is None or expected in line, line
    assert checksums(files["folder"]) == before


def test_huge_points_per_pass_is_capped_by_the_grid(files, capsys):
    code, _, err = landscape("surface", files["run"], "--lr", "1e-3", *FAST, "--points-per-pass", "50", "--out",
                             files["folder"] / "cap.h5", capsys=capsys)
    from landscape.files.surface_file import read_surface

    assert code in (0, None), err
    assert read_surface(files["folder"] / "cap.h5").attrs["points_per_pass"] == 9


def test_non_finite_weights_are_refused(files, capsys):
    with h5py.File(files["weights"], "a") as f:
        data = f["snapshots/epoch_0002/features.0.weight"]
        values = data[...]
        values[0, 0, 0, 0, 0] = np.nan
        data[...] = values
    surface_and_hessian_refuse(files, "NaN or infinite", capsys)


def test_between_past_its_ends_stays_finite(files, capsys):
    from landscape.files.surface_file import read_surface

    code, _, err = landscape("surface", files["run"], "--lr", "1e-3", "--directions", "between", "--to", "3e-4",
                             "--dims", "1", "--grid", "-1:2:7", "--images", "32", "--device", "cpu", "--quiet",
                             "--out", files["folder"] / "b.h5", capsys=capsys)
    assert code in (0, None), err
    surface = read_surface(files["folder"] / "b.h5")
    assert np.isfinite(surface.loss).all() and surface.attrs["nonfinite_points"] == 0


def test_hand_edited_surface_and_hessian_files_are_one_line_and_the_report_still_renders(files, capsys):
    with h5py.File(files["surface"], "a") as f:
        del f["done"]
        f["done"] = np.ones(2, dtype=np.uint8)
    with h5py.File(files["hessian"], "a") as f:
        del f["eigenvalues"]
        f["eigenvalues"] = np.ones((3, 3))
    for path in (files["surface"], files["hessian"]):
        for command in ("info", "plot"):
            code, _, err = landscape(command, path, capsys=capsys)
            assert "inconsistent" in one_line_error(code, err)
    code, _, err = landscape("surface", files["run"], "--lr", "1e-3", "--grid", "-1:1:3", "--images", "32",
                             "--device", "cpu", "--resume", "--out", files["surface"], capsys=capsys)
    assert "inconsistent" in one_line_error(code, err)
    code, out, err = landscape("report", files["run"], files["surface"], files["hessian"], "--out",
                               files["folder"] / "r.html", capsys=capsys)
    page = (files["folder"] / "r.html").read_text()
    assert code == 1 or code in (0, None)
    assert page.count("inconsistent") >= 2 and "Training loss" in page


def test_text_from_a_file_is_inert_in_info_and_markdown(files, capsys):
    with h5py.File(files["run"], "a") as f:
        f.attrs["status"] = "complete\x1b]0;owned\x07\x1b[2J<script>alert(1)</script>"
        f.attrs["model"] = "vgg<script>x</script>"
    code, out, _ = landscape("info", files["run"], capsys=capsys)
    assert "\x1b" not in out and "\x07" not in out
    code, _, err = landscape("report", files["run"], "--markdown", "--out", files["folder"] / "r.md", capsys=capsys)
    text = (files["folder"] / "r.md").read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text


def test_a_memory_bomb_batch_is_one_line(tmp_path, capsys):
    import numpy.core.multiarray as multiarray  # noqa: F401  (what the official batches pickle)

    class Bomb:
        def __reduce__(self):
            return (np.core.multiarray._reconstruct, (np.ndarray, (2 ** 50,), b"b"))

    root = cifar_folder(tmp_path / "data", {"data": Bomb(), "labels": [0]})
    code, _, err = landscape("run", "--dataset", "cifar10", "--data-root", root, "--width", "0.0625", "--epochs", "1",
                             "--device", "cpu", "--out", tmp_path / "r.h5", capsys=capsys)
    line = one_line_error(code, err)
    assert "memory" in line or "unreadable" in line
    assert not (tmp_path / "r.h5").exists()


def test_the_memory_check_uses_the_batch_actually_taken(tmp_path, capsys):
    code, _, err = landscape("run", "--dataset", "synthetic", "--train-subset", "64", "--batch-size", "100000",
                             "--width", "0.0625", "--epochs", "1", "--lrs", "1e-3", "--device", "cpu", "--quiet",
                             "--out", tmp_path / "r.h5", capsys=capsys)
    assert code in (0, None), err


def test_ray_resources_are_checked_before_ray_starts(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text('title = "t"\nsource = "t"\nmetrics = ["best_test_acc"]\n[base]\ndataset = "synthetic"\n'
                    '[[axes]]\nname = "width"\nvalues = [0.0625]\n')
    code, _, err = landscape("ablate", "run", spec, "--preset", "quick", "--results", tmp_path / "r", "--executor",
                             "ray", "--gpus-per-cell", "2.5", capsys=capsys)
    assert "whole GPUs" in one_line_error(code, err) and not (tmp_path / "r").exists()


def edit_config(path, **changes):
    import json

    with h5py.File(path, "a") as f:
        config = json.loads(f.attrs["config"])
        config.update(changes)
        f.attrs["config"] = json.dumps(config)


EDITED = [  # (file, how it is edited, commands that read it)
    ("run", lambda p: edit_config(p, width="wide"), ["surface", "hessian", "info", "plot"]),
    ("run", lambda p: edit_config(p, momentum="heavy"), ["info", "plot", "report", "surface"]),
    ("run", lambda p: h5py.File(p, "a").attrs.__setitem__("model_size_mb", "abc"), ["info", "report"]),
    ("run", lambda p: h5py.File(p, "a").attrs.__setitem__("weights_file", "../x.weights.h5"), ["surface", "hessian"]),
    ("surface", lambda p: h5py.File(p, "a").attrs.__setitem__("lr", "abc"), ["info", "plot", "report"]),
    ("hessian", lambda p: h5py.File(p, "a").attrs.__setitem__("images", "many"), ["info", "plot", "report"]),
]


@pytest.mark.parametrize("target,edit,commands", EDITED, ids=[
    "config width text", "config momentum text", "model_size_mb text", "weights_file outside", "surface lr text",
    "hessian images text"])
def test_edited_attributes_are_the_files_one_line_or_a_report_note(files, target, edit, commands, capsys):
    edit(files[target])
    before = checksums(files["folder"])
    commands_of = {"surface": ("surface", files["run"], "--lr", "1e-3", *FAST, "--out", files["folder"] / "n.h5"),
                   "hessian": ("hessian", files["run"], *HESSIAN, "--out", files["folder"] / "n.h5"),
                   "info": ("info", files[target]), "plot": ("plot", files[target], "--out", files["folder"] / "fig"),
                   "report": ("report", files[target], "--out", files["folder"] / "r.html")}
    for command in commands:
        code, out, err = landscape(*commands_of[command], capsys=capsys)
        if command == "report":  # the one bad input is a note on the page
            page = (files["folder"] / "r.html").read_text()
            assert "damaged or edited" in page and "Traceback" not in err
            (files["folder"] / "r.html").unlink()
            continue
        assert "damaged or edited" in one_line_error(code, err), (command, err)
    assert checksums(files["folder"]) == before


@pytest.mark.parametrize("args,expected", [
    (("surface", "{run}", "--lr", "1e-3", "--grid", "-1e308:1e308:3", "--device", "cpu"), "overflow"),
    (("surface", "{run}", "--lr", "1e-3", "--grid", "-1:1:400", "--images", "32", "--points-per-pass", "100000",
      "--device", "cpu"), "activations of a batch"),
    (("run", "--dataset", "synthetic", "--train-subset", "64", "--width", "0.0625", "--epochs", "1", "--probe-every",
      "1", "--probe-multipliers", "0.5:4:100000000", "--device", "cpu", "--out", "{folder}/p.h5"),
     "would not fit in memory"),
    (("run", "--dataset", "synthetic", "--train-subset", "64", "--batch-size", "1", "--width", "0.0625", "--epochs",
      "1000000", "--probe-every", "1", "--probe-multipliers", "0.5:4:1000", "--model", "vgg", "--device", "cpu",
      "--out", "{folder}/p.h5"), "of probe records"),
])
def test_sizes_that_cannot_fit_are_refused_before_any_work(files, args, expected, capsys, monkeypatch):
    eight_gib = lambda *device: 8 * 2 ** 30  # noqa: E731  (the same verdict on any machine)
    monkeypatch.setattr("landscape.engine.surface.available_bytes", eight_gib)
    monkeypatch.setattr("landscape.training.config.available_memory", eight_gib)
    monkeypatch.setattr("landscape.training.runner.available_memory", eight_gib)
    before = checksums(files["folder"])
    code, _, err = landscape(*[a.format(**files) for a in args], capsys=capsys)
    assert expected in one_line_error(code, err)
    assert checksums(files["folder"]) == before


def test_a_single_point_plane_is_drawn_as_a_heatmap(files, capsys):
    out = files["folder"] / "one.h5"
    code, _, err = landscape("surface", files["run"], "--lr", "1e-3", "--grid", "0:0:1", "--images", "32", "--device",
                             "cpu", "--out", out, capsys=capsys)
    assert code in (0, None), err
    assert "one_heatmap.png" in " ".join(p.name for p in files["folder"].iterdir())
    assert not list(files["folder"].glob("one_contour*"))
    code, out_text, err = landscape("info", out, capsys=capsys)
    assert code in (0, None) and "np." not in out_text


def text_dataset(path, name):
    with h5py.File(path, "a") as f:
        shape = f[name].shape
        del f[name]
        f[name] = np.full(shape, "text", dtype=object)


def text_attribute(path, group, name):
    with h5py.File(path, "a") as f:
        f[group].attrs[name] = "lots"


@pytest.fixture(scope="module")
def connected(made, tiny_config, tmp_path_factory):
    """A path file (the line and the aligned line of the good run to its copy) and a run with sharpness."""
    from landscape.commands.connect import ConnectOptions, compute_connection
    from landscape.training.runner import train

    folder = tmp_path_factory.mktemp("connected")
    other = shutil.copy(made["run"], folder / "other.h5")
    shutil.copy(made["weights"], folder / made["weights"].name)  # the name the run file gives
    path = compute_connection(made["run"], other, ConnectOptions(lr=1e-3, lr_b=1e-3, points=3, images=32,
                                                                 test_images=32, bn_images=32, align="weights",
                                                                 device="cpu", threads=1), folder / "path.h5",
                              progress=False)
    sharp = train(tiny_config(sharpness_every=4, sharpness_images=32), folder / "sharp.h5", progress=False)
    return {"path": path, "sharp": sharp}


HAND_EDITED = [  # (file, its edit, commands that read it): every one a line naming the file, exit 2
    ("surface", lambda p: text_dataset(p, "x"), [("export", "{f}", "--out", "{folder}/e.csv")]),
    ("surface", lambda p: text_dataset(p, "metrics/acc"), [("export", "{f}", "--out", "{folder}/e.csv"),
                                                           ("plot", "{f}", "--out", "{folder}/fig")]),
    ("path", lambda p: text_attribute(p, "alignment", "similarity_before"), [("info", "{f}")]),
    ("path", lambda p: text_attribute(p, "alignment", "moved_units"), [("info", "{f}")]),
    ("path", lambda p: text_dataset(p, "paths/line/train/loss"), [("plot", "{f}", "--out", "{folder}/fig"),
                                                                  ("info", "{f}")]),
    ("sharp", lambda p: text_attribute(p, "sharpness", "warm_start"), [("info", "{f}"),
                                                                      ("plot", "{f}", "--out", "{folder}/fig")]),
]


@pytest.mark.parametrize("target,edit,commands", HAND_EDITED, ids=[
    "surface x text", "surface metric text", "path similarity text", "path moved_units text", "path loss text",
    "run warm_start text"])
def test_hand_edited_datasets_and_attributes_are_one_line(made, connected, tmp_path, target, edit, commands, capsys):
    source = {**made, **connected}[target]
    path = shutil.copy(source, tmp_path / source.name)
    edit(path)
    before = checksums(tmp_path)
    for command in commands:
        code, _, err = landscape(*(a.format(f=path, folder=tmp_path) for a in command), capsys=capsys)
        assert "damaged or edited" in one_line_error(code, err), (command, err)
    assert checksums(tmp_path) == before
