"""What a command and every process it starts use, sampled while it runs, for bench/ scripts:
peak memory (PSS) and CPU seconds by kind of process."""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

import psutil


def sample_tree(pid: int, read: Callable[[psutil.Process], object], on_round: Callable[[dict], None],
                every: float) -> None:
    """In a daemon thread, every `every` seconds until the process `pid` ends: `read` each process
    of its tree (itself and every descendant), then hand `on_round` {pid: what was read} for the
    processes that could be read in that round."""

    def loop() -> None:
        try:
            root = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        while root.is_running() and root.status() != psutil.STATUS_ZOMBIE:
            values = {}
            for process in [root, *root.children(recursive=True)]:
                try:
                    values[process.pid] = read(process)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            on_round(values)
            time.sleep(every)

    threading.Thread(target=loop, daemon=True).start()


class PeakPss:
    """The largest summed PSS of a process tree in one round (`peak`, bytes), every 0.25 s. Ray's
    processes are the driver's descendants (a local Ray started by ray.init); PSS splits shared
    pages among their users, so the sum does not count shared libraries once per process."""

    def __init__(self, pid: int):
        self.peak = 0.0
        sample_tree(pid, lambda p: p.memory_full_info().pss, self._round, 0.25)

    def _round(self, values: dict) -> None:
        self.peak = max(self.peak, sum(values.values()))


class CpuByProcess:
    """CPU seconds of every process of a tree by what the process is (its Ray title or its
    command), every 0.5 s: who else used the cores."""

    def __init__(self, pid: int):
        self.seconds: dict[int, tuple[str, float]] = {}
        sample_tree(pid, self._read, self.seconds.update, 0.5)

    @staticmethod
    def _read(process: psutil.Process) -> tuple[str, float]:
        times = process.cpu_times()
        words = process.cmdline() or [process.name()]
        kind = words[0] if words[0].startswith("ray::") else " ".join(os.path.basename(w) for w in words[:3])
        return kind[:60], times.user + times.system

    def by_kind(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for kind, seconds in self.seconds.values():
            totals[kind] = totals.get(kind, 0.0) + seconds
        return dict(sorted(totals.items(), key=lambda item: -item[1]))
