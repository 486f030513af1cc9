"""A surface in this process against the same surface on a local Ray with W workers, and what Ray's start costs.

Both evaluate the same snapshot, directions, grid and images with the same threads per process (in process:
`--threads T`; on Ray: `--cpus-per-worker T`), so the files are checked equal value for value.

    python benchmarks/bench_ray_surface.py --data-root ../shared/data --grid=-1:1:7 --workers 2
    python benchmarks/bench_ray_surface.py --device cuda --width 1 --grid=-1:1:11 --workers 4 --gpus-per-worker 0.25
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.commands.surface import SurfaceOptions, compute_surface  # noqa: E402
from landscape.engine.executors import RayExecutor, import_ray  # noqa: E402
from landscape.files.surface_file import read_surface  # noqa: E402
from landscape.training.config import RunConfig  # noqa: E402
from landscape.training.runner import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("LANDSCAPE_TEST_DATA", "data"))
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--grid", default="-1:1:7")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpus-per-worker", type=float, default=1)
    parser.add_argument("--gpus-per-worker", type=float, default=0)
    parser.add_argument("--single-gpu-workers", type=int, default=0,
                        help="also time this many workers of a whole GPU each (e.g. 1, against 4 of 0.25)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    ray = import_ray()
    threads = int(args.cpus_per_worker)
    with tempfile.TemporaryDirectory() as folder:
        run = train(RunConfig(model="vgg_bn", width=args.width, lrs=(1e-3,), epochs=1, data_root=args.data_root,
                              train_subset=max(args.images, 1024), device=args.device), Path(folder) / "run.h5",
                    progress=False)
        options = dict(lr=1e-3, grid=args.grid, images=args.images, device=args.device, threads=threads)
        start = time.perf_counter()
        here = read_surface(compute_surface(run, SurfaceOptions(**options), Path(folder) / "here.h5", progress=False))
        in_process = time.perf_counter() - start
        start = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        started = time.perf_counter() - start
        rows = []
        setups = [(args.workers, args.gpus_per_worker)]
        if args.single_gpu_workers:
            setups.insert(0, (args.single_gpu_workers, 1.0))
        for workers, gpus in setups:
            executor = RayExecutor(workers=workers, cpus_per_worker=args.cpus_per_worker, gpus_per_worker=gpus)
            start = time.perf_counter()
            there = read_surface(compute_surface(run, SurfaceOptions(**options), Path(folder) / f"ray{workers}.h5",
                                                 progress=False, executor=executor))
            rows.append((workers, gpus, time.perf_counter() - start, there))
        start = time.perf_counter()
        ray.shutdown()
        stopped = time.perf_counter() - start
    points = here.done.size
    print(f"vgg_bn width {args.width:g}, {points} points x {args.images} images on {args.device}, {threads} thread(s) "
          f"per process")
    print(f"{'':>30}  {'seconds':>8}  {'points/s':>9}  {'x in process':>12}  equal")
    print(f"{'in process':>30}  {in_process:8.2f}  {points / in_process:9.3f}  {'x1.00':>12}")
    for workers, gpus, seconds, there in rows:
        equal = "identical" if np.array_equal(here.loss, there.loss) else \
            f"max rel. diff {np.max(np.abs(here.loss - there.loss) / np.abs(here.loss)):.1e}"
        print(f"{f'Ray, {workers} x ({args.cpus_per_worker:g} CPU, {gpus:g} GPU)':>30}  {seconds:8.2f}  "
              f"{points / seconds:9.3f}  {f'x{in_process / seconds:.2f}':>12}  {equal}")
    print(f"Ray's own start {started:.1f}s and stop {stopped:.1f}s (not in the times above; the workers' start and "
          f"the evaluator shipped to them are included)")


if __name__ == "__main__":
    main()
