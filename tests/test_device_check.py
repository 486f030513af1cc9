"""The GPU check script runs end to end as a CPU dry run, so it cannot rot between GPU loans."""
import json
import os
import subprocess
import sys

from tests.conftest import HANG_GUARD, REPO, real_data_root


def test_device_check_dry_run_passes_and_writes_its_tables(tmp_path):
    data = real_data_root()
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    command = ["bash", "benchmarks/device_check.sh", "--dry-run"] + (["--data-root", str(data)] if data else [])
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_GUARD)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "device_check.json").read_text())
    names = {row["check"] for row in report["smoke"]}
    for path in ("loop bf16", "loop channels_last", "fused fp32", "fused bf16", "probes looped, batched, fused",
                 "resume after SIGTERM", "branch a run (loop, fused)",
                 "branching study: children, pair barriers (ablate)", "sharpness tracking", "surface bf16 vs CPU", "hessian both HVP methods vs CPU",
                 "API surface/hessian/probe and Recorder", "ray surface vs in process",
                 "GGN/Fisher operators, measures (the bounds and norms too), connect, critical sharpness, training to a "
        "criterion (fused)"):
        assert path in names
    assert all(row["status"] == "pass" for row in report["smoke"])
    if data:  # the benchmarks need CIFAR files; each printed its table
        assert len(report["benchmarks"]) == 11 and all(b["rc"] == 0 for b in report["benchmarks"]), report["benchmarks"]
        assert all("x" in b["output"] or "overhead" in b["output"] or "eigsh" in b["output"]
                   for b in report["benchmarks"])
    table = (tmp_path / "out" / "device_check.md").read_text()
    assert table.startswith("# Device check") and "| fused bf16 | pass |" in table
