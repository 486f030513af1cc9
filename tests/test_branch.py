"""Branching a run (`landscape run --branch-from`): the parent's own order repeats it bit for bit, another order
differs from the first step after the branch, the child starts from the parent's snapshot, bad input is refused."""
import numpy as np
import pytest

from tests.test_cli import landscape


@pytest.fixture(scope="module", params=["loop", "fused"])
def parent(request, tmp_path_factory, tiny_config):
    """Two SGD-with-momentum runs, 3 epochs of 8 steps, the full state kept at every epoch and after steps 0, 3, 8
    and 13 (mid-epoch 2, not at a loss block's end: log_every is 3) (momentum makes the optimizer state matter: a
    branch that lost it would differ from the first step)."""
    from landscape.training.runner import train

    config = tiny_config(epochs=3, optimizer="sgd", lrs=(0.05, 0.02), snapshot_every=1, branch_points=True,
                         branch_steps=(0, 3, 8, 13), engine=request.param)
    return train(config, tmp_path_factory.mktemp(request.param) / "parent.h5", progress=False)


def branch(parent, out, *options, capsys):
    return landscape("run", "--branch-from", parent, "--lr", "0.02", *options, "--out", out, "--quiet",
                     capsys=capsys)


def same_snapshots(child, parent, checks: dict) -> None:
    """The child's snapshot at each epoch of `checks` equals the parent's run lr=0.02 there, by `checks[epoch]`."""
    from landscape.files.weights_file import read_weights, weights_path

    mine, theirs = read_weights(weights_path(child)), read_weights(weights_path(parent))
    for epoch, equal in checks.items():
        for name in theirs.names:
            assert equal(mine.state(epoch, 0)[name], theirs.state(epoch, 1)[name]), (epoch, name)


def test_the_parents_own_order_repeats_its_remaining_epochs_bit_for_bit(parent, tmp_path, capsys):
    from landscape.files.run_file import read_run
    from landscape.files.weights_file import read_weights, weights_path

    code, _, err = branch(parent, tmp_path / "same.h5", "--epoch", "1", "--data-seed", "0", capsys=capsys)
    assert code in (0, None), err
    mother, child = read_run(parent), read_run(tmp_path / "same.h5")
    assert child.lrs.tolist() == [0.02] and child.status == "complete"
    # the fused engine stacks R runs in one computation: a one-run child rounds differently in the last bits
    same = np.array_equal if "loop" in parent.parent.name else lambda a, b: np.allclose(a, b, rtol=1e-4, atol=1e-6)
    assert same(child.train_loss[0], mother.train_loss[1])
    for name in ("test_loss", "test_acc"):
        assert same(child.epoch[name][0], mother.epoch[name][1])
    assert (child.attrs["parent_file"], float(child.attrs["parent_lr"]), int(child.attrs["branch_epoch"]),
            int(child.attrs["branch_step"])) == (f"../{parent.parent.name}/parent.h5", 0.02, 1, mother.attrs["steps_per_epoch"])
    assert read_weights(weights_path(tmp_path / "same.h5")).epochs == [1, 2, 3]
    same_snapshots(tmp_path / "same.h5", parent, {1: np.array_equal, 3: same})  # from the parent's, to its end
    _, out, _ = landscape("info", tmp_path / "same.h5", capsys=capsys)
    assert "parent.h5 (its run lr=0.02) after epoch 1 (step 8); data order seed 0" in out


@pytest.mark.parametrize("point, first", [(("--epoch", "1"), 8), (("--step", "13"), 13)])
def test_another_data_order_differs_from_the_first_step_after_the_branch(parent, tmp_path, capsys, point, first):
    from landscape.files.run_file import read_run

    code, _, err = branch(parent, tmp_path / "other.h5", *point, "--data-seed", "7", capsys=capsys)
    assert code in (0, None), err
    mother, child = read_run(parent), read_run(tmp_path / "other.h5")
    assert mother.attrs["steps_per_epoch"] == 8
    assert np.array_equal(child.train_loss[0, :first], mother.train_loss[1, :first])  # the parent's steps, copied
    assert child.train_loss[0, first] != mother.train_loss[1, first]
    assert int(child.attrs["data_seed"]) == 7


def test_a_branch_at_the_last_epoch_is_the_parents_final_model(parent, tmp_path, capsys):
    from landscape.files.weights_file import read_weights, weights_path

    code, _, err = branch(parent, tmp_path / "end.h5", "--epoch", "3", "--data-seed", "4", capsys=capsys)
    assert code in (0, None), err
    mine, theirs = read_weights(weights_path(tmp_path / "end.h5")), read_weights(weights_path(parent))
    assert mine.epochs == [3]
    for name in theirs.names:
        assert np.array_equal(mine.state(3, 0)[name], theirs.state(3, 1)[name])


def test_keeping_states_mid_epoch_leaves_the_parent_unchanged(parent, tmp_path, tiny_config):
    from landscape.files.run_file import read_run
    from landscape.files.weights_file import read_weights, weights_path
    from landscape.training.config import RunConfig
    from landscape.training.runner import train

    config = RunConfig.from_json(read_run(parent).attrs["config"])
    plain = train(tiny_config(**{**vars(config), "branch_steps": (), "extra": {}}), tmp_path / "plain.h5",
                  progress=False)
    kept, alone = read_run(parent), read_run(plain)
    assert np.array_equal(kept.train_loss, alone.train_loss) and np.array_equal(kept.epoch["test_loss"],
                                                                               alone.epoch["test_loss"])
    final = read_weights(weights_path(parent)), read_weights(weights_path(plain))
    for name in final[0].names:
        assert np.array_equal(final[0].state(3, 1)[name], final[1].state(3, 1)[name]), name
    assert sorted(p.name for p in parent.parent.glob("parent.h5.step_*.ckpt")) == [
        f"parent.h5.step_{s:07d}.ckpt" for s in (0, 3, 8, 13)]


def test_a_mid_epoch_branch_with_the_parents_order_repeats_its_remaining_steps(parent, tmp_path, capsys):
    from landscape.files.run_file import read_run
    from landscape.files.weights_file import read_weights, weights_path

    code, _, err = branch(parent, tmp_path / "mid.h5", "--step", "13", "--data-seed", "0", capsys=capsys)
    assert code in (0, None), err
    mother, child = read_run(parent), read_run(tmp_path / "mid.h5")
    same = np.array_equal if "loop" in parent.parent.name else lambda a, b: np.allclose(a, b, rtol=1e-4, atol=1e-6)
    assert np.array_equal(child.train_loss[0, :13], mother.train_loss[1, :13])  # the parent's steps, copied
    assert same(child.train_loss[0], mother.train_loss[1]) and child.train_loss.shape[1] == 24
    for name in ("test_loss", "test_acc", "train_acc"):
        assert same(child.epoch[name][0, 1:], mother.epoch[name][1, 1:]), name
    assert read_weights(weights_path(tmp_path / "mid.h5")).epochs == [2, 3]  # none at the branch point (mid-epoch)
    same_snapshots(tmp_path / "mid.h5", parent, {2: same, 3: same})
    assert (int(child.attrs["branch_epoch"]), int(child.attrs["branch_step"])) == (1, 13)
    _, out, _ = landscape("info", tmp_path / "mid.h5", capsys=capsys)
    assert "(its run lr=0.02) after step 13 (in epoch 2); data order seed 0" in out


def test_a_step_that_ends_an_epoch_branches_as_that_epoch_does(parent, tmp_path, capsys):
    from landscape.files.run_file import read_run

    for option, value, name in (("--step", "8", "by_step.h5"), ("--epoch", "1", "by_epoch.h5")):
        code, _, err = branch(parent, tmp_path / name, option, value, "--data-seed", "5", capsys=capsys)
        assert code in (0, None), err
    by_step, by_epoch = read_run(tmp_path / "by_step.h5"), read_run(tmp_path / "by_epoch.h5")
    assert np.array_equal(by_step.train_loss, by_epoch.train_loss)
    assert np.array_equal(by_step.epoch["test_loss"], by_epoch.epoch["test_loss"])


@pytest.mark.parametrize("options, message", [
    (("--epoch", "5", "--data-seed", "1"), "past"),
    (("--epoch", "1"), "needs --epoch K or --step S"),
    (("--epoch", "1", "--step", "3", "--data-seed", "1"), "one of them"),
    (("--step", "5", "--data-seed", "1"), "kept its state after steps 0, 3, 8, 13; pick one of those"),
    (("--step", "99", "--data-seed", "1"), "(it trained 24 steps)"),
    (("--epoch", "1", "--data-seed", "1", "--batch-size", "64"), "--batch-size 64 (the parent has 32)"),
    (("--epoch", "1", "--data-seed", "1", "--lrs", "0.1"), "drop --resume and --lrs"),
])
def test_bad_branches_are_refused_in_one_line_and_write_nothing(parent, tmp_path, capsys, options, message):
    code, _, err = branch(parent, tmp_path / "child.h5", *options, capsys=capsys)
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir())


def test_a_branch_never_writes_over_its_parent_and_needs_kept_states(parent, tiny_run, tmp_path, capsys):
    before = parent.read_bytes()
    code, _, err = branch(parent, parent, "--epoch", "1", "--data-seed", "1", "--overwrite", capsys=capsys)
    assert code == 2 and "inputs" in err and parent.read_bytes() == before
    code, _, err = landscape("run", "--branch-from", tiny_run, "--lr", "1e-3", "--epoch", "1", "--data-seed", "1",
                             "--out", tmp_path / "c.h5", capsys=capsys)
    assert code == 2 and "kept no branch points: rerun it with --branch-points" in err
    code, _, err = landscape("run", "--branch-from", tiny_run, "--lr", "1e-3", "--step", "3", "--data-seed", "1",
                             "--out", tmp_path / "c.h5", capsys=capsys)
    assert code == 2 and "kept no step branch points: rerun it with --branch-steps" in err
    code, _, err = landscape("run", "--lr", "1e-3", "--epoch", "1", "--out", tmp_path / "c.h5", capsys=capsys)
    assert code == 2 and "--branch-from" in err
