"""Where researchers already work: the HuggingFace Trainer callback, tracker logging (TensorBoard, Lightning's
loggers, any callable), hub architectures by name, and surfaces exported for ParaView, CSV and NumPy."""
import csv
import json
import sys

import numpy as np
import pytest
import torch

import landscape
from tests.test_cli import checksums, landscape as cli
from tests.test_hardening import one_line_error


# ---------------------------------------------------------------- HuggingFace Trainer

def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=3,
                        attn_implementation="eager")  # torch's fused attention has no second derivative on CPU
    return BertForSequenceClassification(config)


class Tokens(torch.utils.data.Dataset):
    def __init__(self, count: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 64, (count, 12), generator=generator)
        self.labels = torch.randint(0, 3, (count,), generator=generator)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def train_bert(folder, callbacks=(), accumulate: int = 1):
    from transformers import Trainer, TrainingArguments

    model = tiny_bert()
    args = TrainingArguments(output_dir=str(folder), per_device_train_batch_size=8,
                             gradient_accumulation_steps=accumulate,
                             num_train_epochs=2, learning_rate=1e-3, logging_steps=1, eval_strategy="epoch",
                             save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(64, 1), eval_dataset=Tokens(32, 2),
                      callbacks=list(callbacks))
    trainer.train()
    return model, trainer


def test_the_hf_callback_records_the_trainers_losses_and_leaves_training_bit_identical(tmp_path, capsys):
    pytest.importorskip("transformers", reason="transformers is not installed: pip install -e '.[dev]'")
    from landscape.integrations.huggingface import HFCallback

    torch.set_num_threads(1)
    plain, _ = train_bert(tmp_path / "plain")
    path = tmp_path / "bert.h5"
    logged = []
    callback = HFCallback(path, probe_every=2, probe_multipliers=(0.5, 1, 2), sharpness_every=3,
                          sharpness_data="batch", sharpness_iters=4, log=lambda n, v, s: logged.append((n, v, s)))
    recorded, trainer = train_bert(tmp_path / "recorded", [callback])
    for name, tensor in plain.state_dict().items():  # the callback changed nothing of training
        assert torch.equal(tensor, recorded.state_dict()[name]), name
    run = landscape.read_run(path)
    trainer_losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert run.steps == trainer.state.global_step == 16  # 64 samples / 8 x 2 epochs
    assert np.allclose(run.train_loss[0], trainer_losses, rtol=1e-5)
    evaluations = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    assert np.allclose(run.epoch["test_loss"][0], evaluations)
    assert run.probe["loss"].shape == (1, 8, 3) and np.isfinite(run.probe["loss"]).all()
    assert run.sharpness["top"].shape[1] == 6 and np.isfinite(run.sharpness["top"]).all()
    names = {n for n, _, _ in logged}
    assert {"landscape/loss", "landscape/probe/beta", "landscape/sharpness"} <= names
    assert [v for n, v, _ in logged if n == "landscape/loss"] == pytest.approx(list(run.train_loss[0]), rel=1e-6)
    for command in (("info", path), ("plot", path, "--out", tmp_path / "fig"),
                    ("report", path, "--out", tmp_path / "r.html")):
        code, _, err = cli(*command, capsys=capsys)
        assert code in (0, None), err
    batch = [Tokens(16, 3)[:]]  # one dict batch; the API measures the trained model through its own loss
    closure = lambda model, b: model(**b).loss  # noqa: E731
    assert np.isfinite(landscape.surface(recorded, batch, closure=closure, grid="-1:1:3").loss).all()
    assert np.isfinite(landscape.hessian(recorded, batch, closure=closure, top_k=1, max_steps=6).eigenvalues).all()


def test_with_gradient_accumulation_an_hf_step_is_an_optimizer_step(tmp_path):
    pytest.importorskip("transformers", reason="transformers is not installed: pip install -e '.[dev]'")
    from landscape.integrations.huggingface import HFCallback

    _, trainer = train_bert(tmp_path, [HFCallback(tmp_path / "a.h5", probe_every=3)], accumulate=2)
    run = landscape.read_run(tmp_path / "a.h5")
    assert run.steps == trainer.state.global_step == 8 and run.probe["loss"].shape[1] == 3  # steps 0, 3, 6


def test_an_hf_callback_on_a_trainer_without_an_optimizer_is_one_line(tmp_path):
    pytest.importorskip("transformers", reason="transformers is not installed: pip install -e '.[dev]'")
    from landscape.errors import UsageError
    from landscape.integrations.huggingface import HFCallback

    with pytest.raises(UsageError, match="no model or optimizer"):
        HFCallback(tmp_path / "x.h5").on_train_begin(None, None, None, model=tiny_bert(), optimizer=None)
    assert not (tmp_path / "x.h5").exists()


HF_FAILING_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from tests.test_integrations import train_bert
from landscape.integrations.huggingface import HFCallback
from transformers import TrainerCallback

class Boom(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise RuntimeError("boom at step 3")

train_bert({folder!r}, [HFCallback({path!r}), Boom()])
"""


def test_an_hf_training_that_raises_leaves_its_file_failed_and_no_lock(tmp_path):
    """The Trainer tells callbacks nothing of an exception: the file is marked failed when the process exits (an
    uncaught exception, here in a child process) and when the same callback's next train() begins."""
    pytest.importorskip("transformers", reason="transformers is not installed: pip install -e '.[dev]'")
    import subprocess
    from pathlib import Path

    from transformers import TrainerCallback

    from landscape.integrations.huggingface import HFCallback

    path = tmp_path / "child.h5"
    script = HF_FAILING_SCRIPT.format(root=str(Path(__file__).resolve().parents[1]), folder=str(tmp_path / "c"),
                                      path=str(path))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "boom at step 3" in done.stderr
    run = landscape.read_run(path)
    assert run.attrs["status"] == "failed" and "process ended while training" in run.attrs["message"]
    assert not path.with_name(path.name + ".lock").exists() and not list(tmp_path.glob("*.lock"))

    class Boom(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise RuntimeError("boom at step 2")

    callback = HFCallback(tmp_path / "again.h5", overwrite=True)
    with pytest.raises(RuntimeError, match="boom at step 2"):
        train_bert(tmp_path / "a", [callback, Boom()])
    assert landscape.read_run(tmp_path / "again.h5").attrs["status"] == "running"  # no callback event said otherwise
    callback.close_failed()
    assert landscape.read_run(tmp_path / "again.h5").attrs["status"] == "failed"
    assert not (tmp_path / "again.h5.lock").exists()
    with pytest.raises(RuntimeError, match="boom at step 2"):
        train_bert(tmp_path / "a", [callback, Boom()])
    train_bert(tmp_path / "b", [callback])  # the same callback trains again: the raised one is closed, its lock freed
    assert landscape.read_run(tmp_path / "again.h5").attrs["status"] == "complete"


# ---------------------------------------------------------------- trackers

def recorded_loop(path, log):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 12), torch.randint(0, 3, (32,))
    with landscape.Recorder(path, model, optimizer, probe_every=2, sharpness_every=2, sharpness_data=(x, y),
                            sharpness_iters=4, log=log) as rec:
        for _ in range(2):
            for i in range(0, 32, 8):
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x[i:i + 8]), y[i:i + 8])
                loss.backward()
                optimizer.step()
                rec.step(loss, (x[i:i + 8], y[i:i + 8]))
            rec.epoch()
    return landscape.read_run(path)


def test_the_recorder_logs_to_tensorboard_what_it_writes_to_the_run_file(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed: pip install -e '.[dev]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))
    run = recorded_loop(tmp_path / "loop.h5", writer.add_scalar)
    writer.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    losses = events.Scalars("landscape/loss")
    assert [e.step for e in losses] == list(range(run.steps))
    assert np.allclose([e.value for e in losses], run.train_loss[0])
    sharp = events.Scalars("landscape/sharpness")
    assert [e.step for e in sharp] == list(run.sharpness["step"])
    assert np.allclose([e.value for e in sharp], run.sharpness["top"][0, :, 0], rtol=1e-6)
    threshold = events.Scalars("landscape/sharpness_threshold")  # SGD without momentum: 2/lr
    assert np.allclose([e.value for e in threshold], 2 / 0.1)
    beta = events.Scalars("landscape/probe/beta")
    assert np.allclose([e.value for e in beta], run.probe["beta"][0])


def test_a_log_that_is_not_callable_is_one_line(tmp_path):
    from landscape.errors import UsageError

    with pytest.raises(UsageError, match="log must be a callable"):
        recorded_loop(tmp_path / "x.h5", log="tensorboard")
    assert not (tmp_path / "x.h5").exists()


def test_the_lightning_callback_logs_to_the_trainers_loggers(tmp_path):
    pl = pytest.importorskip("lightning.pytorch", reason="Lightning is not installed: pip install -e '.[dev]'")
    from lightning.pytorch.loggers import CSVLogger

    class Linear(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(12, 3)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, index):
            return torch.nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 12), torch.randint(0, 3, (32,)))
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=CSVLogger(str(tmp_path), name="csv"),
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[landscape.LandscapeCallback(tmp_path / "l.h5", probe_every=2)])
    trainer.fit(Linear(), torch.utils.data.DataLoader(data, batch_size=8))
    run = landscape.read_run(tmp_path / "l.h5")
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    logged = {int(r["step"]): float(r["landscape/loss"]) for r in rows if r.get("landscape/loss")}
    assert sorted(logged) == list(range(run.steps))
    assert np.allclose([logged[s] for s in range(run.steps)], run.train_loss[0])
    assert any(r.get("landscape/probe/beta") for r in rows)


# ---------------------------------------------------------------- hub architectures by name

@pytest.fixture
def resnet_weights(tmp_path):
    import torchvision

    torch.manual_seed(0)
    path = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    (tmp_path / "models.py").write_text("import torchvision\n\ndef make(num_classes=10):\n"
                                        "    return torchvision.models.resnet18(num_classes=num_classes)\n")
    return path


def test_hub_names_build_the_architecture_a_factory_file_builds(resnet_weights, tmp_path, monkeypatch, capsys):
    from tests.test_hardening import cifar_folder

    root = cifar_folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    common = ("--weights", resnet_weights, "--dataset", "cifar10", "--data-root", root, "--images", "16", "--grid",
              "-1:1:2", "--device", "cpu", "--threads", "1", "--quiet")
    surfaces = {}
    hubs = ["models.py:make", "torchvision:resnet18"] + (["timm:resnet18"] if "timm" in sys.modules or
                                                          __import__("importlib").util.find_spec("timm") else [])
    for spec in hubs:
        out = tmp_path / f"{spec.replace(':', '_').replace('.', '_')}.h5"
        code, _, err = cli("surface", "--model-def", spec, *common, "--out", out, capsys=capsys)
        assert code in (0, None), err
        surfaces[spec] = landscape.read_surface(out).loss
    for spec in hubs[1:]:  # the same architecture and weights: the same surface, to float rounding
        assert np.allclose(surfaces[spec], surfaces["models.py:make"], rtol=1e-5), spec


@pytest.mark.parametrize("spec,expected", [("torchvision:resnet9000", "torchvision has no such model"),
                                           ("timm:no_such_net", "timm"), ("torchvision:", "name the architecture")])
def test_unknown_hub_names_are_one_line_and_write_nothing(resnet_weights, tmp_path, spec, expected, capsys):
    before = checksums(tmp_path)
    code, _, err = cli("hessian", "--model-def", spec, "--weights", resnet_weights, "--out", tmp_path / "h.h5",
                       capsys=capsys)
    assert expected in one_line_error(code, err)
    assert checksums(tmp_path) == before


# ---------------------------------------------------------------- export

@pytest.fixture(scope="module")
def surfaces(tmp_path_factory):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    data = (torch.randn(32, 6), torch.randint(0, 3, (32,)))
    folder = tmp_path_factory.mktemp("export")
    plane = landscape.surface(model, data, grid="-1:1:5", grid_y="-0.5:0.5:3").save(folder / "plane.h5")
    line = landscape.surface(model, data, dims=1, grid="-1:1:7").save(folder / "line.h5")
    return {"plane": plane, "line": line}


@pytest.mark.parametrize("kind", ["plane", "line"])
def test_a_vts_export_reads_back_in_vtk_with_the_exact_grid_and_values(surfaces, tmp_path, kind, capsys):
    pytest.importorskip("vtkmodules", reason="vtk is not installed: pip install -e '.[dev]'")
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkIOXML import vtkXMLStructuredGridReader

    source = surfaces[kind]
    for log_scale in (False, True):
        out = tmp_path / f"{kind}{log_scale}.vts"
        code, _, err = cli("export", source, "--out", out, *(["--log-scale"] if log_scale else []), capsys=capsys)
        assert code in (0, None), err
        reader = vtkXMLStructuredGridReader()
        reader.SetFileName(str(out))
        reader.Update()
        grid = reader.GetOutput()
        dims = [0, 0, 0]
        grid.GetDimensions(dims)
        surface = landscape.read_surface(source)
        y = surface.y if surface.y is not None else np.zeros(1)
        assert dims == [len(surface.x), len(y), 1]
        points = vtk_to_numpy(grid.GetPoints().GetData())
        assert np.array_equal(points[:, 0], np.tile(surface.x, len(y)))
        assert np.array_equal(points[:, 1], np.repeat(y, len(surface.x)))
        height = np.log(surface.loss.ravel()) if log_scale else surface.loss.ravel()
        assert np.array_equal(points[:, 2], height)
        data = grid.GetPointData()
        assert np.array_equal(vtk_to_numpy(data.GetArray("loss")), surface.loss.ravel())
        assert np.array_equal(vtk_to_numpy(data.GetArray("acc")), surface.acc.ravel())


def test_csv_and_npz_exports_round_trip(surfaces, tmp_path, capsys):
    surface = landscape.read_surface(surfaces["plane"])
    code, _, err = cli("export", surfaces["plane"], "--format", "csv", "--out", tmp_path / "p.csv", capsys=capsys)
    assert code in (0, None), err
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == surface.loss.size
    assert np.array_equal([float(r["loss"]) for r in rows], surface.loss.ravel())
    assert np.array_equal([float(r["x"]) for r in rows], np.tile(surface.x, len(surface.y)))
    code, _, err = cli("export", surfaces["plane"], "--format", "npz", "--out", tmp_path / "p.npz", capsys=capsys)
    assert code in (0, None), err
    arrays = np.load(tmp_path / "p.npz")
    assert np.array_equal(arrays["loss"], surface.loss) and np.array_equal(arrays["metric_acc"], surface.acc)
    assert json.loads(str(arrays["attributes"]))["directions"] == "random"


@pytest.mark.parametrize("args,expected", [
    (("--format", "obj"), "--format 'obj' is unknown"),
    (("--out", "{surface}"), "one of this command's inputs"),
    (("--out", "{folder}/taken.vts"), "already exists"),
])
def test_bad_exports_are_one_line_and_touch_nothing(surfaces, tmp_path, args, expected, capsys):
    import shutil

    surface = shutil.copy(surfaces["plane"], tmp_path / "plane.h5")
    (tmp_path / "taken.vts").write_text("mine")
    before = checksums(tmp_path)
    code, _, err = cli("export", surface, *[a.format(surface=surface, folder=tmp_path) for a in args], capsys=capsys)
    assert expected in one_line_error(code, err)
    assert checksums(tmp_path) == before
    code, _, err = cli("export", tmp_path / "taken.vts", capsys=capsys)
    assert "not an HDF5 file" in one_line_error(code, err)
