"""Studies: the `[study]` section of a spec, the verdict rule, and finding.md from a measures table built by hand."""
import numpy as np
import pytest
from scipy import stats

from landscape.ablations.finding import write_finding
from landscape.ablations.spec import load_spec, spec_paths
from landscape.ablations.study import decide, welch_interval
from landscape.engine.measures import Measures, MeasureOptions
from landscape.errors import UsageError
from landscape.files.measures_file import MeasuresTable, write_measures

SPEC = """
title = "toy study"
source = "a test"
metrics = ["final_test_acc"]
[base]
model = "vgg_bn"
dataset = "synthetic"
lrs = [1e-3]
until_train_acc = 0.9
[[axes]]
name = "batch_size"
values = [32, 256]
[presets.quick]
until_train_acc = 0.0
[study]
question = "Do large batches find sharper minima?"
paper = "Keskar et al. 2017"
seeds = 4
measures = ["jiang_mag", "gap"]
[[study.claims]]
claim = "large-batch minima are sharper"
source = "Table 2"
kind = "difference"
axis = "batch_size"
low = 32
high = 256
measure = "jiang_mag_sharpness"
expect = "higher"
[[study.claims]]
claim = "flatness predicts the gap"
source = "Table 5"
kind = "correlation"
measure = "pacbayes_mag_flatness"
target = "gap_acc"
expect = "positive"
"""


def test_decide_follows_the_stated_rule():
    assert decide((0.1, 0.5), True, False) == "agrees"
    assert decide((-0.5, -0.1), True, False) == "disagrees"
    assert decide((-0.5, -0.1), False, False) == "agrees"
    assert decide((-0.1, 0.3), True, False) == "inconclusive"
    assert decide((0.1, 0.5), True, True) == "inconclusive"  # too many models missed the criterion: no verdict
    assert decide((np.nan, np.nan), True, False) == "inconclusive"


def test_welch_interval_is_scipys():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 5), rng.normal(0.0, 2.0, 7)
    expected = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert welch_interval(a, b) == pytest.approx((expected.low, expected.high), rel=1e-10)


def measured_table(path, sharp_small, sharp_large, met=None):
    """A measures table of 4 seeds per batch size: given sharpness per group, a flatness that tracks the gap."""
    cells = [f"{size} seed{seed}" for size in (32, 256) for seed in range(4)]
    table = MeasuresTable(path, {"spec": "toy", "preset": "cpu", "images": 64, "test_images": 64,
                                 "measures": "jiang_mag,gap"}, cells)
    rng = np.random.default_rng(1)
    for i, cell in enumerate(cells):
        size = 32 if i < 4 else 256
        gap = 0.1 + 0.05 * i
        values = {"jiang_mag_sharpness": (sharp_small if size == 32 else sharp_large)[i % 4],
                  "pacbayes_mag_flatness": 10 * gap + rng.normal(0, 1e-3), "gap_acc": gap, "test_acc": 0.5}
        info = {"batch_size": str(size), "seed": i % 4, "final_test_acc": 50.0,
                "criterion_met": 1.0 if met is None else met[i], "epochs_trained": 10.0}
        table.put(cell, Measures(values), info)
    return write_measures(table)


@pytest.mark.parametrize("small, large, verdict", [
    ([1.0, 1.1, 0.9, 1.05], [3.0, 3.2, 2.9, 3.1], "agrees"),
    ([3.0, 3.2, 2.9, 3.1], [1.0, 1.1, 0.9, 1.05], "**disagrees**"),
    ([1.0, 3.0, 0.5, 2.0], [1.5, 2.5, 1.0, 1.8], "inconclusive"),
])
def test_finding_gives_each_claim_its_verdict(tmp_path, small, large, verdict):
    spec_file = tmp_path / "toy.toml"
    spec_file.write_text(SPEC)
    spec = load_spec(spec_file)
    measures = measured_table(tmp_path / "measures.h5", small, large)
    text = write_finding(spec, "cpu", measures).read_text()
    rule = text.index("## Rule")
    assert rule < text.index("## Results")  # the rule comes before the numbers
    sharper = next(line for line in text.splitlines() if line.startswith("| large-batch minima are sharper"))
    assert sharper.rstrip().endswith(f"| {verdict} |")
    difference = np.mean(large) - np.mean(small)
    assert f"| {difference:.3g} |" in sharper
    gap = next(line for line in text.splitlines() if line.startswith("| flatness predicts the gap"))
    assert gap.rstrip().endswith("| agrees |")  # the flatness tracks the gap by construction
    assert "met by 8 of 8 models" in text


def test_models_that_missed_their_criterion_are_left_out_and_too_many_make_it_inconclusive(tmp_path):
    spec_file = tmp_path / "toy.toml"
    spec_file.write_text(SPEC)
    spec = load_spec(spec_file)
    small, large = [1.0, 1.1, 0.9, 1.05], [3.0, 3.2, 2.9, 3.1]
    one = write_finding(spec, "cpu", measured_table(tmp_path / "one.h5", small, large,
                                                     met=[1, 1, 1, 1, 1, 1, 1, 0])).read_text()
    sharper = next(line for line in one.splitlines() if line.startswith("| large-batch minima are sharper"))
    assert sharper.rstrip().endswith("| agrees |") and "| 7 |" in sharper  # the model that missed is left out
    assert f"| {np.mean(large[:3]) - np.mean(small):.3g} |" in sharper
    assert "1 of 8 model(s) missed the training criterion and were left out" in one and "met by 7 of 8" in one
    three = write_finding(spec, "cpu", measured_table(tmp_path / "three.h5", small, large,
                                                       met=[1, 0, 1, 1, 0, 1, 1, 0])).read_text()
    verdicts = [line.rsplit("|", 2)[-2].strip() for line in three.splitlines() if line.startswith("| ") and
                "claim (paper)" not in line and "---" not in line and "split" not in line]
    assert verdicts == ["inconclusive", "inconclusive"]  # 3 of 8 missed: more than a quarter


def test_a_preset_without_the_studys_criterion_gives_no_verdict(tmp_path):
    spec_file = tmp_path / "toy.toml"
    spec_file.write_text(SPEC)
    measures = measured_table(tmp_path / "measures.h5", [1.0, 1.1, 0.9, 1.05], [3.0, 3.2, 2.9, 3.1])
    text = write_finding(load_spec(spec_file), "quick", measures).read_text()
    assert "| agrees |" not in text and text.count("| inconclusive |") == 2
    assert "without the study's criterion" in text


@pytest.mark.parametrize("change, message", [
    (("kind = \"difference\"", "kind = \"ratio\""), "kind must be one of"),
    (("expect = \"higher\"", "expect = \"up\""), "expects higher or lower"),
    (("axis = \"batch_size\"", "axis = \"width\""), "axis must be one of the spec's axes"),
    (("seeds = 4", "seeds = 0"), "seeds: must be a whole number of at least 1"),
    (("paper = \"Keskar et al. 2017\"", "journal = \"x\""), "unknown study key"),
    (("seeds = 4", "seeds = 4\nline = { axis = \"depth\", a = 1, b = 2 }"), "line: must be"),
])
def test_a_bad_study_is_refused_with_its_line(tmp_path, change, message):
    spec_file = tmp_path / "toy.toml"
    spec_file.write_text(SPEC.replace(*change))
    with pytest.raises(UsageError, match=message) as caught:
        load_spec(spec_file)
    assert str(caught.value).startswith(f"{spec_file}:")


def test_every_shipped_study_names_known_measures_and_has_a_cpu_preset():
    studies = [spec for spec in map(load_spec, spec_paths()) if spec.study is not None]
    assert len(studies) >= 2
    for spec in studies:
        MeasureOptions(spec.study.measures).validate()
        assert "cpu" in spec.presets and spec.study.seeds >= 3
        for claim in spec.study.claims:
            assert claim.measure and claim.source


STUDY_RUN = '''
title = "toy study, trained"
source = "a test"
metrics = ["final_test_acc"]
[base]
model = "vgg_bn"
dataset = "synthetic"
width = 0.0625
lrs = [3e-3]
train_subset = 128
batch_size = 32
eval_batch_size = 128
epochs = 4
until_train_acc = 0.3
threads = 1
[[axes]]
name = "batch_size"
values = [16, 64]
[presets.cpu]
epochs = 4
[study]
question = "Do large batches find sharper minima?"
paper = "Keskar et al. 2017"
seeds = 2
measures = ["hessian_top", "jiang", "gap"]
images = 64
test_images = 64
measure_options = { steps = 2, tolerance = 0.5 }
line = { axis = "batch_size", a = 16, b = 64 }
[[study.claims]]
claim = "large-batch minima are sharper"
source = "Table 2"
kind = "difference"
axis = "batch_size"
low = 16
high = 64
measure = "jiang_sharpness"
expect = "higher"
'''


def test_a_study_runs_with_its_seeds_and_measures_and_writes_its_finding(tmp_path, capsys):
    import h5py

    from tests.test_cli import landscape as cli

    spec_file = tmp_path / "toy_run.toml"
    spec_file.write_text(STUDY_RUN)
    results = tmp_path / "results"
    code, _, err = cli("ablate", "run", spec_file, "--preset", "cpu", "--results", results, "--quiet", capsys=capsys)
    assert code in (0, None), err
    runs = sorted((results / "toy_run" / "cpu").glob("*_seed*.h5"))
    assert len([r for r in runs if not r.name.endswith(".weights.h5")]) == 4  # the study's 2 seeds per cell
    code, out, err = cli("ablate", "measure", spec_file, "--preset", "cpu", "--results", results, capsys=capsys)
    assert code in (0, None), err
    folder = results / "toy_run" / "cpu"
    with h5py.File(folder / "measures.h5") as f:
        assert set(f["values"]) >= {"hessian_top", "jiang_sharpness", "jiang_alpha", "jiang_capped", "gap_acc"}
        assert "hessian_trace" not in f["values"]  # hessian_top: the top eigenvalue alone
        assert f.attrs["steps"] == 2 and f.attrs["tolerance"] == 0.5 and f.attrs["images"] == 64
        assert set(f["cell_info"]) >= {"criterion_met", "epochs_trained"}
    text = (folder / "finding.md").read_text()
    assert "Do large batches find sharper minima?" in text and "| large-batch minima are sharper" in text
    assert str(folder / "finding.md") in out
    from landscape.files.path_file import read_path

    line = read_path(folder / "line_16_64.h5")  # the line between the two cells' seed-0 models, as connect draws it
    assert "## The line from batch_size=16 to batch_size=64" in text
    barrier = line.barriers["line"]["train"]["loss"]
    assert f"| {barrier:.3g} |" in text or f"| {barrier:.2e} |" in text
    ends = line.values["line"]["train"]["loss"][[0, -1]]
    assert np.all(np.isfinite(ends)) and any(p.suffix == ".png" for p in folder.glob("line_16_64*"))
