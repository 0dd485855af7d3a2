"""Peak memory of a command and every process it starts, for bench/ scripts."""

from __future__ import annotations

import threading
import time

import psutil


class PeakPss:
    """Samples the summed PSS of a process tree every 0.25 s in a thread until the root process
    ends; `peak` holds the largest sum in bytes. Ray's processes are the driver's descendants (a
    local Ray started by ray.init); PSS splits shared pages among their users, so the sum does not
    count shared libraries once per process."""

    def __init__(self, pid: int):
        self.peak = 0.0
        self._thread = threading.Thread(target=self._sample, args=(pid,), daemon=True)
        self._thread.start()

    def _sample(self, pid: int) -> None:
        try:
            root = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        while root.is_running() and root.status() != psutil.STATUS_ZOMBIE:
            total = 0
            for process in [root, *root.children(recursive=True)]:
                try:
                    total += process.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.25)
