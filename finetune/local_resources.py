"""What a local Ray would offer on this machine, estimated without importing or starting Ray, so
that `finetune plan` answers in well under a second (importing Ray alone takes longer).

The same arithmetic as Ray's node start-up, `ResourceAndLabelSpec.resolve`
(ray/_private/resource_and_label_spec.py) and the helpers it calls in ray/_private/utils.py and
ray/_common/utils.py (Ray 2.60); `tests/test_plan.py` compares the result with Ray's own.
"""

from __future__ import annotations

import os

# ray/_private/ray_constants.py
OBJECT_STORE_PROPORTION = 0.3  # DEFAULT_OBJECT_STORE_MEMORY_PROPORTION
OBJECT_STORE_MAX_BYTES = 200 * 10**9  # DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES
SHM_THRESHOLD_BYTES = 10**10  # REQUIRE_SHM_SIZE_THRESHOLD

CGROUP = "/sys/fs/cgroup"


def cpus() -> int:
    """Ray's get_num_cpus (ray/_private/utils.py): the container's CPU quota or cpuset when it has one (the
    smaller of the two), else every core; truncated to a whole number."""
    count = os.cpu_count() or 1
    quota = _cpu_quota()
    cpuset = _cpuset_size(f"{CGROUP}/cpuset/cpuset.cpus")
    limit = min(quota, cpuset) if quota and cpuset else quota or cpuset
    return int(limit) if limit else count


def _cpu_quota() -> float | None:
    if os.path.exists(f"{CGROUP}/cpu/cpu.cfs_quota_us") and os.path.exists(f"{CGROUP}/cpu/cpu.cfs_period_us"):
        quota = float(_read(f"{CGROUP}/cpu/cpu.cfs_quota_us")) / float(_read(f"{CGROUP}/cpu/cpu.cfs_period_us"))
    elif os.path.exists(f"{CGROUP}/cpu.max"):
        limit, period = _read(f"{CGROUP}/cpu.max").split()
        quota = float(limit) / float(period) if limit.isnumeric() and period.isnumeric() else None
    else:
        return None
    if quota is not None and quota < 0:
        return None
    return 1 if quota == 0 else quota


def _cpuset_size(path: str) -> int | None:
    if not os.path.exists(path):
        return None
    ids = 0
    for part in _read(path).strip().split(","):
        start, _, end = part.partition("-")
        ids += int(end) - int(start) + 1 if end else 1
    return ids


def gpus() -> int:
    """NvidiaGPUAcceleratorManager (ray/_private/accelerators/nvidia_gpu.py): the NVIDIA devices
    the driver lists, capped by CUDA_VISIBLE_DEVICES when it is set."""
    found = len(os.listdir("/proc/driver/nvidia/gpus")) if os.path.isdir("/proc/driver/nvidia/gpus") else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or visible == "NoDevFiles":
        return found
    return min(found, len([v for v in visible.split(",") if v.strip()]))


def memory() -> float:
    """The `memory` resource, ResourceAndLabelSpec._resolve_memory_resources: the memory available
    now (estimate_available_memory: the cgroup-aware total less what is used) less the object
    store, which takes 30% of that, capped by /dev/shm (with 5% spare, never below 10 GB) and by
    200 GB (resolve_object_store_memory)."""
    import psutil

    total = psutil.virtual_memory().total
    limit = _cgroup_memory_limit()
    if limit is not None:
        total = min(limit, total)
    used = _cgroup_memory_used()
    available = total - (used if used is not None else psutil.virtual_memory().used)
    cap = OBJECT_STORE_MAX_BYTES
    if os.path.isdir("/dev/shm"):
        stats = os.statvfs("/dev/shm")
        cap = min(cap, max(SHM_THRESHOLD_BYTES, int(stats.f_bsize * stats.f_bavail * 0.95)))
    object_store = min(int(available * OBJECT_STORE_PROPORTION), cap)
    return float(available - object_store)


def _cgroup_memory_limit() -> int | None:
    """Ray's get_system_memory (ray/_common/utils.py): the container's limit, when it has one."""
    for path in (f"{CGROUP}/memory/memory.limit_in_bytes", f"{CGROUP}/memory.max"):
        if os.path.exists(path):
            value = _read(path).strip()
            return int(value) if value.isnumeric() else None
    return None


def _cgroup_memory_used() -> int | None:
    """Ray's get_cgroup_used_memory (ray/_private/utils.py): the cgroup's usage less its page cache."""
    for usage, stat, prefix in ((f"{CGROUP}/memory/memory.usage_in_bytes", f"{CGROUP}/memory/memory.stat", "total_"),
                                (f"{CGROUP}/memory.current", f"{CGROUP}/memory.stat", "")):
        if os.path.exists(usage) and os.path.exists(stat):
            fields = dict(line.split()[:2] for line in _read(stat).splitlines() if len(line.split()) >= 2)
            inactive, active = fields.get(f"{prefix}inactive_file"), fields.get(f"{prefix}active_file")
            if inactive is None or active is None:
                return None
            return int(_read(usage).splitlines()[0]) - int(inactive) - int(active)
    return None


def _read(path: str) -> str:
    with open(path) as handle:
        return handle.read()
