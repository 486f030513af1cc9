"""Wall time of each study's `cpu` preset by phase: training (`ablate run`), measuring (`ablate measure`, the line
included) and tables (`ablate table`), in this process's executor and on a local Ray, from an empty results folder.

    python benchmarks/bench_studies.py --data-root ../shared/data                      # every study, local
    python benchmarks/bench_studies.py --studies study_keskar_large_batch --executors local,ray

Each phase is the `landscape` command a user runs, timed end to end (process start included); the table at the end
is Markdown, with the share of training time that measuring takes (the studies aim at most 1/3).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.ablations.spec import load_spec, spec_paths  # noqa: E402
from landscape.machine import usable_cores  # noqa: E402


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "landscape", *command], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def phases(study: str, executor: str, data_root: str, results: Path, jobs: int) -> dict[str, float]:
    common = [study, "--preset", "cpu", "--results", str(results)]
    run = ["ablate", "run", *common, "--quiet", "--data-root", data_root]
    run += ["--jobs", str(jobs)] if executor == "local" else ["--executor", "ray"]
    measure = ["ablate", "measure", *common, "--quiet", "--data-root", data_root]
    measure += ["--jobs", str(jobs)] if executor == "local" else ["--executor", "ray"]
    return {"training": timed(run), "measuring": timed(measure), "tables": timed(["ablate", "table", *common])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("LANDSCAPE_TEST_DATA", "data"))
    parser.add_argument("--studies", default="", help="comma-separated spec names [default: every study]")
    parser.add_argument("--executors", default="local", help="local, ray or local,ray")
    parser.add_argument("--jobs", type=int, default=2, help="local: cells in parallel (ablate run and ablate measure --jobs)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the results under this folder")
    args = parser.parse_args()
    names = [n for n in args.studies.split(",") if n] or \
        [p.stem for p in spec_paths() if load_spec(p).study is not None]
    rows = []
    for executor in args.executors.split(","):
        for name in names:
            folder = Path(tempfile.mkdtemp(prefix=f"bench_{name}_{executor}_"))
            try:
                times = phases(name, executor, args.data_root, folder, args.jobs)
                if args.keep is not None:
                    shutil.copytree(folder, args.keep / executor, dirs_exist_ok=True)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            rows.append((name, executor, times))
            print(f"{name} ({executor}): " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()), flush=True)
    print(f"\n{usable_cores()} cores, --jobs {args.jobs}\n")
    print("| study | executor | training | measuring | tables | total | measuring / training |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, executor, t in rows:
        print(f"| {name} | {executor} | {t['training']:.0f} s | {t['measuring']:.0f} s | {t['tables']:.0f} s | "
              f"{sum(t.values()) / 60:.1f} min | {t['measuring'] / t['training']:.2f} |")


if __name__ == "__main__":
    main()
