"""The `landscape` command end to end, its one-line errors, and what it imports."""
import csv
import hashlib
import subprocess
import sys

import h5py
import numpy as np
import pytest

from landscape.cli.main import main


def landscape(*args, capsys=None):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr() if capsys else ("", "")
    return exit_info.value.code, out, err


@pytest.mark.slow
def test_run_plot_info_on_real_cifar(tmp_path, cifar_root, capsys):
    common = ["--lrs", "1e-3,5e-4", "--width", "0.125", "--epochs", "1", "--train-subset", "512",
              "--data-root", cifar_root, "--quiet"]
    for model in ("vgg", "vgg_bn"):
        code, out, _ = landscape("run", "--model", model, "--out", tmp_path / f"{model}.h5", *common, capsys=capsys)
        assert code == 0 and out == ""  # --quiet: nothing but errors
    code, out, _ = landscape("plot", tmp_path / "vgg.h5", tmp_path / "vgg_bn.h5", "--out", tmp_path / "fig",
                             capsys=capsys)
    assert code == 0
    written = out.split()
    for stem in ("vgg_per_rate", "vgg_bn_per_rate", "vgg_vs_vgg_bn_envelope", "vgg_vs_vgg_bn_range"):
        for ext in ("png", "pdf", "csv"):
            assert str(tmp_path / "fig" / f"{stem}.{ext}") in written
    # the envelope CSV holds numpy's min and max over the rates of each file
    with open(tmp_path / "fig" / "vgg_vs_vgg_bn_envelope.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["label", "step", "min", "max", "range"]
    with h5py.File(tmp_path / "vgg_bn.h5", "r") as f:
        loss = f["train/loss"][...].astype(np.float64)
    mine = [r for r in rows if r["label"] == "vgg_bn"]
    assert len(mine) == loss.shape[1] == 4
    assert np.allclose([float(r["min"]) for r in mine], loss.min(axis=0))
    assert np.allclose([float(r["max"]) for r in mine], loss.max(axis=0))
    code, out, _ = landscape("info", tmp_path / "vgg_bn.h5", capsys=capsys)
    assert code == 0
    assert "vgg_bn" in out and "1/1 epochs" in out and "complete" in out
    with h5py.File(tmp_path / "vgg_bn.h5", "r") as f:
        assert f"{100 * f['epoch/test_acc'][0, -1]:.2f}%" in out


def checksums(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


BAD_COMMANDS = [
    ("run", "--lrs", "1e-3,,x"),
    ("run", "--lrs", "-1"),
    ("run", "--lrs", "0"),
    ("run", "--lrs", ""),
    ("run", "--model", "resnet9000"),
    ("run", "--epochs", "zero"),
    ("run", "--batch-size", "0"),
    ("run", "--dataset", "mnist"),
    ("run", "--optimizer", "lbfgs"),
    ("run", "--no-such-option"),
    ("run", "--data-root", "{tmp}/nowhere", "--out", "{tmp}/new.h5"),
    ("run", "--dataset", "synthetic", "--out", "{tmp}/existing.h5"),
    ("run", "--dataset", "synthetic", "--out", "{tmp}/notes.txt/run.h5"),
    ("run", "--dataset", "synthetic", "--out", "{tmp}"),
    ("plot",),
    ("plot", "{tmp}/missing.h5"),
    ("plot", "{tmp}/notes.txt"),
    ("plot", "{tmp}/foreign.h5"),
    ("info", "{tmp}/notes.txt"),
    ("info", "{tmp}/foreign.h5"),
    ("plot", "{tmp}/existing.h5", "--smooth", "0"),
    ("nonsense",),
    ("run", "--model", "vgg", "--norm", "in"),
    ("run", "--model", "resnet20", "--norm", "group"),
    ("run", "--model", "resnet20", "--pretrained"),
    ("run", "--schedule", "multistep"),
    ("run", "--schedule", "cosine", "--milestones", "a,b"),
    ("run", "--branch-steps", "8,4"),
    ("run", "--dataset", "synthetic", "--train-subset", "64", "--epochs", "1", "--branch-steps", "0,5",
     "--out", "{tmp}/new.h5"),
    ("run", "--augment", "sparkle"),
    ("run", "--dropout", "1.5", "--model", "resnet20"),
    ("run", "--label-smoothing", "-0.1"),
    ("run", "--config", "{tmp}/missing.toml"),
    ("run", "--config", "{tmp}/notes.txt"),
    ("run", "--dataset", "imagefolder", "--data-root", "{tmp}", "--out", "{tmp}/new.h5"),
    ("run", "--probe-every", "-1"),
    ("run", "--probe-multipliers", "1:2"),
    ("run", "--resume", "{tmp}/missing.h5"),
    ("run", "--resume", "{tmp}/notes.txt"),
    ("run", "--resume", "{tmp}/foreign.h5"),
    ("run", "--resume", "{tmp}/existing.h5", "--out", "{tmp}/other.h5"),
    ("run", "--checkpoint-every", "-1"),
    ("info",),
    ("plot", "{tmp}/foreign.h5", "{tmp}/notes.txt"),
    ("ablate", "run"),
    ("ablate", "run", "no_such_spec"),
    ("ablate", "run", "cifar10_resnet18_stem", "--jobs", "0"),
    ("ablate", "run", "--all", "--preset", "medium"),
    ("ablate", "table", "cifar10_resnet18_stem", "--all"),
    ("ablate", "table", "{tmp}/notes.txt"),
]


@pytest.mark.parametrize("args", BAD_COMMANDS, ids=[" ".join(a) for a in BAD_COMMANDS])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(tmp_path, args, capsys):
    (tmp_path / "existing.h5").write_bytes(b"an older run")
    (tmp_path / "notes.txt").write_text("not a run file")
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["data"] = np.arange(3)
    before = checksums(tmp_path)
    code, out, err = landscape(*[a.format(tmp=tmp_path) for a in args], capsys=capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "error" in err and "Traceback" not in err
    assert checksums(tmp_path) == before


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["plot", "{run}"], ["info", "{run}"],
                                  ["ablate", "list"], ["ablate", "table", "cifar10_resnet18_stem", "--results", "abl"],
                                  ["report", "{run}", "--out", "r.html"], ["report", "{run}", "--markdown", "--out", "r.md"]])
def test_reading_commands_do_not_import_torch(tmp_path, tiny_run, argv):
    argv = [a.format(run=tiny_run) for a in argv]
    code = ("import sys\nfrom landscape.cli.main import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env={"PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1]),
                                 "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MPLCONFIGDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_python_dash_m_works():
    result = subprocess.run([sys.executable, "-m", "landscape", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "landscape" in result.stdout
