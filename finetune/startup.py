"""Where a trial's start-up time goes: wall-clock marks written by the code itself, one per phase.

A trial records marks in the processes it runs in (the Tune trial, the Ray Train controller, each
worker) and rank 0 reports them with its first epoch as `startup.<phase>` (seconds since the
trial started), so `metrics.parquet` shows, trial by trial, what the first step waited for.
`bench/trial_startup.py` turns them into the table of docs/benchmarks.md.

Phases, in the order a `ray_train` trial meets them (an `in_trial` trial has the worker's only):

- trial_process: the Tune trial's process was started (before the trial: a reused or warm process)
- fit: the trial called the Ray Train trainer's `fit()`
- controller_process: the Train controller's process was started
- worker_process: rank 0's process was started
- loop: the training function began on rank 0 (after the worker group and TF_CONFIG set-up)
- tensorflow: TensorFlow was imported and configured
- data: the run's data was in the worker
- strategy: the distribution strategy (MultiWorkerMirroredStrategy's collective set-up) was ready
- model: model and optimizer were built
- pipeline: the input pipelines were built
- first_step: the first training step finished (tracing the epoch function and the first all-reduce)
"""

from __future__ import annotations

import os
import time

PHASES = ("trial_process", "fit", "controller_process", "worker_process", "loop", "tensorflow", "data",
          "strategy", "model", "pipeline", "first_step")


def process_started_at(pid: int | None = None) -> float | None:
    """When a process was started (wall clock), from /proc; None where /proc is not there."""
    try:
        with open(f"/proc/{pid or os.getpid()}/stat") as stat:
            ticks = int(stat.read().rpartition(")")[2].split()[19])  # field 22: starttime, in clock ticks
        with open("/proc/stat") as system:
            boot = next(float(line.split()[1]) for line in system if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return None


class StartupClock:
    """Marks of one trial's start-up, each a wall-clock time; `relative()` gives seconds since the
    trial started. Travels between processes as a plain dict."""

    def __init__(self, trial_started_at: float, marks: dict[str, float] | None = None):
        self.trial_started_at = trial_started_at
        self.marks: dict[str, float] = dict(marks or {})

    def mark(self, phase: str, at: float | None = None) -> None:
        if phase not in self.marks:  # the first time counts (a resumed trial passes again)
            self.marks[phase] = time.time() if at is None else at

    def relative(self) -> dict[str, float]:
        return {f"startup.{phase}": round(self.marks[phase] - self.trial_started_at, 3)
                for phase in PHASES if self.marks.get(phase) is not None}
