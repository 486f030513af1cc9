"""What `--threads auto` buys on a shared machine: one workload at 1 thread, at every core (the reproducible
default), and at `auto` (`engine.devices.load_aware_threads`), on a quiet machine and beside N busy loops.

The workload is Hessian-vector products of VGG-A with BatchNorm (width 1/4, 256 CIFAR images), the inner loop
of `hessian` and of sharpness tracking; each cell is the median of --repeats timed calls after a warm-up.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import landscape  # noqa: E402
from landscape.engine.devices import load_aware_threads  # noqa: E402
from landscape.machine import usable_cores  # noqa: E402
from landscape.training.models import build_model  # noqa: E402


def seconds_per_call(model, data, threads: int, repeats: int) -> float:
    landscape.hessian(model, data, top_k=1, max_steps=2, threads=threads)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        landscape.hessian(model, data, top_k=1, max_steps=6, tol=1e-12, threads=threads)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("LANDSCAPE_TEST_DATA", "data"))
    parser.add_argument("--busy", default="0,2", help="numbers of busy loops beside the workload, comma-separated")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model("vgg_bn", width=args.width, num_classes=10, image_size=32)
    data = landscape.cifar10(args.data_root, "train", args.images)
    cores = usable_cores()
    print(f"| busy loops beside | auto chose | s at 1 thread | s at {cores} threads (the default) | s at auto |"
          f" all cores / 1 thread |")
    print("| --- | --- | --- | --- | --- | --- |")
    for busy in [int(b) for b in args.busy.split(",")]:
        loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            time.sleep(1.0)  # let the loops show up as busy cores
            import landscape.machine as machine

            machine._busy_cache = None  # sample the machine afresh for this row
            chosen = load_aware_threads()
            one = seconds_per_call(model, data, 1, args.repeats)
            every = seconds_per_call(model, data, cores, args.repeats)
            default = seconds_per_call(model, data, chosen, args.repeats)
        finally:
            for loop in loops:
                loop.kill()
                loop.wait()
        print(f"| {busy} | {chosen} | {one:.2f} | {every:.2f} | {default:.2f} | {every / one:.2f} |", flush=True)


if __name__ == "__main__":
    main()
