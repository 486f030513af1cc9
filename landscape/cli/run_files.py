"""`landscape run`, `plot`, `info` and `export`: training into run files, and reading any file of ours back."""
from __future__ import annotations

from pathlib import Path

import click

from landscape.cli.group import cli
from landscape.cli.options import DEFAULT_LRS, THREADS_OPTION, report_skipped
from landscape.errors import UsageError


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
@click.option("--data-seed", type=int, default=None,
              help="Seeds the data order and augmentation instead of --seed (a branch's own order) [default: --seed].")
@THREADS_OPTION
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--engine", default="auto", show_default=True,
              help="loop (one model after another) or fused (all runs as one stacked model; sgd/adam/adamw).")
@click.option("--precision", default="auto", show_default=True, help="fp32 or bf16 (autocast); auto: bf16 on CUDA.")
@click.option("--channels-last", is_flag=True,
              help="channels_last memory format (loop engine). On CPU its gradients can be less exact: VGG-A's at "
                   "width 0.25 came 2e-4 (relative) from float64, against 5e-7 in the default format "
                   "(benchmarks/bench_curvature_products.py).")
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
@click.option("--branch-points/--no-branch-points", default=False, show_default=True,
              help="Keep the full training state at every snapshot epoch (<run>.h5.epoch_KKKK.ckpt) so that "
                   "--branch-from can start there.")
@click.option("--branch-steps", default="", show_default=False,
              help="Also keep it after these global steps, mid-epoch too (<run>.h5.step_SSSSSSS.ckpt), e.g. 0,5,10,20: "
                   "--branch-from --step S starts there.")
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
@click.option("--branch-from", type=click.Path(path_type=Path), default=None,
              help="Branch this run file: start from its run --lr after --epoch epochs (kept by --branch-points) "
                   "and train the remaining epochs under --data-seed; other options, if given, must match.")
@click.option("--lr", type=float, default=None, help="--branch-from: which of the parent's runs (its rate).")
@click.option("--epoch", type=click.IntRange(min=0), default=None, help="--branch-from: the epoch to branch after.")
@click.option("--step", type=click.IntRange(min=0), default=None,
              help="--branch-from: the global step to branch after (kept by --branch-steps), instead of --epoch.")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=1, show_default=True,
              help="Save a checkpoint beside the run file every N epochs (0: never; always on SIGINT/SIGTERM).")
@click.option("--keep-checkpoint", is_flag=True, help="Keep the checkpoint (final weights) when the run completes.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.pass_context
def run(ctx: click.Context, config_file: Path | None, out: Path | None, overwrite: bool, resume: Path | None,
        branch_from: Path | None, lr: float | None, epoch: int | None, step: int | None, checkpoint_every: int,
        keep_checkpoint: bool,
        download: bool, quiet: bool, **options) -> None:
    """Train one model per learning rate in lockstep and record every step's loss in one HDF5 file."""
    from landscape.training.config import RunConfig, config_values, default_out_path, load_config_file

    from_file = load_config_file(config_file) if config_file else {}
    on_command_line = {k: v for k, v in options.items()
                       if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    runtime = dict(download=download, progress=not quiet, checkpoint_every=checkpoint_every,
                   keep_checkpoint=keep_checkpoint)
    if branch_from is None and (lr is not None or epoch is not None or step is not None):
        raise UsageError("--lr and --epoch (or --step) pick where --branch-from starts: add --branch-from PARENT.h5, "
                         "or give a new run's rates with --lrs")
    if branch_from is not None:
        if resume is not None or "lrs" in on_command_line:
            raise UsageError("--branch-from starts a new run from one run of the parent: pick it with --lr, and "
                             "drop --resume and --lrs")
        if (epoch is None) == (step is None) or options["data_seed"] is None or out is None:
            raise UsageError("--branch-from needs --epoch K or --step S (where to start; one of them), --data-seed S "
                             "(the child's data order) and --out CHILD.h5")
        from landscape.training.branch import branch

        path = branch(branch_from, out, epoch=epoch, step=step, data_seed=options["data_seed"], lr=lr,
                      options={**from_file, **config_values(on_command_line, where="command line")},
                      overwrite=overwrite, **runtime)
        if not quiet:
            click.echo(f"wrote {path}")
        return
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
    inputs.notes += [f"{table.path}: a measures file has no curves to plot; `landscape ablate table` draws its "
                     f"scatter (and `landscape info` summarises it)" for table in inputs.measures]
    inputs.measures = []
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
    """Summarise run, surface, Hessian, path and measures files: what each holds, how far it got, its main numbers."""
    from landscape.files.any_file import read_inputs
    from landscape.views.info import describe

    inputs = read_inputs(files)
    if inputs.empty:
        raise UsageError(" | ".join(inputs.notes))
    click.echo("\n\n".join(describe(item) for item in inputs.order))
    report_skipped(inputs.notes)


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
