"""A run stopped half-way, keeping what it has: Ctrl-C (SIGINT), SIGTERM (what Kubernetes sends a
pod before it kills it), or storage that refuses writes (a full disk, a read-only mount).

The first stop request during the search asks Ray Tune to end its run the way it ends one on
Ctrl-C: trials stop, each keeps its last checkpoint, and Tune saves its experiment state one last
time with the unfinished trials marked unfinished, so `finetune resume RUN` continues them. The
runner then writes a partial `metrics.parquet` and a `summary.json` whose status is `interrupted`.
A second signal, or a signal outside the search, stops at once (`StopNow`); what Tune saved last
is still there to resume from.

Tune's own SIGINT handler is turned off (finetune._compat.DRIVER_ENVIRONMENT) so that SIGINT and
SIGTERM take the same path through this module.
"""

from __future__ import annotations

import signal
import sys
import threading
import time

from ray.tune import Callback

from finetune import _compat, storage
from finetune.errors import StopNow
from finetune.storage import refused_write

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class RunStopper:
    """The driver's handlers for SIGINT and SIGTERM for the length of a run, and the reasons a
    search was asked to stop. Use as a context manager; `searching` says whether a first signal
    may stop the search gracefully (otherwise it stops at once)."""

    def __init__(self, out=None):
        self.signum: int | None = None
        self.storage_failure: str | None = None
        self.searching = False
        self.forwarded = False
        self.out = out or sys.stderr
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "RunStopper":
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def install(self) -> None:
        """(Re)install the handlers: `ray.init` replaces the SIGTERM handler with its own
        (ray/_private/worker.py, init), so the runner calls this again once Ray is up."""
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach only the main thread; a run driven from another thread keeps the defaults
        for signum in SIGNALS:
            previous = signal.signal(signum, self._handle)
            self._previous.setdefault(signum, previous)

    @property
    def stopping(self) -> bool:
        return self.signum is not None or self.storage_failure is not None

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None and self.searching:
            self.signum = signum
            print(f"\n{signal_name(signum)}: stopping the trials; each keeps its last checkpoint. "
                  "Press Ctrl-C again to stop at once.", file=self.out, flush=True)
            return  # StopWatch hands it to Tune at its next step
        self.signum = self.signum or signum
        raise StopNow(signum)

    def stop_for_storage(self, reason: str) -> None:
        if self.storage_failure is None:
            self.storage_failure = reason

    def callback(self, run_dir: str) -> "StopWatch":
        return StopWatch(self, run_dir)


class StopWatch(Callback):
    """A Tune callback, in the driver's main thread: hands a stop request to Tune at the start of
    its next step, and watches the run's storage. Trials write their checkpoints there and Tune its
    results and state, mostly where this process cannot see the error (Tune logs its own failed
    syncs, and a trial's error file on a full disk is itself cut short), so the storage is probed:
    a small file written and removed every PROBE_INTERVAL_S, and whenever a trial fails."""

    PROBE_INTERVAL_S = 5.0

    def __init__(self, stopper: RunStopper, run_dir: str):
        self.stopper, self.run_dir = stopper, run_dir
        self.probed_at = time.monotonic()

    def __getstate__(self) -> dict:
        return {}  # Tune pickles its callbacks with the experiment; the stopper stays in this process

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        stopper = getattr(self, "stopper", None)
        if stopper is None:
            return
        if time.monotonic() - self.probed_at > self.PROBE_INTERVAL_S:
            self._probe()
        if stopper.stopping and not stopper.forwarded:
            stopper.forwarded = True
            _compat.end_tune_run_gracefully()

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        self._check_storage(trial)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._check_storage(trial)

    def _check_storage(self, trial) -> None:
        if getattr(self, "stopper", None) is None:
            return
        try:
            reason = refused_write(trial.get_error())
        except Exception:  # an error file that a full disk cut short
            reason = None
        if reason is not None:
            self.stopper.stop_for_storage(reason)
        else:
            self._probe()

    def _probe(self) -> None:
        self.probed_at = time.monotonic()
        reason = storage.refuses_writes(self.run_dir)
        if reason is not None:
            self.stopper.stop_for_storage(reason)
