"""One check of a GPU machine: a smoke test of every CUDA path, then every speed benchmark at full size.

    python benchmarks/device_check.py --out $OUT [--data-root data] [--dry-run]

Smoke tests train small runs on the device and compare each path with the fp32 loop engine on the
same batches: fp32 paths (fused, channels_last, compile) to float rounding, bf16 paths within the
tolerance below; probes looped against batched; resume after SIGTERM against an uninterrupted run; a
branch with the parent's own data order against the parent (after an epoch, and mid-epoch after step 1);
surfaces and Hessians on the device against the same computation on the CPU. Each is pass or fail
with its error, never stopping the others. Then the benchmarks run as subprocesses with time
limits (bench_speed at full width on 50,000 images: the shared CIFAR subset repeated). Results go
to OUT/device_check.md (tables) and OUT/device_check.json. `--dry-run` does all of it on the CPU at
tiny sizes, so the script is tested on every CI run and cannot rot between GPU loans.

Tolerances. fp32 paths: the first step's loss (same weights, same batch; only the order of floating
point sums differs) within 1e-4 relative, and the mean training loss of the run within 2%
(trajectories drift apart from rounding differences). bf16 autocast: the first step within 2% (bf16
keeps 8 significant bits, about 0.4% per rounding, and a loss sums thousands of rounded products),
the run's mean loss within 5%, which is the seed-to-seed spread of these short runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from landscape.training.config import RunConfig  # noqa: E402
from landscape.files.run_file import read_run  # noqa: E402
from landscape.training.runner import resume, train  # noqa: E402

FP32 = {"first": 1e-4, "mean": 0.02}
BF16 = {"first": 0.02, "mean": 0.05}


class Checks:
    """Runs named checks, records pass/fail, seconds and the error or detail of each."""

    def __init__(self):
        self.rows: list[dict] = []

    def run(self, name: str, check) -> None:
        start = time.perf_counter()
        try:
            detail = check() or ""
            status = "pass"
        except Exception as exc:  # a failing path is reported, the others go on
            status, detail = "FAIL", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            traceback.print_exc()
        self.rows.append({"check": name, "status": status, "seconds": round(time.perf_counter() - start, 2),
                          "detail": detail})
        print(f"[{status}] {name} ({self.rows[-1]['seconds']}s) {detail}", flush=True)


def compare(reference, other, tolerance: dict, what: str) -> str:
    """Raise AssertionError unless the first step and the mean loss agree within `tolerance`."""
    a, b = reference.train_loss.astype(np.float64), other.train_loss.astype(np.float64)
    first = np.max(np.abs(a[:, 0] - b[:, 0]) / np.abs(a[:, 0]))
    mean = np.max(np.abs(np.nanmean(a, axis=1) - np.nanmean(b, axis=1)) / np.abs(np.nanmean(a, axis=1)))
    if not (first <= tolerance["first"] and mean <= tolerance["mean"]):
        raise AssertionError(f"{what}: first-step difference {first:.2e} (allowed {tolerance['first']:g}), "
                             f"mean-loss difference {mean:.2e} (allowed {tolerance['mean']:g})")
    return f"first step {first:.1e}, mean loss {mean:.1e}"


def smoke_tests(folder: Path, base: RunConfig, checks: Checks, dry_run: bool) -> None:
    runs: dict[str, object] = {}

    def trained(name: str, config: RunConfig):
        runs[name] = read_run(train(config, folder / f"{name}.h5", progress=False))
        return runs[name]

    checks.run("loop fp32 (reference)", lambda: f"final loss {trained('loop', base).epoch['train_loss'][:, -1]}")
    variants = {
        "loop bf16": (dict(precision="bf16"), BF16),
        "loop channels_last": (dict(channels_last=True), FP32),
        "loop bf16 channels_last": (dict(precision="bf16", channels_last=True), BF16),
        "loop compile": (dict(compile=True), FP32),
        "fused fp32": (dict(engine="fused"), FP32),
        "fused bf16": (dict(engine="fused", precision="bf16"), BF16),
    }
    if dry_run:  # torch.compile takes a minute on a CPU; the test suite checks it separately
        variants.pop("loop compile")
    for name, (overrides, tolerance) in variants.items():
        checks.run(name, lambda o=overrides, t=tolerance, n=name:
                   compare(runs["loop"], trained(n.replace(" ", "_"), replace(base, **o)), t, n))

    def probes() -> str:
        looped = trained("probes", replace(base, probe_every=5))
        batched = trained("probes_batched", replace(base, probe_every=5, probe_batch=True))
        fused = trained("probes_fused", replace(base, probe_every=5, engine="fused"))
        compare(runs["loop"], looped, FP32, "training with probes")
        for name, other in (("batched", batched), ("fused", fused)):
            diff = np.nanmax(np.abs(other.probe["loss"][:, :1] - looped.probe["loss"][:, :1]) /
                             np.abs(looped.probe["loss"][:, :1]))
            if not diff <= 1e-3:
                raise AssertionError(f"{name} probes differ from looped ones by {diff:.2e} at the first probe")
        return f"{len(looped.probe['step'])} probes; batched and fused agree at the first probe"

    checks.run("probes looped, batched, fused", probes)

    def sigterm_resume() -> str:
        import landscape.training.runner as training

        whole = runs["loop"]
        original = training.LockstepRuns.train_step
        calls = []

        def interrupting(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                signal.raise_signal(signal.SIGTERM)
            return original(self, *args, **kwargs)

        training.LockstepRuns.train_step = interrupting
        try:
            train(base, folder / "cut.h5", progress=False)
        except Exception as exc:
            if "resume with" not in str(exc):
                raise
        finally:
            training.LockstepRuns.train_step = original
        resume(folder / "cut.h5", progress=False)
        cut = read_run(folder / "cut.h5")
        identical = np.array_equal(cut.train_loss, whole.train_loss)
        if not identical:
            compare(whole, cut, FP32, "resumed run")
        return "bit-identical to the uninterrupted run" if identical else "within fp32 tolerance (not bit-identical)"

    checks.run("resume after SIGTERM", sigterm_resume)

    def branching() -> str:
        from landscape.training.branch import branch

        said = []
        for engine in ("loop", "fused"):
            parent = replace(base, engine=engine, optimizer="sgd", snapshot_every=1, branch_points=True,
                             branch_steps=(1,))
            whole = read_run(train(parent, folder / f"parent_{engine}.h5", progress=False))
            for point in ({"epoch": 1}, {"step": 1}):  # after an epoch, and after the first step (mid-epoch)
                name = "_".join(f"{k}{v}" for k, v in point.items())
                child = read_run(branch(folder / f"parent_{engine}.h5", folder / f"child_{engine}_{name}.h5",
                                        **point, data_seed=parent.seed, lr=parent.lrs[1], progress=False))
                same = np.array_equal(child.train_loss[0], whole.train_loss[1])
                if not same and not np.allclose(child.train_loss[0], whole.train_loss[1], rtol=1e-4, atol=1e-6):
                    raise AssertionError(f"{engine}: the branch at {name} with the parent's order left it")
                said.append(f"{engine} at {name} {'bit-identical' if same else 'within 1e-4'}")
        return "child with the parent's order: " + ", ".join(said)

    checks.run("branch a run (loop, fused)", branching)

    def branching_study() -> str:
        from landscape.ablations.measure import measure_spec
        from landscape.ablations.runner import plan, run_in_waves, run_jobs
        from landscape.ablations.spec import load_spec
        from landscape.engine.measures import MeasureOptions
        from landscape.files.measures_file import read_measures

        spec_file = folder / "instability.toml"
        spec_file.write_text(
            f'title = "device check"\nsource = "device check"\nmetrics = ["final_test_acc"]\n[base]\n'
            f'model = "vgg_bn"\ndataset = "cifar10"\ndata_root = "{base.data_root}"\nwidth = 0.0625\n'
            f'lrs = [0.05]\noptimizer = "sgd"\ntrain_subset = 256\nepochs = 2\nsnapshot_every = 1\n'
            f'branch_points = true\ndevice = "{base.device}"\n[[axes]]\nname = "branch_epoch"\nvalues = [0, 0.5, 2]\n')
        spec = load_spec(spec_file)
        counts = run_in_waves(plan(spec, "full", 1, folder / "studies"),
                              lambda wave: run_jobs(wave, 1, report=lambda line: None, progress=False))
        if counts.get("failed"):
            raise AssertionError(f"branching spec: {counts}")
        table = read_measures(measure_spec(spec, "full", folder / "studies", MeasureOptions(("barrier_aligned",)),
                                           images=128, test_images=128, report=lambda line: None))
        late = table.values["barrier_test_acc"][table.cells.index("2 seed0")]
        if late != 0:
            raise AssertionError(f"two children of the last epoch differ: barrier {late}")
        early = table.values["aligned_barrier_test_loss"][table.cells.index("0 seed0")]
        return (f"parents then children (k = 0, 1/2, 2 epochs); pairs measured (aligned barrier at k=0: {early:.3g}; "
                f"at the last epoch: 0)")

    checks.run("branching study: children, pair barriers (ablate)", branching_study)

    def sharpness() -> str:
        tracked = trained("sharpness", replace(base, sharpness_every=5,
                                                    sharpness_images=min(256, base.train_subset), sharpness_iters=8))
        compare(runs["loop"], tracked, FP32, "training with sharpness")
        return f"top eigenvalues at step 0: {tracked.sharpness['top'][:, 0, 0]}"

    checks.run("sharpness tracking", sharpness)

    def surface(precision: str, tolerance: float) -> str:
        from landscape.commands.surface import SurfaceOptions, compute_surface
        from landscape.files.surface_file import read_surface

        options = dict(lr=base.lrs[0], grid="-1:1:3", images=min(512, base.train_subset))
        gpu = read_surface(compute_surface(folder / "loop.h5", SurfaceOptions(**options, device=base.device,
                                                                               precision=precision),
                                           folder / f"surface_{precision}.h5", progress=False))
        cpu = read_surface(compute_surface(folder / "loop.h5", SurfaceOptions(**options, device="cpu",
                                                                               precision="fp32"),
                                           folder / f"surface_cpu_{precision}.h5", progress=False))
        diff = np.max(np.abs(gpu.loss - cpu.loss) / np.abs(cpu.loss))
        if not diff <= tolerance:
            raise AssertionError(f"surface on {base.device} ({precision}) differs from the CPU's by {diff:.2e}")
        return f"{gpu.attrs['points_per_pass']} points per pass; relative difference to CPU {diff:.1e}"

    checks.run("surface fp32 vs CPU", lambda: surface("fp32", 1e-3))
    checks.run("surface bf16 vs CPU", lambda: surface("bf16", BF16["first"]))

    def hessian() -> str:
        from landscape.commands.hessian import HessianOptions, compute_hessian
        from landscape.files.hessian_file import read_hessian

        values = {}
        for device in dict.fromkeys((base.device, "cpu")):
            for method in ("double-backward", "forward-over-reverse"):
                options = HessianOptions(lr=str(base.lrs[0]), top_k=2, images=min(128, base.train_subset),
                                         device=device, hvp=method, tol=1e-5, max_steps=40 if not dry_run else 20,
                                         trace=True, trace_samples=6 if not dry_run else 3, density=True,
                                         density_steps=10 if not dry_run else 5)
                out = compute_hessian(folder / "loop.h5", options, folder / f"h_{device}_{method}.h5",
                                      progress=False)
                values[(device, method)] = read_hessian(out).arrays["eigenvalues"][0, 0]
        reference = values[("cpu", "double-backward")]
        worst = max(np.max(np.abs(v - reference) / np.abs(reference)) for v in values.values())
        if not worst <= 1e-3:
            raise AssertionError(f"top eigenvalues disagree across devices and methods by {worst:.2e}: {values}")
        return f"top-2 {reference}, largest relative difference {worst:.1e}"

    checks.run("hessian both HVP methods vs CPU", hessian)

    def api() -> str:
        import torch.nn.functional as F
        import torchvision

        import landscape

        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=10) if not dry_run else torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(), torch.nn.Linear(8, 10))
        x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
        here = landscape.surface(model, (x, y), grid="-1:1:3", device="cpu")
        there = landscape.surface(model.to(base.device), (x, y), grid="-1:1:3", precision="fp32")
        surface_diff = np.max(np.abs(here.loss - there.loss) / np.abs(here.loss))
        last = [n for n, _ in model.named_parameters()][-2].rsplit(".", 1)[0] + ".*"  # the classifier's block
        spectra = [landscape.hessian(model.to(d), (x, y), params=last, top_k=2, tol=1e-6, max_steps=40).eigenvalues
                   for d in dict.fromkeys(("cpu", base.device))]
        hessian_diff = np.max(np.abs(spectra[-1] - spectra[0]) / np.abs(spectra[0]))
        probe = landscape.probe(model.to(base.device), (x, y), "gradient", lr=0.1)
        if not (surface_diff <= 1e-3 and hessian_diff <= 1e-3 and np.isfinite(probe.beta)):
            raise AssertionError(f"API on {base.device} against CPU: surface {surface_diff:.1e}, per-layer "
                                 f"Hessian {hessian_diff:.1e}, probe beta {probe.beta}")
        model = model.to(base.device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        xs, ys = x.to(base.device), y.to(base.device)
        with landscape.Recorder(folder / "recorded.h5", model, optimizer, probe_every=2, sharpness_every=2,
                                sharpness_data=(xs, ys), overwrite=True) as rec:
            losses = []
            for _ in range(4):
                optimizer.zero_grad()
                loss = F.cross_entropy(model(xs), ys)
                loss.backward()
                optimizer.step()
                rec.step(loss, (xs, ys))
                losses.append(loss.detach())
        recorded = read_run(folder / "recorded.h5")
        if not np.array_equal(recorded.train_loss[0], torch.stack(losses).cpu().numpy()):
            raise AssertionError("the Recorder's losses differ from the loop's")
        return (f"surface vs CPU {surface_diff:.1e}, classifier-block Hessian vs CPU {hessian_diff:.1e}, probe and "
                f"Recorder (probes, sharpness {recorded.sharpness['top'][0, :, 0].round(3)}) on {base.device}")

    checks.run("API surface/hessian/probe and Recorder", api)

    def operators_and_connect() -> str:
        import landscape

        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
        x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
        diffs = {}
        for operator in ("ggn", "fisher"):
            values = [landscape.hessian(model.to(d), (x, y), operator=operator, bn="eval", top_k=2, tol=1e-6,
                                        max_steps=40).eigenvalues for d in dict.fromkeys(("cpu", base.device))]
            diffs[operator] = float(np.max(np.abs(values[-1] - values[0]) / np.abs(values[0])))
        b_state = {n: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
                   for n, v in model.cpu().state_dict().items()}
        paths = [landscape.connect(model.to(d), {n: v.to(d) for n, v in b_state.items()}, (x, y), points=3,
                                   align="weights", curve="bezier", curve_epochs=1)
                 for d in dict.fromkeys(("cpu", base.device))]
        connect_diff = float(np.max(np.abs(paths[-1].values["line"]["train"]["loss"] -
                                           paths[0].values["line"]["train"]["loss"])))
        measured = [landscape.measures(model.to(d), (x, y), measures="worst,average,li,norms", rho=0.05,
                                       steps=3, samples=3).values for d in dict.fromkeys(("cpu", base.device))]
        diffs["measures"] = float(max(abs(measured[-1][k] - measured[0][k]) / max(abs(measured[0][k]), 1e-6)
                                      for k in measured[0]))
        bounds = landscape.measures(model.to(base.device), (x.to(base.device), y.to(base.device)),
                                    measures="pacbayes,jiang,hessian_top,spectral,path_norm,noise_scale", steps=2,
                                    draws=2, tolerance=0.5, bn="eval").values
        if not all(np.isfinite(v) for v in bounds.values()):
            raise AssertionError(f"the generalization measures on {base.device} are not all finite: {bounds}")
        criterion = trained("criterion", replace(base, engine="fused", until_train_acc=0.2))
        if criterion.criterion is None:
            raise AssertionError("the run to a criterion recorded no /criterion group")
        tracked = trained("critical", replace(base, sharpness_every=5, sharpness_method="critical",
                                              sharpness_images=min(256, base.train_subset)))
        compare(runs["loop"], tracked, FP32, "training with critical sharpness")
        if not (max(diffs.values()) <= 1e-2 and connect_diff <= 1e-3):
            raise AssertionError(f"on {base.device} against CPU: GGN {diffs['ggn']:.1e}, Fisher {diffs['fisher']:.1e}, "
                                 f"measures {diffs['measures']:.1e}, connect line {connect_diff:.1e}")
        return (f"GGN vs CPU {diffs['ggn']:.1e}, Fisher vs CPU {diffs['fisher']:.1e}, measures vs CPU "
                f"{diffs['measures']:.1e}, connect line vs CPU {connect_diff:.1e}; critical sharpness at step 0: "
                f"{tracked.sharpness['top'][:, 0, 0]}; PAC-Bayes sigma {bounds['pacbayes_sigma']:.3g}, noise scale "
                f"{bounds['grad_noise_scale']:.3g}; criterion met at epochs {criterion.criterion['met_epoch']}")

    checks.run("GGN/Fisher operators, measures (the bounds and norms too), connect, critical sharpness, training to a "
               "criterion (fused)", operators_and_connect)

    def ray_surface() -> str:
        from landscape.commands.surface import SurfaceOptions, compute_surface
        from landscape.engine.executors import RayExecutor
        from landscape.files.surface_file import read_surface

        options = dict(lr=base.lrs[0], grid="-1:1:3", images=min(256, base.train_subset), device=base.device,
                       precision="fp32", threads=1)
        here = read_surface(compute_surface(folder / "loop.h5", SurfaceOptions(**options), folder / "here.h5",
                                            progress=False))
        gpus = 0.5 if base.device == "cuda" else 0
        executor = RayExecutor(workers=2, cpus_per_worker=1, gpus_per_worker=gpus, points_per_task=2)
        there = read_surface(compute_surface(folder / "loop.h5", SurfaceOptions(**options), folder / "ray.h5",
                                             progress=False, executor=executor))
        diff = np.max(np.abs(here.loss - there.loss) / np.abs(here.loss))
        if not diff <= 1e-4:
            raise AssertionError(f"the Ray surface differs from the one in process by {diff:.1e}")
        return f"2 workers x {gpus:g} GPU; relative difference to in process {diff:.1e}"

    checks.run("ray surface vs in process", ray_surface)


def benchmarks(data_root: Path, folder: Path, dry_run: bool, device: str) -> list[dict]:
    """Each benchmark script as a subprocess with a time limit; its printed table is kept."""
    from common import repeated_cifar

    full = not dry_run
    big_root = repeated_cifar(data_root, 50_000 if full else 1024, folder / "cifar50k") if full else data_root
    python = sys.executable
    size = (["--width", "1", "--train-subset", "50000", "--repeats", "1"] if full else
            ["--width", "0.0625", "--train-subset", "256", "--repeats", "1", "--lrs", "1e-3,5e-4"])
    plan = [
        ("speed: course baseline, loop, fused (bf16 autocast on CUDA)", 90,
         [python, "benchmarks/bench_speed.py", "--device", device, "--data-root", str(big_root), *size]),
        ("probes: 8 multipliers every 10 steps, batched", 30 if full else 60,
         [python, "benchmarks/bench_probe.py", "--device", device, "--data-root", str(data_root), "--probe-batch",
          *(["--width", "1", "--train-subset", "5085", "--repeats", "1"] if full else
            ["--width", "0.0625", "--train-subset", "256", "--repeats", "1"])]),
        ("surface: full width, 10,000 images, 11x11 (51x51 projected)", 45 if full else 60,
         [python, "benchmarks/bench_surface.py", "--device", device, "--data-root", str(data_root),
          *(["--width", "1", "--grid=-1:1:11", "--images", "10000", "--precision", "bf16", "--skip-reference"]
            if full else ["--width", "0.0625", "--grid=-1:1:3", "--images", "128"])]),
        ("surface: against the reference loop (small grid)", 30 if full else 60,
         [python, "benchmarks/bench_surface.py", "--device", device, "--data-root", str(data_root),
          *(["--width", "1", "--grid=-1:1:3", "--images", "10000", "--precision", "fp32"] if full else
            ["--width", "0.0625", "--grid=-1:1:2", "--images", "128"])]),
        ("hessian: HVP methods, sharpness cost", 45 if full else 90,
         [python, "benchmarks/bench_hessian.py", "--device", device, "--data-root", str(data_root),
          "--skip", "pyhessian",
          *(["--width", "1", "--images", "4096", "--sharpness-subset", "5085"] if full else
            ["--width", "0.0625", "--images", "64", "--sharpness-subset", "128", "--sharpness-every", "4",
             "--sharpness-images", "32"])]),
        ("api: torchvision resnet18 surface vs loss-landscapes and the reference; Recorder overhead", 40 if full else 90,
         [python, "benchmarks/bench_api.py", "--device", device, "--data-root", str(data_root),
          *(["--images", "1000", "--steps", "11", "--loop-images", "5085"] if full else
            ["--images", "32", "--steps", "2", "--loop-images", "128", "--repeats", "1", "--model", "tiny"])]),
        ("ray surface: 1 worker of a GPU against 4 of 0.25 (11x11, full width)", 40 if full else 90,
         [python, "benchmarks/bench_ray_surface.py", "--device", device, "--data-root", str(data_root),
          *(["--width", "1", "--grid=-1:1:11", "--images", "10000", "--workers", "4", "--gpus-per-worker", "0.25",
             "--single-gpu-workers", "1"] if full else ["--width", "0.0625", "--grid=-1:1:3", "--images", "128",
                                                       "--workers", "2"])]),
        ("hessian: default top-5 against eigsh at 1e-8 (stopping rule)", 30 if full else 90,
         [python, "benchmarks/bench_hessian_peers.py", "--device", device, "--data-root", str(data_root),
          "--skip", "peers,curvlinops,trace", *(["--width", "1", "--images", "2048", "--epochs", "1"] if full else
                                    ["--width", "0.0625", "--images", "64", "--epochs", "1"])]),
        ("curvature products: GGN closed form, batched, rebuilt-graph products, model rewrites", 40 if full else 90,
         [python, "benchmarks/bench_curvature_products.py", "--device", device, "--bn", "eval",
          *(["--width", "1", "--images", "1024", "--batch-size", "256", "--block", "8"] if full else
            ["--width", "0.0625", "--images", "32", "--batch-size", "16", "--block", "2", "--repeats", "1"])]),
        ("critical sharpness: cost of tracking every 10 steps", 30 if full else 90,
         [python, "benchmarks/bench_critical.py", "--data-root", str(data_root), "--skip", "agreement",
          "--device", device, *(["--width", "1", "--epochs", "1", "--images", "128,512", "--repeats", "1"] if full
                                else ["--width", "0.0625", "--epochs", "1", "--images", "32", "--repeats", "1",
                                      "--train-subset", "256"])]),
        ("sharpness: cold and warm Lanczos against converged", 40 if full else 90,
         [python, "benchmarks/bench_sharpness.py", "--data-root", str(data_root),
          *(["--width", "1", "--epochs", "3", "--every", "40"] if full else
            ["--width", "0.0625", "--sharpness-images", "32", "--train-images", "192", "--epochs", "1",
             "--every", "3"])]),
    ]
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"}
    if dry_run:  # nothing is timed: two at a time, one thread each, so the test suite waits half as long
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def one(name: str, limit: int, command: list[str]) -> dict:
        start = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env,
                                  timeout=limit if full else None)  # the dry run is a test: no deadline decides it
            rc, output = done.returncode, done.stdout + (done.stderr[-2000:] if done.returncode else "")
        except subprocess.TimeoutExpired as exc:
            rc, output = "timeout", f"(stopped after {limit}s) " + (exc.stdout or b"").decode(errors="replace") \
                if isinstance(exc.stdout, bytes) else f"(stopped after {limit}s) {exc.stdout or ''}"
        result = {"benchmark": name, "rc": rc, "seconds": round(time.perf_counter() - start, 1),
                  "command": " ".join(command[1:]), "output": output.strip()}
        print(f"[{'ok' if rc == 0 else rc}] {name} ({result['seconds']}s)\n{output.strip()}", flush=True)
        return result

    with ThreadPoolExecutor(max_workers=2 if dry_run else 1) as pool:  # on the device: one after another
        return list(pool.map(lambda entry: one(*entry), plan))


def write_report(out: Path, environment: dict, checks: Checks, benches: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "device_check.json").write_text(json.dumps({"environment": environment, "smoke": checks.rows,
                                                       "benchmarks": benches}, indent=2))
    lines = [f"# Device check: {environment['device']}", "",
             " | ".join(f"{k} {v}" for k, v in environment.items() if k != "device"), "",
             "| check | status | seconds | detail |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['check']} | {r['status']} | {r['seconds']} | {r['detail']} |" for r in checks.rows]
    lines += ["", "## Benchmarks", ""]
    for bench in benches:
        lines += [f"### {bench['benchmark']} (exit {bench['rc']}, {bench['seconds']} s)", "",
                  f"`{bench['command']}`", "", "```", bench["output"], "```", ""]
    (out / "device_check.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "artifacts/device_check")
    parser.add_argument("--data-root", default=os.environ.get("LANDSCAPE_TEST_DATA", "data"),
                        help="folder holding cifar-10-batches-py/ (copy the shared subset there and carry it)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks that the script works")
    parser.add_argument("--skip-benchmarks", action="store_true")
    args = parser.parse_args()
    device = "cpu" if args.dry_run else ("cuda" if torch.cuda.is_available() else "cpu")
    environment = {"device": torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or 'cpu'})",
                   "torch": torch.__version__, "python": platform.python_version(),
                   "dry_run": args.dry_run, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(environment, flush=True)
    checks = Checks()
    data_root = Path(args.data_root)
    dataset = "cifar10" if (data_root / "cifar-10-batches-py" / "data_batch_1").exists() else "synthetic"
    base = RunConfig(model="vgg_bn", lrs=(1e-3, 5e-4), width=0.25 if not args.dry_run else 0.0625,
                     dataset=dataset, data_root=str(data_root), train_subset=2048 if not args.dry_run else 128,
                     epochs=2, batch_size=128 if not args.dry_run else 32, device=device, precision="fp32",
                     log_every=5)
    with tempfile.TemporaryDirectory() as folder:
        smoke_tests(Path(folder), base, checks, args.dry_run)
        benches = [] if args.skip_benchmarks else benchmarks(data_root, Path(folder), args.dry_run, device) \
            if dataset == "cifar10" else [{"benchmark": "all", "rc": "skipped", "seconds": 0, "command": "",
                                           "output": f"no CIFAR-10 under {data_root}: copy the shared subset there"}]
    write_report(Path(args.out), environment, checks, benches)
    failed = [r["check"] for r in checks.rows if r["status"] != "pass"] + \
        [b["benchmark"] for b in benches if b["rc"] not in (0, "skipped")]
    print(f"wrote {args.out}/device_check.md; " + (f"failed: {', '.join(failed)}" if failed else "all passed"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
