"""What this machine offers a command: the cores it may use, how many of them others keep busy, and the memory it
can have (no torch; Linux's /proc where it exists, portable fallbacks elsewhere)."""
from __future__ import annotations

import os
import time

BUSY_SAMPLE_SECONDS = 0.1
BUSY_CACHE_SECONDS = 60.0
_busy_cache: tuple[float, float] | None = None


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a cluster's scheduler sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_memory() -> int:
    """Bytes of memory this process can still have: the least of the machine's (the kernel's MemAvailable: free
    memory plus the page cache and buffers it can reclaim; else the free pages; else 64 GiB), what its address-space
    limit leaves (RLIMIT_AS, `ulimit -v`, less the address space already mapped) and what its cgroup's limit leaves
    (memory.max of cgroup v2 or memory.limit_in_bytes of v1, less their current use: a container's or a batch
    job's memory)."""
    return min(machine_memory(), address_space_left(), cgroup_memory_left())


def machine_memory() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 64 * 2 ** 30


UNLIMITED = 2 ** 62


def address_space_left() -> int:
    """RLIMIT_AS less this process's mapped address space (VmSize), or UNLIMITED without a limit."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY or soft < 0:
            return UNLIMITED
        with open("/proc/self/status") as status:
            mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
        return max(0, soft - mapped)
    except (ImportError, OSError, ValueError, StopIteration):
        return UNLIMITED


def cgroup_memory_left() -> int:
    """The memory limit of this process's cgroup less its use (v2, else v1), or UNLIMITED without one."""
    try:
        with open("/proc/self/cgroup") as groups:
            lines = groups.read().splitlines()
    except OSError:
        return UNLIMITED
    for line in lines:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and controllers == "":  # cgroup v2
            files = [("/sys/fs/cgroup" + path.rstrip("/"), "memory.max", "memory.current"),
                     ("/sys/fs/cgroup", "memory.max", "memory.current")]
        elif "memory" in controllers.split(","):  # cgroup v1
            files = [("/sys/fs/cgroup/memory" + path.rstrip("/"), "memory.limit_in_bytes", "memory.usage_in_bytes"),
                     ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes")]
        else:
            continue
        for folder, limit_name, usage_name in files:
            try:
                with open(f"{folder}/{limit_name}") as limit_file, open(f"{folder}/{usage_name}") as usage_file:
                    limit, usage = limit_file.read().strip(), usage_file.read().strip()
            except OSError:
                continue
            if limit == "max" or int(limit) >= UNLIMITED:
                return UNLIMITED
            return max(0, int(limit) - int(usage))
    return UNLIMITED


def cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU time of the whole machine so far, in clock ticks (/proc/stat), or None."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:9]]  # guest time is already in user time
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle and waiting for I/O
    return sum(fields) - idle, sum(fields)


def own_jiffies() -> int:
    """CPU time of this process so far (all its threads), in clock ticks."""
    try:
        with open("/proc/self/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, ValueError, IndexError):
        times = os.times()
        return int((times.user + times.system) * os.sysconf("SC_CLK_TCK"))  # where there is no /proc


def cores_busy_elsewhere() -> float:
    """How many cores other processes keep busy now: the machine's busy CPU time over a short sample, less this
    process's own; 0 where it cannot be read. Sampled at most once a minute per process."""
    global _busy_cache
    now = time.monotonic()
    if _busy_cache is not None and now - _busy_cache[0] < BUSY_CACHE_SECONDS:
        return _busy_cache[1]
    first, mine = cpu_jiffies(), own_jiffies()
    if first is None:
        return 0.0
    time.sleep(BUSY_SAMPLE_SECONDS)
    second, mine_after = cpu_jiffies(), own_jiffies()
    total = max(second[1] - first[1], 1)
    busy_share = max(0, (second[0] - first[0]) - (mine_after - mine)) / total  # of all the machine's cores
    busy = busy_share * (os.cpu_count() or 1)
    _busy_cache = (now, busy)
    return busy


def idle_cores() -> int:
    """The cores this process may use that no other process keeps busy right now (at least 1)."""
    return max(1, min(usable_cores(), round((os.cpu_count() or 1) - cores_busy_elsewhere())))
