"""`landscape ablate`: the reports' tables and the studies, as specs (run, measure, table, figures, list)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from landscape.cli.group import cli
from landscape.cli.options import (load_specs, make_executor, measure_choice, measure_options,
                                   print_line, spec_arguments, threads_value)
from landscape.errors import UsageError


@cli.group()
def ablate() -> None:
    """Ablation studies: every table of the reference reports as a spec (landscape/ablations/specs/*.toml).

    \b
    landscape ablate list
    landscape ablate run cifar10_resnet18_label_smoothing --preset quick --data-root data
    landscape ablate table --all --preset quick
    """


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

    from landscape.ablations.runner import plan, print_err, run_in_waves, run_jobs

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

        def run_wave(wave):
            return run_jobs_on_ray(wave, address=address, cpus_per_cell=cpus_per_cell, gpus_per_cell=gpus_per_cell,
                                   max_retries=max_retries, shared_results=shared_results, report=print_err,
                                   progress=not quiet, init_options=ray_test_options())
    else:
        if address or shared_results:
            raise UsageError("--address and --shared-results apply to --executor ray")

        def run_wave(wave):
            return run_jobs(wave, jobs, report=print_err, progress=not quiet, threads=threads, download=download)
    counts = run_in_waves(todo, run_wave)
    click.echo(", ".join(f"{n} {k}" for k, n in counts.items() if n or k != "interrupted"))
    if counts.get("failed") or counts.get("interrupted") or "not started" in counts:
        sys.exit(1)  # a failed cell, or stopped by a signal


@ablate.command(name="measure")
@spec_arguments
@measure_options
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="local: cells measured in parallel processes (CPU), each with its share of --threads; on a GPU "
                   "one after another.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", default=None, help="ray: the cluster [default: a local Ray].")
@click.option("--workers", type=int, default=0, show_default=True, help="ray: workers.")
@click.option("--cpus-per-worker", type=float, default=1.0, show_default=True, help="ray: CPUs per worker.")
@click.option("--gpus-per-worker", type=float, default=0.0, show_default=True, help="ray: GPUs per worker.")
def ablate_measure(specs: tuple[str, ...], all_specs: bool, preset: str, results: Path, measures: str | None,
                   rho: str, radius: str, images: int, test_images: int, steps: int, samples: int, m: int, seed: int,
                   bound: float, draws: int, tolerance: float, device: str, data_root: str | None, threads: int | str,
                   quiet: bool, jobs: int, executor: str, address: str | None, workers: int, cpus_per_worker: float,
                   gpus_per_worker: float) -> None:
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
    if pool is not None and (threads or jobs > 1):
        raise UsageError("--threads and --jobs apply to the local executor (on Ray, --workers and --cpus-per-worker "
                         "set them)")
    set_threads(threads, hint=not quiet)
    if jobs > 1 and resolve_device(device).type == "cpu":
        from landscape.ablations.runner import threads_per_cell
        from landscape.engine.executors import Processes

        pool = Processes(jobs, threads_per_cell(threads, jobs))
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
