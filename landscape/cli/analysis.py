"""`landscape surface`, `hessian`, `measure`, `connect` and `report`: looking at a snapshot or any model."""
from __future__ import annotations

from pathlib import Path

import click

from landscape.cli.group import cli
from landscape.cli.options import (BUDGET_OPTION, THREADS_OPTION, make_executor, measure_choice, measure_options,
                                   snapshot_options)
from landscape.errors import UsageError


@cli.command()
@snapshot_options()
@click.option("--dims", type=int, default=2, show_default=True, help="1: a line; 2: a plane.")
@click.option("--grid", default=None, help="x coordinates start:stop:count, or a count N: the default extent in N "
                                           "points [default: -1:1:51; between -0.25:1.25:31; pca: around the "
                                           "trajectory, 51].")
@click.option("--grid-y", default=None, help="y coordinates start:stop:count or a count [default: as --grid].")
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
@click.option("--trace-method", default="krylov", show_default=True,
              help="krylov (Hutchinson deflated by the eigenvalues' Lanczos basis: no product spent on a sketch), "
                   "xtrace (Epperly et al. 2024), hutch++ (Meyer et al. 2021) or hutchinson.")
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
@BUDGET_OPTION
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
@BUDGET_OPTION
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
