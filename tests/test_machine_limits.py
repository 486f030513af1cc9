"""Memory checks respect the process's own limits: an address-space limit (RLIMIT_AS, `ulimit -v`) lowers what
`available_memory` reports, and a command refuses, in one line, work that the limit cannot hold (it crashed
allocating before)."""
import resource
import subprocess
import sys

LIMIT = 6 * 2 ** 30  # above what importing torch maps, far below this machine's memory


def limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, resource.getrlimit(resource.RLIMIT_AS)[1]))


def test_available_memory_is_what_the_address_space_limit_leaves():
    code = ("import torch, landscape.machine as m\n"
            "mapped = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize:'))\n"
            "print(m.available_memory(), m.machine_memory(), mapped)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=limited,
                          timeout=600)
    available, machine, mapped = (int(v) for v in done.stdout.split())
    assert available <= LIMIT - mapped + 64 * 2 ** 20  # the mapping grows a little between the two readings
    assert available < machine or machine < LIMIT - mapped


def test_a_pass_beyond_the_limit_is_refused_in_one_line(tiny_run, tmp_path):
    out = tmp_path / "s.h5"
    done = subprocess.run([sys.executable, "-m", "landscape", "surface", str(tiny_run), "--lr", "1e-3", "--device",
                           "cpu", "--points-per-pass", "100000", "--images", "64", "--out", str(out), "--quiet"],
                          capture_output=True, text=True, preexec_fn=limited, timeout=600)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "points_per_pass" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_a_lock_that_cannot_be_written_is_one_line_and_leaves_nothing(tmp_path):
    """A full disk, a quota or a file-size limit (RLIMIT_FSIZE here: writes fail with EFBIG) while the lock is
    written: a usage error naming the lock, and no `<out>.lock` left to block the next run."""
    code = ("import signal, resource, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (10, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
            "from landscape.files.lock import WriterLock\n"
            "from landscape.errors import UsageError\n"
            "try:\n"
            "    WriterLock(sys.argv[1]).__enter__()\n"
            "except UsageError as exc:\n"
            "    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out.h5")], capture_output=True, text=True,
                          timeout=600)
    assert "cannot write" in done.stdout and "out.h5.lock" in done.stdout, done.stdout + done.stderr
    assert not list(tmp_path.iterdir())
