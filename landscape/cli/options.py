"""Options and helpers shared by several commands: threads, the measure options, which snapshot, executors,
which specs; nothing here computes."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from landscape.errors import UsageError
from landscape.options import THREADS_HELP

DEFAULT_LRS = "1e-3,2e-3,5e-4,1e-4"
def threads_value(ctx, param, value):
    from landscape.options import parse_threads

    return parse_threads(value)


THREADS_OPTION = click.option("--threads", default="0", show_default=True, callback=threads_value,
                              help=THREADS_HELP + "; recorded in every file.")
BUDGET_OPTION = click.option("--budget-hours", type=float, default=48.0, show_default=True,
                             help="Refuse work whose estimate (timed on its first unit) is longer; raise it to run "
                                  "a longer job.")


def measure_options(command):
    """The options of `measure` and `ablate measure`: which measures, their radii and budgets, the images, the device."""
    for decorator in reversed([
        click.option("--measures", default=None,
                     help="Which, comma-separated: hessian, ggn, worst, worst_adaptive, average, average_adaptive, "
                          "li, gap, norms, pacbayes, pacbayes_mag, jiang, jiang_mag, spectral, path_norm, "
                          "noise_scale, barrier and barrier_aligned (ablate measure: between pairs of a cell's models) [default: hessian,worst,worst_adaptive,"
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
            BUDGET_OPTION,
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


def report_skipped(problems: list[str]) -> None:
    """One line per file that could not be used; exit 1 when some were skipped."""
    for problem in problems:
        click.echo(f"landscape: skipped {problem}", err=True)
    if problems:
        sys.exit(1)
