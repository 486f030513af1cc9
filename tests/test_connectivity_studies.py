"""The connectivity studies: a branching spec's parents and children, the barrier between the pairs of a spec's
models (children of one parent; seeds two by two) against `connect` on the same two models, the level claim, and
bad branching specs."""
import numpy as np
import pytest
import torch
from scipy import stats

from landscape.ablations.measure import measure_spec
from landscape.ablations.runner import job_waves, plan, run_in_waves, run_job, run_jobs
from landscape.ablations.spec import load_spec
from landscape.ablations.study import t_interval
from landscape.commands.sources import ImageSet, snapshot_model
from landscape.connectivity.connect import connect
from landscape.engine.measures import MeasureOptions
from landscape.errors import UsageError
from landscape.files.measures_file import read_measures
from landscape.files.run_file import read_run
from landscape.files.weights_file import weights_of_run

BRANCHING = '''
title = "toy instability"
source = "a test"
metrics = ["final_test_acc"]
[base]
model = "vgg_bn"
dataset = "synthetic"
width = 0.0625
lrs = [0.05]
optimizer = "sgd"
train_subset = 96
batch_size = 32
eval_batch_size = 96
epochs = 2
snapshot_every = 1
branch_points = true
threads = 1
[[axes]]
name = "branch_epoch"
values = [0, 0.5, 2]
[study]
question = "Stable after an early point?"
paper = "Frankle et al. 2020"
seeds = 1
measures = ["barrier"]
curves = ["barrier_test_acc"]
[[study.claims]]
claim = "stable late"
source = "Figure 3"
kind = "level"
axis = "branch_epoch"
at = 2
measure = "barrier_test_acc"
threshold = 0.02
expect = "below"
'''


def final_model(path):
    run = read_run(path)
    weights = weights_of_run(run)
    return run, snapshot_model(run, weights, 0, weights.epochs[-1], torch.device("cpu"))


def by_hand(path_a, path_b, images, test_images, align="none"):
    """`connect` on the two runs' final models, with the images `ablate measure` takes (the first N of each split)."""
    run, model_a = final_model(path_a)
    _, model_b = final_model(path_b)
    data = ImageSet.of_run(run, torch.device("cpu"))
    return connect(model_a, model_b.state_dict(), data.batches(data.split("train", images), data.batch_size),
                   test_data=data.batches(data.split("test", test_images), data.batch_size), align=align, points=11)


@pytest.fixture(scope="module")
def branching(tmp_path_factory):
    folder = tmp_path_factory.mktemp("branching")
    spec_file = folder / "toy_instability.toml"
    spec_file.write_text(BRANCHING)
    spec = load_spec(spec_file)
    jobs = plan(spec, "full", 1, folder / "results")
    counts = run_in_waves(jobs, lambda wave: run_jobs(wave, 1, report=lambda line: None, progress=False, threads=1))
    assert counts == {"trained": 1, "branched": 6, "resumed": 0, "skipped": 0, "failed": 0, "interrupted": 0}
    path = measure_spec(spec, "full", folder / "results", MeasureOptions(("barrier",)), images=64, test_images=48,
                        report=lambda line: None)
    return spec, folder / "results", read_measures(path)


def test_a_branching_spec_trains_its_parents_before_their_children(branching):
    spec, results, _ = branching
    jobs = plan(spec, "full", 2, results)
    waves = job_waves(jobs)
    assert [len(wave) for wave in waves] == [2, 12]
    assert all(job.origin is None for job in waves[0]) and all(job.origin.parent in {j.path for j in waves[0]}
                                                               for job in waves[1])
    child = read_run(spec.result_path(results, "full", spec.cells[0], 0))
    twin = read_run(spec.twin_path(results, "full", spec.cells[0], 0))
    assert child.attrs["parent_file"] == "parent_seed0.h5" and child.attrs["branch_epoch"] == 0
    assert child.attrs["data_seed"] != twin.attrs["data_seed"]  # two data orders: SGD noise


def test_a_fractional_branch_epoch_starts_the_children_after_the_step_it_falls_on(branching):
    spec, results, table = branching
    parent = read_run(spec.parent_path(results, "full", 0))
    child = read_run(spec.result_path(results, "full", spec.cells[1], 0))
    twin = read_run(spec.twin_path(results, "full", spec.cells[1], 0))
    assert parent.attrs["steps_per_epoch"] == 3  # 96 images in batches of 32: half an epoch is step 1.5, rounded up
    assert (int(child.attrs["branch_epoch"]), int(child.attrs["branch_step"])) == (0, 2)
    assert sorted(p.name for p in spec.parent_path(results, "full", 0).parent.glob("parent_seed0.h5.step_*")) == [
        "parent_seed0.h5.step_0000002.ckpt"]
    for run in (child, twin):
        assert np.array_equal(run.train_loss[0, :2], parent.train_loss[0, :2])  # the parent's two steps
        assert run.train_loss[0, 2] != parent.train_loss[0, 2]  # then their own orders
    assert child.train_loss[0, 2] != twin.train_loss[0, 2]
    assert np.isfinite(table.values["barrier_test_acc"][table.cells.index("0.5 seed0")])


def test_two_children_branched_at_the_last_epoch_have_instability_exactly_zero(branching):
    spec, _, table = branching
    row = table.cells.index("2 seed0")
    for column in ("barrier_loss", "barrier_acc", "barrier_test_loss", "barrier_test_acc"):
        assert table.values[column][row] == 0.0  # no training after the branch: the same model twice


def test_the_instability_at_initialisation_is_connect_on_the_two_children(branching):
    spec, results, table = branching
    row = table.cells.index("0 seed0")
    found = by_hand(spec.result_path(results, "full", spec.cells[0], 0),
                    spec.twin_path(results, "full", spec.cells[0], 0), 64, 48)
    assert table.values["barrier_test_acc"][row] == pytest.approx(found.barriers["line"]["test"]["acc"], abs=1e-12)
    assert table.values["barrier_test_loss"][row] == pytest.approx(found.barriers["line"]["test"]["loss"], rel=1e-6,
                                                                   abs=1e-9)
    assert table.values["barrier_loss"][row] == pytest.approx(found.barriers["line"]["train"]["loss"], rel=1e-6,
                                                              abs=1e-9)
    assert (results / spec.name / "full" / "pairs" / "0-seed0.h5").is_file()


def test_a_child_whose_parent_failed_is_not_started(tmp_path):
    spec_file = tmp_path / "toy_instability.toml"
    spec_file.write_text(BRANCHING)
    spec = load_spec(spec_file)
    jobs = plan(spec, "full", 1, tmp_path / "results")
    (tmp_path / "results" / spec.name / "full").mkdir(parents=True)
    jobs[0].path.write_text("not a run file")  # the parent cannot be trained: it is damaged
    counts = run_in_waves(jobs, lambda wave: run_jobs(wave, 1, report=lambda line: None, progress=False, threads=1))
    assert counts["failed"] == 1 and counts["not started"] == 6
    assert not spec.result_path(tmp_path / "results", "full", spec.cells[0], 0).exists()


SEEDS = BRANCHING.replace('''snapshot_every = 1
branch_points = true
''', "").replace('''name = "branch_epoch"
values = [0, 0.5, 2]''', '''name = "width"
values = [0.0625]''').replace('measures = ["barrier"]', 'measures = ["barrier_aligned"]').replace(
    'axis = "branch_epoch"\nat = 2', 'axis = "width"\nat = 0.0625')


def test_the_aligned_barrier_of_each_pair_of_seeds_is_connect_with_weight_matching(tmp_path):
    spec_file = tmp_path / "toy_width.toml"
    spec_file.write_text(SEEDS)
    spec = load_spec(spec_file)
    for job in plan(spec, "full", 3, tmp_path / "results"):
        run_job(job, threads=1)
    path = measure_spec(spec, "full", tmp_path / "results", MeasureOptions(("barrier_aligned",)), images=64,
                        test_images=48, report=lambda line: None)
    table = read_measures(path)
    rows = [table.cells.index(f"0.0625 seed{seed}") for seed in range(3)]
    found = by_hand(*(spec.result_path(tmp_path / "results", "full", spec.cells[0], seed) for seed in (0, 1)), 64, 48,
                    align="weights")
    for prefix, name in (("barrier", "line"), ("aligned_barrier", "aligned_line")):
        for middle, split in (("", "train"), ("_test", "test")):
            assert table.values[f"{prefix}{middle}_loss"][rows[0]] == pytest.approx(
                found.barriers[name][split]["loss"], rel=1e-6, abs=1e-9)
    assert table.values["barrier_reduction_loss"][rows[0]] == pytest.approx(
        found.barriers["line"]["train"]["loss"] - found.barriers["aligned_line"]["train"]["loss"], rel=1e-6, abs=1e-9)
    assert table.values["barrier_reduction_test_loss"][rows[0]] == pytest.approx(
        found.barriers["line"]["test"]["loss"] - found.barriers["aligned_line"]["test"]["loss"], rel=1e-6, abs=1e-9)
    assert np.isnan(table.values["aligned_barrier_test_loss"][rows[1]])  # a pair counts once, in its first row
    assert np.isnan(table.values["aligned_barrier_test_loss"][rows[2]])  # seed 2 has no partner
    finding = (path.parent / "finding.md")
    assert not finding.exists() or "aligned" in finding.read_text()


def test_the_level_interval_is_scipys_t_interval():
    values = np.array([0.01, 0.03, 0.02, 0.05])
    expected = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert t_interval(values) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("change, message", [
    (("branch_points = true\n", ""), "set branch_points = true"),
    (("values = [0, 0.5, 2]", "values = [0, 3]"), "branch epoch 3 under preset"),
    (("epochs = 2\nsnapshot_every = 1\n", "epochs = 4\nsnapshot_every = 3\n"), "pick kept epochs"),
    (("values = [0, 0.5, 2]", "values = [0, 2.5]"), "branch epoch 2.5 under preset .*pick one within them"),
    (("values = [0, 0.5, 2]", "values = [0, -1]"), "0 \\(initialisation\\) or more"),
    (("lrs = [0.05]", "lrs = [0.05, 0.1]"), "one lr"),
    (("values = [0, 0.5, 2]", "values = [0, 0.5, 2]\n[[axes]]\nname = \"width\"\nvalues = [0.1]"), "only axis"),
])
def test_a_bad_branching_spec_is_refused_with_its_line(tmp_path, change, message):
    spec_file = tmp_path / "bad.toml"
    spec_file.write_text(BRANCHING.replace(*change))
    with pytest.raises(UsageError, match=message) as caught:
        load_spec(spec_file)
    assert str(caught.value).startswith(f"{spec_file}:") and "\n" not in str(caught.value)
