"""Seconds a command takes from start to exit, this checkout against another (e.g. an older commit), alternated.

Small commands are mostly their start (imports): this measures what a change to the imports saves. A tiny run is
trained first (synthetic data, width 1/16); each command then runs `--repeats` times with each checkout, in turn,
one thread, and the medians and their ratio are printed. Not in device_check.sh: a start is the CPU's and
Python's work, not the accelerator's.

    git worktree add /tmp/before de61786
    python benchmarks/bench_startup.py --baseline /tmp/before
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "info": ["info", "{run}"],
    "plot": ["plot", "{run}", "--out", "{out}"],
    "surface 3x3": ["surface", "{run}", "--lr", "1e-3", "--grid", "-1:1:3", "--images", "32", "--out", "{out}/s.h5",
                    "--overwrite", "--quiet"],
    "hessian top-1": ["hessian", "{run}", "--lr", "1e-3", "--top-k", "1", "--images", "32", "--out", "{out}/h.h5",
                      "--overwrite", "--quiet"],
    "run (1 epoch)": ["run", "--dataset", "synthetic", "--train-subset", "64", "--width", "0.0625", "--epochs", "1",
                      "--lrs", "1e-3", "--out", "{out}/r.h5", "--overwrite", "--quiet"],
}


def seconds(checkout: Path, args: list[str], folder: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "landscape", *args], cwd=folder, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, type=Path, help="another checkout of landscape")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    run = folder / "tiny.h5"
    subprocess.run([sys.executable, "-m", "landscape", "run", "--dataset", "synthetic", "--train-subset", "128",
                    "--width", "0.0625", "--epochs", "2", "--lrs", "1e-3,5e-4", "--out", str(run), "--quiet"],
                   env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    print(f"seconds from start to exit, median of {args.repeats} alternated runs, 1 thread\n")
    print("| command | baseline | this checkout | ratio |")
    print("| --- | --- | --- | --- |")
    for name, template in COMMANDS.items():
        times = {"baseline": [], "this": []}
        for _ in range(args.repeats):
            for label, checkout in (("baseline", args.baseline), ("this", REPO)):
                out = folder / label
                out.mkdir(exist_ok=True)
                argv = [part.format(run=run, out=out) for part in template]
                times[label].append(seconds(checkout, argv, folder))
        base, this = statistics.median(times["baseline"]), statistics.median(times["this"])
        print(f"| {name} | {base:.2f} | {this:.2f} | {this / base:.2f}x |")


if __name__ == "__main__":
    main()
