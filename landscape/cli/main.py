"""The `landscape` command: parses arguments and calls the library; nothing else.

Heavy imports (torch, seaborn) happen inside the commands that need them, so `landscape --help`,
`landscape info` and `landscape plot` never import torch. Every error the user can fix is printed
as one line (`landscape <command>: error: ...`) with exit status 2; a failure during a run exits 1.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from landscape import __version__
from landscape.errors import LandscapeError, UsageError
from landscape.options import THREADS_HELP

DEFAULT_LRS = "1e-3,2e-3,5e-4,1e-4"
def threads_value(ctx, param, value):
    from landscape.options import parse_threads

    return parse_threads(value)


THREADS_OPTION = click.option("--threads", default="0", show_default=True, callback=threads_value,
                              help=THREADS_HELP + "; recorded in every file.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="landscape")
def cli() -> None:
    """Loss-landscape and ablation analysis of image classifiers.

    \b
    landscape run --model vgg_bn --lrs 1e-3,2e-3,5e-4,1e-4   train one model per rate into HDF5
    landscape plot artifacts/vgg.h5 artifacts/vgg_bn.h5     draw loss envelopes and ranges
    landscape info artifacts/vgg_bn.h5                      summarise a run file
    landscape ablate run --all --preset quick               run the reports' ablation tables
    landscape ablate table --all --preset quick             regenerate their tables and figures
    landscape ablate figures 004 --preset quick             regenerate a report's figures
    landscape surface artifacts/vgg_bn.h5 --lr 1e-3         Li et al. loss surface around a snapshot
    landscape hessian artifacts/vgg_bn.h5 --lr all          Hessian eigenvalues, trace, density
    landscape report artifacts/vgg.h5 artifacts/vgg_bn.h5   one interactive HTML page
    landscape export SURFACE.h5 --format vtk                a surface for ParaView (or csv, npz)
    """


@cli.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="TOML file of run options (keys as the flags); flags given here override it.")
@click.option("--model", default="vgg_bn", show_default=True,
              help="vgg, vgg_bn, vgg_bn_fc, resnet18|34|50|101|152, resnet20|32|44|56|110.")
@click.option("--lrs", default=DEFAULT_LRS, show_default=True, help="Learning rates, comma-separated: one run each.")
@click.option("--width", type=float, default=1.0, show_default=True, help="Channel and hidden width multiplier.")
@click.option("--stem", default="auto", show_default=True, help="ResNets: imagenet (7x7/2 + max-pool) or cifar (3x3/1).")
@click.option("--norm", default="bn", show_default=True, help="ResNets: bn, in (InstanceNorm) or none.")
@click.option("--residual/--no-residual", default=True, show_default=True, help="ResNets: keep the skip connections.")
@click.option("--dropout", type=float, default=0.0, show_default=True, help="ResNets: dropout before the classifier.")
@click.option("--activation", default="relu", show_default=True, help="ResNets: relu, leaky_relu or silu.")
@click.option("--pretrained", is_flag=True, help="ResNet-18..152: start from torchvision's ImageNet weights.")
@click.option("--dataset", default="cifar10", show_default=True,
              help="cifar10, cifar100, imagenette, imagefolder (train/ and val/ under --data-root) or synthetic.")
@click.option("--data-root", default="data", show_default=True, help="Folder holding the dataset.")
@click.option("--download", is_flag=True, help="Download the dataset with torchvision if it is missing.")
@click.option("--image-size", type=int, default=0, show_default=True,
              help="Resize images to this size (0: the dataset's own; 224 Imagenette, 64 image folders).")
@click.option("--imagenette-size", default="320", show_default=True, help="Imagenette variant: 160, 320 or full.")
@click.option("--train-subset", type=int, default=0, show_default=True, help="Train on the first N images (0: all).")
@click.option("--augment", default="none", show_default=True,
              help="none, crop-flip, rrc-flip, report004, or switches: crop:4,hflip:0.5,vflip:0.1,rrc:0.08,"
                   "jitter:0.2,autoaugment,erasing:0.5.")
@click.option("--optimizer", default="adam", show_default=True, help="sgd, adam, adamw, radam or ranger.")
@click.option("--momentum", type=float, default=0.9, show_default=True, help="SGD momentum.")
@click.option("--nesterov", is_flag=True, help="SGD with Nesterov momentum.")
@click.option("--eps", type=float, default=None, help="Adam-family epsilon [default: the optimizer's].")
@click.option("--weight-decay", type=float, default=0.0, show_default=True, help="Weight decay.")
@click.option("--schedule", default="constant", show_default=True, help="constant, step, multistep or cosine (per epoch).")
@click.option("--step-size", type=int, default=10, show_default=True, help="step: epochs between decays.")
@click.option("--gamma", type=float, default=0.1, show_default=True, help="step, multistep: decay factor.")
@click.option("--milestones", default="", help="multistep: epochs where the rate decays, e.g. 90,135.")
@click.option("--cosine-extra", type=int, default=0, show_default=True, help="cosine: T_max = epochs + this.")
@click.option("--warmup-epochs", type=int, default=0, show_default=True, help="Linear warmup over this many epochs.")
@click.option("--label-smoothing", type=float, default=0.0, show_default=True,
              help="Cross-entropy label smoothing of the training loss (the test loss stays plain).")
@click.option("--patience", type=int, default=0, show_default=True,
              help="Early stopping: stop a run after this many epochs without test-accuracy gain (0: off).")
@click.option("--min-delta", type=float, default=0.0, show_default=True,
              help="Early stopping: accuracy gain (fraction, 0.001 = 0.1%) that counts as improvement.")
@click.option("--until-train-loss", type=float, default=0.0, show_default=True,
              help="Train each run until the cross-entropy on the whole training subset (eval mode, after an "
                   "epoch) is below this; --epochs caps it (0: off).")
@click.option("--until-train-acc", type=float, default=0.0, show_default=True,
              help="Train each run until its accuracy on the whole training subset reaches this fraction (0.99); "
                   "--epochs caps it (0: off).")
@click.option("--epochs", type=int, default=20, show_default=True, help="Epochs to train.")
@click.option("--batch-size", type=int, default=128, show_default=True,
              help="Training batch size (a trailing batch of one image is dropped).")
@click.option("--eval-batch-size", type=int, default=1000, show_default=True,
              help="Batch size of the test evaluation after each epoch.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the initial weights, data order and augmentation.")
@THREADS_OPTION
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--engine", default="auto", show_default=True,
              help="loop (one model after another) or fused (all runs as one stacked model; sgd/adam/adamw).")
@click.option("--precision", default="auto", show_default=True, help="fp32 or bf16 (autocast); auto: bf16 on CUDA.")
@click.option("--channels-last", is_flag=True, help="channels_last memory format (loop engine).")
@click.option("--compile", is_flag=True, help="torch.compile each model (loop engine).")
@click.option("--log-every", type=int, default=50, show_default=True,
              help="Steps between copies of the losses from the device.")
@click.option("--probe-every", type=int, default=0, show_default=True,
              help="Probe the loss and gradient along the step every K steps (0: off).")
@click.option("--probe-multipliers", default="0.5:4:8", show_default=True,
              help="Step multipliers: start:stop:count or a comma list.")
@click.option("--probe-direction", default="update", show_default=True,
              help="update (the optimizer's step) or gradient (-lr * grad, as the paper).")
@click.option("--probe-batch", is_flag=True,
              help="Probe all multipliers in one vmapped forward/backward (loop engine; J times the memory).")
@click.option("--snapshots/--no-snapshots", default=True, show_default=True,
              help="Save weight snapshots to <run>.weights.h5 (epoch 0, every --snapshot-every epochs, the end).")
@click.option("--snapshot-every", type=int, default=0, show_default=True,
              help="Epochs between weight snapshots (0: only the initial and the final weights).")
@click.option("--sharpness-every", type=int, default=0, show_default=True,
              help="Track the top Hessian eigenvalue(s) of every run every K steps (0: off).")
@click.option("--sharpness-images", default="0", show_default=True,
              help="Training images (a fixed seeded subset) the sharpness is measured on (0: 2048, or all of them "
                   "when fewer), or batch: each measured step's own batch (cheaper, noisier).")
@click.option("--sharpness-method", default="lanczos", show_default=True,
              help="lanczos (top Hessian eigenvalues), critical (2/(s_c lr): s_c the largest multiplier of the "
                   "update before the loss rises; 9 forward passes) or directional (d'Hd/|d|^2 along the update; "
                   "one Hessian-vector product).")
@click.option("--sharpness-top-k", type=int, default=1, show_default=True, help="Eigenvalues tracked per run.")
@click.option("--sharpness-iters", type=int, default=20, show_default=True,
              help="Lanczos steps per measurement (from a random start seeded by the step).")
@click.option("--sharpness-warm/--no-sharpness-warm", default=False, show_default=True,
              help="Start each measurement from the previous one's top Ritz vectors (plus a random part).")
@click.option("--sharpness-cold-iters", type=int, default=20, show_default=True,
              help="With --sharpness-warm: the Lanczos steps of each run's first measurement.")
@click.option("--sharpness-check-every", type=int, default=0, show_default=True,
              help="Every M-th measurement also a cold Lanczos to convergence, stored beside it (0: never).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run file [default: artifacts/<model>.h5].")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--resume", type=click.Path(path_type=Path), default=None,
              help="Continue this run file from its checkpoint (options, if given, must match the run's).")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=1, show_default=True,
              help="Save a checkpoint beside the run file every N epochs (0: never; always on SIGINT/SIGTERM).")
@click.option("--keep-checkpoint", is_flag=True, help="Keep the checkpoint (final weights) when the run completes.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.pass_context
def run(ctx: click.Context, config_file: Path | None, out: Path | None, overwrite: bool, resume: Path | None,
        checkpoint_every: int, keep_checkpoint: bool, download: bool, quiet: bool, **options) -> None:
    """Train one model per learning rate in lockstep and record every step's loss in one HDF5 file."""
    from landscape.training.config import RunConfig, config_values, default_out_path, load_config_file

    from_file = load_config_file(config_file) if config_file else {}
    on_command_line = {k: v for k, v in options.items()
                       if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    runtime = dict(download=download, progress=not quiet, checkpoint_every=checkpoint_every,
                   keep_checkpoint=keep_checkpoint)
    if resume is not None:
        if out is not None or overwrite:
            raise UsageError("--resume continues the given file: drop --out and --overwrite")
        from landscape.training.runner import resume as resume_run

        path, resumed = resume_run(resume, {**from_file, **config_values(on_command_line, where="command line")},
                                   **runtime)
        if not quiet:
            click.echo(f"wrote {path}" if resumed else f"nothing to resume: {path} is complete")
        return
    given = on_command_line if from_file else options
    config = RunConfig(**{**from_file, **config_values(given, where="command line")}).validate()
    from landscape.training.runner import train

    path = train(config, out or default_out_path(config.model), overwrite=overwrite, **runtime)
    if not quiet:
        click.echo(f"wrote {path}")


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Folder for the figures [default: the first file's folder].")
@click.option("--smooth", type=click.IntRange(min=1), default=1, show_default=True,
              help="Moving-average window in steps, applied to each run before the envelope.")
@click.option("--stride", type=click.IntRange(min=1), default=1, show_default=True, help="Plot every k-th step.")
@click.option("--log-y", is_flag=True, help="Logarithmic loss axis.")
def plot(runs: tuple[Path, ...], out_dir: Path | None, smooth: int, stride: int, log_y: bool) -> None:
    """Draw per-rate curves, the min-max loss envelope and its range; several files are overlaid.

    Surface files (`landscape surface`) are redrawn: lines overlaid, planes one by one and side by side;
    Hessian files (`landscape hessian`) give eigenvalues and densities, overlaid across files.
    """
    from landscape.files.any_file import read_inputs
    from landscape.files.atomic import check_writable_folder

    folder = out_dir or runs[0].parent
    check_writable_folder(folder, "--out")
    inputs = read_inputs(runs, need_steps=True)
    if inputs.empty:
        raise UsageError(" | ".join(inputs.notes))
    from landscape.views.figures import protect

    written = []
    with protect(runs):
        if inputs.runs:
            from landscape.views.plots import plot_runs

            written += plot_runs(inputs.runs, folder, smooth=smooth, stride=stride, log_y=log_y)
        if inputs.surfaces:
            from landscape.views.surface_plots import plot_surfaces

            written += plot_surfaces(inputs.surfaces, folder)
        if inputs.hessians:
            from landscape.views.curvature_plots import plot_hessians

            written += plot_hessians(inputs.hessians, folder)
        if inputs.paths:
            from landscape.views.path_plots import plot_paths

            written += plot_paths(inputs.paths, folder)
    for path in written:
        click.echo(str(path))
    report_skipped(inputs.notes)


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def info(files: tuple[Path, ...]) -> None:
    """Summarise run, surface and Hessian files: what each holds, how far it got, its main numbers."""
    from landscape.files.any_file import read_inputs
    from landscape.views.info import describe

    inputs = read_inputs(files)
    if inputs.empty:
        raise UsageError(" | ".join(inputs.notes))
    click.echo("\n\n".join(describe(item) for item in inputs.order))
    report_skipped(inputs.notes)


def measure_options(command):
    """The options of `measure` and `ablate measure`: which measures, their radii and budgets, the images, the device."""
    for decorator in reversed([
        click.option("--measures", default=None,
                     help="Which, comma-separated: hessian, ggn, worst, worst_adaptive, average, average_adaptive, "
                          "li, gap, norms, pacbayes, pacbayes_mag, jiang, jiang_mag, spectral, path_norm, "
                          "noise_scale, barrier (ablate measure, two seeds) [default: hessian,worst,worst_adaptive,"
                          "average,average_adaptive,li,gap,norms; ablate measure: the spec's own list if it has one]."),
        click.option("--rho", default="0.05", show_default=True, help="Radii of the sharpness measures (comma list)."),
        click.option("--radius", default="0.1", show_default=True, help="Radii of Li et al.'s flatness (comma list)."),
        click.option("--images", type=int, default=None,
                     help="Training images (the first N) [default: 1024; ablate measure: the study's, if it sets one]."),
        click.option("--test-images", type=int, default=None,
                     help="Test images for the gap [default: 1024; ablate measure: the study's, if it sets one]."),
        click.option("--steps", type=int, default=None,
                     help="Ascent steps of the worst cases (worst, jiang) [default: 10, or the study's]."),
        click.option("--samples", type=int, default=None, help="Draws of the average case [default: 10, or the study's]."),
        click.option("--bound", type=float, default=None,
                     help="pacbayes, jiang: the training-error rise (or loss rise, without accuracy) allowed "
                          "[default: 0.1, or the study's]."),
        click.option("--draws", type=int, default=None,
                     help="pacbayes: Monte Carlo draws of the expected error (antithetic pairs) [default: 10, or the "
                          "study's]."),
        click.option("--tolerance", type=float, default=None,
                     help="pacbayes, jiang: the search stops when its bracket is this narrow, relative [default: "
                          "0.05, or the study's]."),
        click.option("--m", type=int, default=0, show_default=True,
                     help="m-sharpness: the worst case per batch of m images."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--data-root", default=None, help="Dataset folder [default: the run's, else data]."),
        THREADS_OPTION,
        click.option("--quiet", is_flag=True, help="Print nothing but errors."),
    ]):
        command = decorator(command)
    return command


def snapshot_options(lr_type=float, lr_help: str = "The run to look at, by its learning rate."):
    """Which snapshot (--lr/--run/--epoch) or which foreign model (--model-def/--weights/--dataset), where the data
    is, the machine (--device, --threads, the Ray executor), and where the result goes."""

    def decorate(command):
        for decorator in reversed([
            click.argument("run_file", required=False, type=click.Path(path_type=Path)),
            click.option("--lr", type=lr_type, default=None, help=lr_help),
            click.option("--run", "run_index", type=int, default=None, help="The run to look at, by its index."),
            click.option("--epoch", type=str if lr_type is str else int, default=None,
                         help="The snapshot's epoch [default: the last saved]" + (" or all." if lr_type is str else ".")),
            click.option("--model-def", default=None,
                         help="FILE.py:FACTORY, a function returning the architecture, or torchvision:NAME or "
                              "timm:NAME: for a foreign model (with --weights) or a Recorder's run file."),
            click.option("--weights", default=None,
                         help="A foreign model's state dict (.pt, loaded with weights_only=True, or .safetensors)."),
            click.option("--dataset", default=None,
                         help="Dataset of the images [default: the run's; cifar10 for a foreign model]."),
            click.option("--num-classes", type=int, default=None,
                         help="A foreign model's outputs [default: the dataset's classes]."),
            click.option("--data-root", default=None, help="Dataset folder [default: the run's, else data]."),
            click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
            THREADS_OPTION,
            click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                         help="local: this process; ray: workers on a local Ray or a cluster."),
            click.option("--address", default=None,
                         help="ray: the cluster (host:port, or auto for the running one) [default: a local Ray]."),
            click.option("--workers", type=int, default=0, show_default=True,
                         help="ray: workers (0: as many as the cluster's resources hold)."),
            click.option("--cpus-per-worker", type=float, default=1.0, show_default=True,
                         help="ray: CPUs per worker (also its torch threads)."),
            click.option("--gpus-per-worker", type=float, default=0.0, show_default=True,
                         help="ray: GPUs per worker; fractions share a GPU (0.25: four workers on one)."),
            click.option("--out", type=click.Path(path_type=Path), default=None, help="Output file."),
            click.option("--overwrite", is_flag=True, help="Replace --out if it exists (never one of the inputs)."),
            click.option("--quiet", is_flag=True, help="No progress, no list of the files written."),
        ]):
            command = decorator(command)
        return command

    return decorate


def make_executor(executor: str, address: str | None, workers: int, cpus_per_worker: float, gpus_per_worker: float,
                  points_per_task: int = 0):
    """None (this process) or a RayExecutor, checked before anything is computed."""
    if executor != "ray":
        if address or workers or points_per_task or gpus_per_worker or cpus_per_worker != 1.0:
            raise UsageError("--address, --workers, --cpus-per-worker, --gpus-per-worker and --points-per-task apply "
                             "to --executor ray")
        return None
    from landscape.engine.executors import RayExecutor, import_ray

    import_ray()
    return RayExecutor(address=address, workers=workers, cpus_per_worker=cpus_per_worker,
                       gpus_per_worker=gpus_per_worker, points_per_task=points_per_task, report=print_line,
                       dash="--")


def print_line(line: str) -> None:
    click.echo(line, err=True)


@cli.command()
@snapshot_options()
@click.option("--dims", type=int, default=2, show_default=True, help="1: a line; 2: a plane.")
@click.option("--grid", default=None, help="x coordinates start:stop:count [default: -1:1:51; between "
                                           "-0.25:1.25:31; pca: around the trajectory].")
@click.option("--grid-y", default=None, help="y coordinates start:stop:count [default: as --grid].")
@click.option("--directions", default="random", show_default=True,
              help="random (Gaussian, normalised), pca (of the trajectory) or between (towards --to).")
@click.option("--norm", default="filter", show_default=True, help="random: filter, layer or none.")
@click.option("--ignore", default="biasbn", show_default=True,
              help="biasbn: zero direction on biases and BatchNorm (1-D tensors); none.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random directions.")
@click.option("--to", default="", help="between: end points, rates of the same file or init (e.g. 2e-3 or 2e-3,init); "
                                       "for a foreign model, state-dict files.")
@click.option("--data", default="train", show_default=True, help="train or test images.")
@click.option("--images", type=int, default=None, help="Images per point [default: 10,000 or the whole split].")
@click.option("--bn", default="eval", show_default=True,
              help="BatchNorm: eval (snapshot's statistics), train (batch statistics) or recompute.")
@click.option("--bn-images", type=int, default=2048, show_default=True, help="recompute: training images used.")
@click.option("--batch-size", type=int, default=0, show_default=True,
              help="Images per batch (0: 1000 on CUDA, 128 on CPU; with --bn train, the run's batch size).")
@click.option("--points-per-pass", type=int, default=0, show_default=True,
              help="Grid points evaluated together (0: 1 on CPU, from free memory on CUDA).")
@click.option("--points-per-task", type=int, default=0, show_default=True,
              help="ray: grid points per task (0: about four tasks per worker).")
@click.option("--precision", default="auto", show_default=True, help="fp32 or bf16; auto: bf16 on CUDA.")
@click.option("--resume", is_flag=True, help="Finish the surface in --out (or the default path), same options.")
def surface(run_file: Path | None, run_index: int | None, out: Path | None, overwrite: bool, quiet: bool,
            resume: bool, executor: str, address: str | None, workers: int, cpus_per_worker: float,
            gpus_per_worker: float, points_per_task: int, **options) -> None:
    """Loss and accuracy around a snapshot (or a foreign model) along random, PCA or interpolation directions."""
    from landscape.commands.surface import SurfaceOptions, compute_surface

    pool = make_executor(executor, address, workers, cpus_per_worker, gpus_per_worker, points_per_task)
    path = compute_surface(run_file, SurfaceOptions(run=run_index, **options), out, overwrite=overwrite,
                           resume=resume, progress=not quiet, executor=pool)
    from landscape.files.surface_file import read_surface
    from landscape.views.surface_plots import plot_surfaces

    written = plot_surfaces([read_surface(path)], path.parent)
    if not quiet:
        for figure in written:
            click.echo(str(figure))
        click.echo(f"wrote {path}")


@cli.command()
@snapshot_options(str, "The run to measure, by its learning rate, or all.")
@click.option("--operator", default="hessian", show_default=True,
              help="The matrix: hessian, ggn (the generalized Gauss-Newton matrix J'H_out J) or fisher (the "
                   "empirical Fisher, mean of per-sample gradient outer products; needs --bn eval with BatchNorm).")
@click.option("--top-k", type=int, default=5, show_default=True, help="Largest eigenvalues to find (Lanczos).")
@click.option("--tol", type=float, default=1e-3, show_default=True,
              help="Stop when every error bound is below tol x |eigenvalue| and stays so for a quarter more steps.")
@click.option("--max-steps", type=int, default=80, show_default=True, help="Lanczos steps at most.")
@click.option("--basis-vectors", type=int, default=0, show_default=True,
              help="Vectors the Lanczos basis holds (0: max(20, 4 x --top-k), fewer if they do not fit in half the "
                   "available memory); when full it is thick-restarted.")
@click.option("--trace", is_flag=True, help="Also estimate the trace, with its standard error.")
@click.option("--trace-samples", type=int, default=100, show_default=True,
              help="Hessian-vector products for --trace.")
@click.option("--trace-method", default="hutch++", show_default=True,
              help="hutch++ (Meyer et al. 2021: a sketch of the top of the spectrum, exact there) or hutchinson.")
@click.option("--density", is_flag=True, help="Also the spectral density (stochastic Lanczos quadrature).")
@click.option("--density-probes", type=int, default=1, show_default=True, help="Probe vectors for --density.")
@click.option("--density-steps", type=int, default=80, show_default=True, help="Lanczos steps per probe.")
@click.option("--images", type=int, default=None,
              help="Training images (the first N) whose mean loss is differentiated [default: 4,096, or all if fewer].")
@click.option("--batch-size", type=int, default=0, show_default=True, help="Images per batch (0: the run's).")
@click.option("--bn", default="train", show_default=True,
              help="BatchNorm: train (batch statistics, as the training loss) or eval (running statistics).")
@click.option("--hvp", default="auto", show_default=True,
              help="double-backward, forward-over-reverse (torch.func jvp of grad); auto: double-backward.")
@click.option("--params", default=None,
              help="Only these parameters (name patterns, comma-separated, e.g. 'layer4.*'): that block's Hessian.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the Lanczos and Hutchinson vectors.")
@click.option("--resume", is_flag=True,
              help="Finish the Hessian file in --out (or the default path): same options, the missing measurements.")
def hessian(run_file: Path | None, run_index: int | None, out: Path | None, overwrite: bool, quiet: bool,
            resume: bool, executor: str, address: str | None, workers: int, cpus_per_worker: float,
            gpus_per_worker: float, **options) -> None:
    """Top eigenvalues, trace and spectral density of the Hessian (or Gauss-Newton matrix, or empirical Fisher) of
    snapshots of a run file (or of a foreign model)."""
    from landscape.commands.hessian import HessianOptions, compute_hessian

    pool = make_executor(executor, address, workers, cpus_per_worker, gpus_per_worker)
    path = compute_hessian(run_file, HessianOptions(run=run_index, **options), out, overwrite=overwrite,
                           resume=resume, progress=not quiet, executor=pool)
    from landscape.views.curvature_plots import plot_hessians
    from landscape.files.hessian_file import read_hessian

    written = plot_hessians([read_hessian(path)], path.parent)
    if not quiet:
        for figure in written:
            click.echo(str(figure))
        click.echo(f"wrote {path}")


@cli.command()
@click.argument("run_file", required=False, type=click.Path(path_type=Path))
@click.option("--lr", type=float, default=None, help="The run, by its learning rate.")
@click.option("--run", "run_index", type=int, default=None, help="The run, by its index.")
@click.option("--epoch", type=int, default=None, help="The snapshot's epoch [default: the last saved].")
@click.option("--model-def", default=None, help="FILE.py:FACTORY (or torchvision:NAME, timm:NAME) for a foreign model.")
@click.option("--weights", default=None, help="A foreign model's state dict (with --model-def).")
@click.option("--dataset", default=None, help="Dataset of the images [default: the run's; cifar10 for foreign].")
@click.option("--num-classes", type=int, default=None, help="A foreign model's outputs [default: the dataset's].")
@measure_options
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Measures file [default: <run>_measures.h5].")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (never one of the inputs).")
def measure(run_file: Path | None, run_index: int | None, measures: str | None, rho: str, radius: str, steps: int,
            samples: int, m: int, seed: int, bound: float, draws: int, tolerance: float, out: Path | None,
            overwrite: bool, quiet: bool, **options) -> None:
    """Flatness and sharpness measures of one snapshot (or a foreign model): the numbers `ablate measure` gives a
    cell."""
    from landscape.commands.measure import MeasureCommandOptions, measure_snapshot

    chosen = measure_choice(measures, rho, radius, steps, samples, m, seed, bound, draws, tolerance)
    for key in ("images", "test_images"):
        options[key] = 1024 if options[key] is None else options[key]
    path, result = measure_snapshot(run_file, MeasureCommandOptions(run=run_index, **options), chosen, out,
                                    overwrite=overwrite)
    if not quiet:
        for name, value in result.values.items():
            error = result.stderr.get(name)
            click.echo(f"{name:>36}  {value:.6g}" + (f"  (+- {error:.2g})" if error is not None else ""))
        click.echo(f"wrote {path}")


def measure_choice(measures: str | None, rho: str, radius: str, steps: int | None, samples: int | None, m: int,
                   seed: int, bound: float | None, draws: int | None, tolerance: float | None, study=None):
    """The MeasureOptions the measure options name: what the command line gives, else what the study sets (its
    measures and measure_options), else the defaults."""
    from landscape.engine.measures import DEFAULT_MEASURES, MeasureOptions

    given = {k: v for k, v in dict(steps=steps, samples=samples, bound=bound, draws=draws, tolerance=tolerance).items()
             if v is not None}
    chosen = {**(study.measure_options if study is not None else {}), **given}
    return MeasureOptions(measures if measures is not None else ((study.measures if study else ()) or DEFAULT_MEASURES),
                          comma_numbers(rho, "--rho"), comma_numbers(radius, "--radius"), seed=seed, m=m,
                          **chosen).validate()


def comma_numbers(text: str, option: str) -> tuple[float, ...]:
    """Numbers from a comma-separated option; one line naming the option otherwise."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{option} {text!r}: give numbers, comma-separated, e.g. 0.01,0.05") from None


@cli.command()
@click.argument("a", required=False, type=click.Path(path_type=Path))
@click.argument("b", required=False, type=click.Path(path_type=Path))
@click.option("--lr", type=float, default=None, help="A's run, by its learning rate (a run file of several runs).")
@click.option("--epoch", type=int, default=None, help="A's snapshot epoch [default: the last saved].")
@click.option("--lr-b", type=float, default=None, help="B's run [default: --lr].")
@click.option("--epoch-b", type=int, default=None, help="B's snapshot epoch [default: --epoch].")
@click.option("--model-def", default=None, help="FILE.py:FACTORY (or torchvision:NAME, timm:NAME) for foreign models.")
@click.option("--weights", default=None, help="A foreign model A's state dict (with --model-def).")
@click.option("--weights-b", default=None, help="A foreign model B's state dict (with --model-def).")
@click.option("--dataset", default=None, help="Dataset of the images [default: A's run's; cifar10 for foreign].")
@click.option("--num-classes", type=int, default=None, help="A foreign model's outputs [default: the dataset's].")
@click.option("--data-root", default=None, help="Dataset folder [default: the run's, else data].")
@click.option("--align", default="none", show_default=True,
              help="weights: also the line to B with its hidden units permuted to match A (weight matching).")
@click.option("--curve", default="line", show_default=True,
              help="line, or bezier / polychain: also a curve whose bend is trained on the training images.")
@click.option("--points", type=int, default=25, show_default=True, help="Values of t along each path.")
@click.option("--bn", default="auto", show_default=True,
              help="recompute (BatchNorm statistics re-estimated at every point; auto with BatchNorm), eval "
                   "(interpolated statistics) or train (batch statistics).")
@click.option("--bn-images", type=int, default=1024, show_default=True, help="Training images for --bn recompute.")
@click.option("--images", type=int, default=2048, show_default=True, help="Training images (the first N).")
@click.option("--test-images", type=int, default=1024, show_default=True, help="Test images (the first N).")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Images per batch.")
@click.option("--curve-epochs", type=int, default=1, show_default=True, help="Epochs of training the bend.")
@click.option("--curve-lr", type=float, default=0.01, show_default=True, help="SGD rate (momentum 0.9) of the bend.")
@click.option("--bend-from", default=None, help="Evaluate the bend of this path file instead of training one.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the matching's order and the curve's t.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@THREADS_OPTION
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Path file [default: <A>_connect.h5].")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (never one of the inputs).")
@click.option("--resume", is_flag=True, help="Continue a curve's training from its checkpoint beside --out.")
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
def connect(a: Path | None, b: Path | None, out: Path | None, overwrite: bool, resume: bool, quiet: bool,
            **options) -> None:
    """Loss barriers and low-loss paths between two models: the line, the line after weight matching, a trained
    Bezier or polygonal curve; loss and accuracy along each on training and test images."""
    from landscape.commands.connect import ConnectOptions, compute_connection
    from landscape.files.path_file import read_path
    from landscape.views.path_plots import plot_paths

    path = compute_connection(a, b, ConnectOptions(**options), out, overwrite=overwrite, resume=resume,
                              progress=not quiet)
    written = plot_paths([read_path(path)], path.parent)
    if not quiet:
        for figure in written:
            click.echo(str(figure))
        click.echo(f"wrote {path}")


@cli.command()
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--ablations", type=click.Path(path_type=Path), default=None,
              help="Folder of ablation results (as `ablate run --results`) to include.")
@click.option("--preset", type=click.Choice(["full", "quick", "cpu"]), default="full", show_default=True,
              help="Which preset's ablation results to include (as `ablate run` and `ablate table`).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="The page [default: report.html beside the first file, or in --ablations].")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (never one of the inputs).")
@click.option("--markdown", is_flag=True, help="Write a GitHub-renderable report.md with static PNGs instead.")
@click.option("--quiet", is_flag=True, help="Do not print the file written.")
def report(files: tuple[Path, ...], ablations: Path | None, preset: str, out: Path | None, overwrite: bool,
           markdown: bool, quiet: bool) -> None:
    """One self-contained interactive HTML page of runs, probes, curvature, surfaces and ablation tables."""
    from landscape.views.report import write_markdown, write_report

    if not files and ablations is None:
        raise UsageError("give run, surface or Hessian files, or --ablations FOLDER, to report on")
    if ablations is not None and not ablations.is_dir():
        raise UsageError(f"--ablations {ablations} is not a folder; give the --results folder of `ablate run`")
    default = (files[0].parent if files else ablations) / ("report.md" if markdown else "report.html")
    out = out or default
    path = write_markdown(list(files), out, overwrite=overwrite) if markdown else \
        write_report(list(files), out, ablations=ablations, preset=preset, overwrite=overwrite)
    if not quiet:
        click.echo(f"wrote {path}")


@cli.command()
@click.argument("surface_file", type=click.Path(path_type=Path))
@click.option("--format", "fmt", default="vtk", show_default=True,
              help="vtk (a .vts structured grid for ParaView), csv or npz.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output file [default: beside the surface file, .vts, .csv or .npz].")
@click.option("--log-scale", is_flag=True, help="vtk: the height of each point is log(loss) (the loss stays as data).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (never the surface file).")
@click.option("--quiet", is_flag=True, help="Do not print the file written.")
def export(surface_file: Path, fmt: str, out: Path | None, log_scale: bool, overwrite: bool, quiet: bool) -> None:
    """A surface file as a ParaView structured grid (.vts), CSV or NumPy arrays."""
    from landscape.views.export import export_file

    path = export_file(surface_file, fmt, out, log_scale=log_scale, overwrite=overwrite)
    if not quiet:
        click.echo(f"wrote {path}")


@cli.group()
def ablate() -> None:
    """Ablation studies: every table of the reference reports as a spec (landscape/ablations/specs/*.toml).

    \b
    landscape ablate list
    landscape ablate run cifar10_resnet18_label_smoothing --preset quick --data-root data
    landscape ablate table --all --preset quick
    """


def spec_arguments(command):
    """SPEC... or --all, --preset and --results, shared by the ablate commands."""
    command = click.argument("specs", nargs=-1)(command)
    command = click.option("--all", "all_specs", is_flag=True, help="Every spec in ablations/specs.")(command)
    command = click.option("--preset", type=click.Choice(["full", "quick", "cpu"]), default="full", show_default=True,
                           help="full: the report's configuration; quick: the same cells, CPU-sized; cpu: a study's preset for a "
                                "2-core machine.")(command)
    return click.option("--results", type=click.Path(path_type=Path), default=Path("artifacts/ablations"),
                        show_default=True, help="Folder of the cells' run files and the tables.")(command)


def load_specs(specs: tuple[str, ...], all_specs: bool):
    from landscape.ablations.spec import load_spec, spec_paths

    if bool(specs) == all_specs:
        raise UsageError("name one or more specs (see `landscape ablate list`), or pass --all")
    return [load_spec(path) for path in spec_paths(list(specs) if specs else None)]


@ablate.command(name="list")
@click.option("--results", type=click.Path(path_type=Path), default=Path("artifacts/ablations"), show_default=True)
def ablate_list(results: Path) -> None:
    """Each spec, its cells, and how many are done per preset."""
    from landscape.ablations.runner import cell_status
    from landscape.ablations.spec import PRESETS, load_spec, spec_paths

    for path in spec_paths():
        spec = load_spec(path)
        done = []
        for preset in PRESETS:
            files = {spec.result_path(results, preset, cell, 0) for cell in spec.cells}
            done.append(f"{preset} {sum(cell_status(f) == 'complete' for f in files)}/{len(files)}")
        shared = any(cell.horizons for cell in spec.cells)
        click.echo(f"{spec.name:<44} {len(spec.cells):>3} cells  done: {', '.join(done):<22} {spec.title}"
                   + (f" [{len(spec.cells)} cells read {len(files)} run file(s): the horizon cells are epochs of one "
                      f"long run]" if shared else ""))


@ablate.command(name="run")
@spec_arguments
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help="Seeds per cell [default: the study's seeds for a spec with a study, else 1].")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Cells in parallel processes (CPU); on a GPU cells run one after another.")
@click.option("--data-root", default=None, help="Dataset folder for every cell (default: each spec's own).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="auto, cpu or cuda for every cell (default: each spec's own).")
@click.option("--quiet", is_flag=True, help="No progress bar (the line per cell stays).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process (--jobs processes on CPU); ray: Ray tasks on a local Ray or a cluster.")
@click.option("--address", default=None,
              help="ray: the cluster (host:port, or auto for the running one) [default: a local Ray for this command].")
@click.option("--cpus-per-cell", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              help="ray: CPUs each cell asks the scheduler for (and torch threads it uses).")
@click.option("--gpus-per-cell", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="ray: GPUs per cell; fractions pack small cells onto one GPU (0.25: four at a time).")
@click.option("--max-retries", type=click.IntRange(min=0), default=3, show_default=True,
              help="ray: retries of a cell whose worker or node died (it resumes from its last checkpoint).")
@click.option("--shared-results", is_flag=True,
              help="ray: --results is on storage every node sees; tasks write there directly.")
@click.option("--threads", default="0", show_default=True, callback=threads_value,
              help="local: CPU threads per cell (0: the cores this process may use, shared out over --jobs; auto: "
                   "fewer when other processes keep cores busy, other rounding; or N).")
@click.option("--download", is_flag=True, help="Download a missing dataset with torchvision.")
def ablate_run(specs: tuple[str, ...], all_specs: bool, preset: str, results: Path, seeds: int | None, jobs: int,
               data_root: str | None, device: str | None, quiet: bool, executor: str, address: str | None,
               cpus_per_cell: float, gpus_per_cell: float, max_retries: int, shared_results: bool, threads: int,
               download: bool) -> None:
    """Run the cells (and seeds) whose results are missing or incomplete; safe to interrupt and rerun."""
    from dataclasses import replace

    from landscape.ablations.runner import plan, print_err, run_jobs

    todo = []
    for spec in load_specs(specs, all_specs):
        count = seeds or (spec.study.seeds if spec.study is not None else 1)
        for job in plan(spec, preset, count, results, data_root):
            todo.append(replace(job, config=replace(job.config, device=device)) if device else job)
    if device == "cuda":
        from landscape.engine.devices import resolve_device

        resolve_device(device)  # no GPU: one line now, not one failure per cell
    for job in todo:
        job.config.validate()
    from landscape.options import check_gpus, check_threads

    check_threads("--threads", threads)
    if executor == "ray":
        from landscape.ablations.ray_executor import run_jobs_on_ray
        from landscape.engine.executors import check_address, import_ray, ray_test_options

        check_gpus("--gpus-per-cell", gpus_per_cell)
        if threads or download:
            raise UsageError("--threads and --download apply to the local executor (on Ray, --cpus-per-cell sets a "
                             "cell's threads; place the data on every node)")
        import_ray()
        check_address(address)
        counts = run_jobs_on_ray(todo, address=address, cpus_per_cell=cpus_per_cell, gpus_per_cell=gpus_per_cell,
                                 max_retries=max_retries, shared_results=shared_results, report=print_err,
                                 progress=not quiet, init_options=ray_test_options())
    else:
        if address or shared_results:
            raise UsageError("--address and --shared-results apply to --executor ray")
        counts = run_jobs(todo, jobs, report=print_err, progress=not quiet, threads=threads, download=download)
    click.echo(", ".join(f"{n} {k}" for k, n in counts.items() if n or k != "interrupted"))
    if counts["failed"] or counts.get("interrupted"):
        sys.exit(1)


@ablate.command(name="measure")
@spec_arguments
@measure_options
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", default=None, help="ray: the cluster [default: a local Ray].")
@click.option("--workers", type=int, default=0, show_default=True, help="ray: workers.")
@click.option("--cpus-per-worker", type=float, default=1.0, show_default=True, help="ray: CPUs per worker.")
@click.option("--gpus-per-worker", type=float, default=0.0, show_default=True, help="ray: GPUs per worker.")
def ablate_measure(specs: tuple[str, ...], all_specs: bool, preset: str, results: Path, measures: str | None,
                   rho: str, radius: str, images: int, test_images: int, steps: int, samples: int, m: int, seed: int,
                   bound: float, draws: int, tolerance: float, device: str, data_root: str | None, threads: int | str, quiet: bool, executor: str,
                   address: str | None, workers: int, cpus_per_worker: float, gpus_per_worker: float) -> None:
    """Flatness and sharpness measures of every finished cell; writes measures.h5, the measures table, the rank
    correlations with test accuracy and the gap, and the scatter figure beside each spec's table."""
    from landscape.ablations.correlation import scatter_figure, write_measure_tables
    from landscape.ablations.finding import write_finding
    from landscape.ablations.line import study_line
    from landscape.ablations.measure import measure_spec
    from landscape.engine.devices import resolve_device, set_threads
    from landscape.options import positive

    chosen = load_specs(specs, all_specs)
    pool = make_executor(executor, address, workers, cpus_per_worker, gpus_per_worker)
    if pool is not None and threads:
        raise UsageError("--threads applies to the local executor (on Ray, --cpus-per-worker sets a worker's threads)")
    set_threads(threads, hint=not quiet)
    for spec in chosen:
        study = spec.study
        options = measure_choice(measures, rho, radius, steps, samples, m, seed, bound, draws, tolerance, study)
        train_images = images or (study.images if study is not None else 0) or 1024
        tests = test_images or (study.test_images if study is not None else 0) or train_images
        positive("--images", train_images)
        positive("--test-images", tests)
        path = measure_spec(spec, preset, results, options, images=train_images, test_images=tests,
                            device=resolve_device(device), executor=pool, data_root=data_root,
                            report=(lambda line: None) if quiet else print_line)
        lines = study_line(spec, preset, results, images=train_images, test_images=tests, device=device,
                           data_root=data_root, threads=threads)
        finding = write_finding(spec, preset, path)
        for written in [path] + write_measure_tables(path, spec.axes, spec.title) + \
                scatter_figure(path, spec.axes, spec.title) + lines + ([finding] if finding else []):
            if not quiet:
                click.echo(str(written))


@ablate.command(name="table")
@spec_arguments
def ablate_table(specs: tuple[str, ...], all_specs: bool, preset: str, results: Path) -> None:
    """Write each spec's tables (Markdown, CSV, LaTeX) and figures from the stored runs; never trains."""
    from landscape.ablations.tables import regenerate
    from landscape.files.atomic import check_writable_folder

    check_writable_folder(results, "--results")
    written, done, missing = regenerate(load_specs(specs, all_specs), preset, results)
    for path in written:
        click.echo(str(path))
    if missing:
        click.echo(f"{missing} of {done + missing} cells have no results yet under {results} (preset {preset}): "
                   f"run `landscape ablate run ... --preset {preset}` to fill them", err=True)


@ablate.command(name="figures")
@click.argument("names", nargs=-1)
@click.option("--all", "all_figures", is_flag=True, help="Every figure of the five reports.")
@click.option("--list", "list_only", is_flag=True, help="List the report figures and how each is drawn; draw nothing.")
@click.option("--preset", type=click.Choice(["full", "quick", "cpu"]), default="full", show_default=True,
              help="Whose results to draw: full (the report's configuration) or quick.")
@click.option("--results", type=click.Path(path_type=Path), default=Path("artifacts/ablations"), show_default=True,
              help="Folder of the cells' run files (as `ablate run --results`).")
@click.option("--quiet", is_flag=True, help="Do not list the files written.")
def ablate_figures(names: tuple[str, ...], all_figures: bool, list_only: bool, preset: str, results: Path,
                   quiet: bool) -> None:
    """Regenerate report figures (by report, e.g. 004, or by id) from the stored runs; never trains."""
    from landscape.ablations.figures import describe, load_figures, regenerate_figures, select
    from landscape.files.atomic import check_writable_folder

    figures = load_figures()
    if list_only:
        click.echo(describe(select(figures, list(names)) if names else figures))
        return
    if bool(names) == all_figures:
        raise UsageError("name reports (000..004) or figure ids (see --list), or pass --all")
    check_writable_folder(results, "--results")
    written, missing = regenerate_figures(figures if all_figures else select(figures, list(names)), preset, results)
    if not quiet:
        for path in written:
            click.echo(str(path))
    for figure, cells in missing.items():
        click.echo(f"{figure}: no results yet for {', '.join(cells)} under {results} (preset {preset}); the figure "
                   f"says so: run `landscape ablate run ... --preset {preset}` to fill it", err=True)


def report_skipped(problems: list[str]) -> None:
    """One line per file that could not be used; exit 1 when some were skipped."""
    for problem in problems:
        click.echo(f"landscape: skipped {problem}", err=True)
    if problems:
        sys.exit(1)


def fail(message: str, code: int) -> None:
    """Print one line to stderr and exit with `code`."""
    click.echo(" ".join(message.split()), err=True)
    sys.exit(code)


def command_of(args: list[str]) -> str:
    """The command's words (`ablate run`), as the error lines name it."""
    words = [a for a in args[:2] if not a.startswith("-")]
    return " ".join(words[:2] if words[:1] == ["ablate"] else words[:1])


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script: one-line errors, exit 2 for usage errors, 1 for run failures."""
    args = sys.argv[1:] if argv is None else argv
    try:
        code = cli.main(args=args, prog_name="landscape", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help())
        code = 0
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "landscape"
        fail(f"{where}: error: {exc.format_message()} (see '{where} --help')", 2)
    except click.ClickException as exc:
        fail(f"landscape: error: {exc.format_message()}", exc.exit_code)
    except click.exceptions.Abort:
        fail("landscape: aborted", 130)
    except LandscapeError as exc:
        fail(f"landscape {command_of(args)}: error: {exc}".replace("  ", " "), exc.exit_code)
    except OSError as exc:  # a write that failed (disk full, a file-size limit): the old files are intact
        fail(f"landscape {command_of(args)}: error: {exc}; the files written before are intact".replace("  ", " "), 1)
    except MemoryError:
        fail(f"landscape {command_of(args)}: error: out of memory; use fewer images, points or a smaller model"
             .replace("  ", " "), 1)
    except KeyboardInterrupt:
        fail("landscape: interrupted", 130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
