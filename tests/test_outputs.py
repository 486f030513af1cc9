"""Output planning: every file a command writes is checked against its inputs (and the files they bring), against
the command's other outputs and against what exists, before any work; and what it writes is inert where read."""
import shutil
import xml.etree.ElementTree as ElementTree

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from landscape.errors import UsageError
from tests.test_cli import checksums, landscape
from tests.test_hostile import made  # noqa: F401  (the module's good files)

CN = ("--points", "3", "--images", "64", "--test-images", "64", "--bn-images", "64", "--batch-size", "64",
      "--threads", "1", "--device", "cpu", "--quiet")


@pytest.fixture
def pair(made, tmp_path):  # noqa: F811
    a = shutil.copy(made["run"], tmp_path / "a.h5")
    shutil.copy(made["weights"], tmp_path / "a.weights.h5")
    b = shutil.copy(made["run"], tmp_path / "b.h5")
    shutil.copy(made["weights"], tmp_path / "b.weights.h5")
    for run, name in ((a, "a.weights.h5"), (b, "b.weights.h5")):  # each names its own weights file
        with h5py.File(run, "a") as f:
            f.attrs["weights_file"] = name
    return tmp_path, a, b


@pytest.mark.parametrize("extra,message", [
    (("--resume", "--out", "{a}"), "one of this command's inputs"),
    (("--overwrite", "--out", "{folder}/b.weights.h5"), "one of this command's inputs"),
    (("--out", "{folder}/q.csv"), "would be one file"),
    (("--out", "{folder}/user.h5"), "user.csv already exists"),
    (("--resume", "--out", "{folder}/sub"), "is a folder"),
    (("--out", "{folder}/" + "x" * 250 + ".h5"), "bytes long"),
    (("--out", "{folder}/" + "x" * 300 + ".h5"), "bytes long"),  # beyond what the file system can even look up
])
def test_connect_refuses_every_collision_and_changes_nothing(pair, extra, message, capsys):
    folder, a, b = pair
    (folder / "user.csv").write_text("mine\n")
    (folder / "sub").mkdir()
    before = checksums(folder)
    args = [str(x).format(a=a, folder=folder) for x in extra]
    code, _, err = landscape("connect", a, b, "--lr", "1e-3", *CN, *args, capsys=capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert checksums(folder) == before


@pytest.mark.parametrize("command", [("surface", "--grid=-1:1:3"), ("hessian", "--top-k", "1"),
                                     ("measure", "--measures", "gap")])
def test_a_name_longer_than_the_file_system_takes_is_one_line(pair, command, capsys):
    folder, a, _ = pair
    before = checksums(folder)
    name, *options = command
    code, _, err = landscape(name, a, "--lr", "1e-3", "--device", "cpu", "--quiet", *options,
                             "--out", folder / ("x" * 300 + ".h5"), capsys=capsys)
    assert code == 2 and "bytes long" in err and len(err.strip().splitlines()) == 1, err
    assert checksums(folder) == before


def test_a_damaged_or_foreign_curve_checkpoint_and_changed_options_are_one_line(pair, capsys):
    folder, a, b = pair
    out = folder / "p.h5"
    checkpoint = folder / "p.h5.curve.pt"
    for content, message in ((b"not a checkpoint", "damaged"),):
        checkpoint.write_bytes(content)
        code, _, err = landscape("connect", a, b, "--lr", "1e-3", *CN, "--curve", "bezier", "--resume", "--out", out,
                                 capsys=capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    torch.save({"bend": {"w": torch.zeros(3)}}, checkpoint)
    code, _, err = landscape("connect", a, b, "--lr", "1e-3", *CN, "--curve", "bezier", "--resume", "--out", out,
                             capsys=capsys)
    assert code == 2 and "not a curve checkpoint of this model" in err
    from landscape.commands.connect import ConnectOptions, curve_options
    from landscape.commands.sources import run_snapshot

    model = run_snapshot(a, 1e-3, None, None, None, torch.device("cpu")).model
    bend = {n: torch.zeros(p.shape) for n, p in model.named_parameters()}
    torch.save({"bend": bend, "options": {**curve_options(ConnectOptions(curve="bezier")), "curve_lr": 0.5}},
               checkpoint)
    code, _, err = landscape("connect", a, b, "--lr", "1e-3", *CN, "--curve", "bezier", "--resume", "--out", out,
                             capsys=capsys)
    assert code == 2 and "--curve-lr 0.01 (the checkpoint has 0.5)" in err and not out.exists()


class Concatenating(nn.Module):
    """Two branches concatenated along the channels: a permutation of one branch's units moves the other's."""

    def __init__(self):
        super().__init__()
        self.left, self.right, self.head = nn.Linear(4, 3), nn.Linear(4, 5), nn.Linear(8, 2)

    def forward(self, x):
        return self.head(torch.relu(torch.cat([self.left(x), self.right(x)], dim=1)))


def test_an_alignment_that_would_change_b_is_refused_not_used():
    import landscape as api

    torch.manual_seed(0)
    a, b = Concatenating(), Concatenating()
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    try:
        found = api.connect(a, b, (x, y), points=3, align="weights")
    except UsageError as exc:
        assert "would change B's function" in str(exc)
        return
    # if the tracing understood the concatenation, the aligned B at t = 1 is B
    assert found.values["aligned_line"]["train"]["loss"][-1] == pytest.approx(
        found.values["line"]["train"]["loss"][-1], rel=1e-5)


def test_measures_that_would_write_an_empty_file_are_refused(made, tmp_path, capsys):  # noqa: F811
    for measures, message in (("", "measures is empty"), ("barrier", "between two models")):
        code, _, err = landscape("measure", made["run"], "--lr", "1e-3", "--measures", measures, "--out",
                                 tmp_path / "m.h5", capsys=capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir())


def test_exports_create_their_folder_and_escape_names(made, tmp_path, capsys):  # noqa: F811
    surface = shutil.copy(made["surface"], tmp_path / "s.h5")
    with h5py.File(surface, "a") as f:
        name = next(iter(f["metrics"])) if "metrics" in f else None
        if name is not None:
            f.move(f"metrics/{name}", 'metrics/=a"<b')
    code, _, err = landscape("export", surface, "--out", tmp_path / "new" / "x.vts", capsys=capsys)
    assert code in (0, None), err
    root = ElementTree.parse(tmp_path / "new" / "x.vts").getroot()  # well-formed XML
    names = [e.get("Name") for e in root.iter("DataArray")]
    assert "loss" in names and '=a"<b' in names
    code, _, err = landscape("export", surface, "--format", "csv", "--out", tmp_path / "x.csv", capsys=capsys)
    assert code in (0, None), err
    header = (tmp_path / "x.csv").read_text().splitlines()[0]
    assert "'=a" in header


def test_inert_cells_keep_numbers_and_mark_formulas():
    from landscape.views.csv_cells import inert_row

    assert inert_row(["=SUM(A1)", "-0.5", -0.5, "+cmd", "@x", "plain", "-inf"]) == \
        ["'=SUM(A1)", "-0.5", -0.5, "'+cmd", "'@x", "plain", "-inf"]


def test_two_ablate_measures_on_one_results_folder_do_not_both_write(tmp_path, capsys):
    from landscape.ablations.runner import plan, run_job
    from landscape.ablations.spec import load_spec
    from landscape.files.lock import WriterLock
    from tests.test_ablate_measure import GRID_SPEC

    spec_file = tmp_path / "grid.toml"
    spec_file.write_text(GRID_SPEC.replace('values = [32, 64]', 'values = [32]').replace(
        'values = ["relu", "silu"]', 'values = ["relu"]'))
    for job in plan(load_spec(spec_file), "quick", 1, tmp_path / "results"):
        run_job(job, threads=1)
    measures = tmp_path / "results" / "grid" / "quick" / "measures.h5"
    with WriterLock(measures):  # another `ablate measure` is writing it
        code, _, err = landscape("ablate", "measure", spec_file, "--preset", "quick", "--results",
                                 tmp_path / "results", "--measures", "norms", "--images", "32", "--test-images", "32",
                                 capsys=capsys)
    assert code == 2 and "is being written by" in err and not measures.exists()
    assert not np.any([p.name.endswith(".lock") for p in measures.parent.iterdir()])


def test_info_summarises_a_measures_file_and_a_hand_edited_one_is_one_line(tmp_path, capsys):
    """A measures file is ours like the others: `info` summarises it; text where numbers belong (a value, a
    final accuracy) or a 2-D value is one line, exit 2, in info, ablate table's reader and report."""
    import h5py
    import numpy as np

    from landscape.engine.measures import Measures
    from landscape.files.measures_file import MeasuresTable, write_measures
    from tests.test_cli import landscape as cli

    table = MeasuresTable(tmp_path / "m.h5", {"spec": "toy", "preset": "cpu", "images": 64, "test_images": 64,
                                               "measures": "gap"}, ["a seed0", "a seed1"])
    for i, cell in enumerate(table.cells):
        table.put(cell, Measures({"gap_acc": 0.1 * (i + 1), "hessian_top": 10.0 + i}), {"seed": i,
                                                                                       "final_test_acc": 50.0})
    path = write_measures(table)
    code, out, err = cli("info", path, capsys=capsys)
    assert code in (0, None) and "measures file, spec toy" in out and "hessian_top" in out and "2 of 2 models" in out
    code, _, err = cli("plot", path, "--out", tmp_path, capsys=capsys)
    assert code == 2 and "has no curves to plot" in err
    for edit in ("values_text", "values_2d", "accuracy_text"):
        broken = tmp_path / f"{edit}.h5"
        broken.write_bytes(path.read_bytes())
        with h5py.File(broken, "r+") as f:
            if edit == "values_text":
                del f["values/gap_acc"]
                f.create_dataset("values/gap_acc", data=np.array(["x", "y"], dtype=object), dtype=h5py.string_dtype())
            elif edit == "values_2d":
                del f["values/gap_acc"]
                f["values/gap_acc"] = np.zeros((2, 2))
            else:
                del f["cell_info/final_test_acc"]
                f.create_dataset("cell_info/final_test_acc", data=np.array(["a", "b"], dtype=object),
                                 dtype=h5py.string_dtype())
        code, _, err = cli("info", broken, capsys=capsys)
        assert code == 2 and "inconsistent measures file" in err and len(err.strip().splitlines()) == 1, edit
        assert "Traceback" not in err
