"""Where Ray's own output goes: the run folder's `ray.log`, or the terminal with `--verbose`.

Without `--verbose`, what the Ray workers print (TensorFlow's start-up lines, Ray's actor banners,
Train's messages) and what Ray, Tune and Train log or warn in the driver (the "Token
authentication is enabled" warning, Tune's warnings) stay off the screen, so the live view and
the plain progress lines are the only output. It is kept in memory until the run folder exists,
then appended to `<run>/ray.log`.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import deque

from finetune import storage

LOG_FILE = "ray.log"
_HELD_LINES = 20_000  # lines kept in memory while no run folder is attached


class RunLog:
    """A sink for lines: held in memory, or appended to a run folder's ray.log once attached
    (local folders as they come; object storage once, when the run ends)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._held: deque[str] = deque(maxlen=_HELD_LINES)
        self._file = None
        self._location: str | None = None

    def write_line(self, line: str) -> None:
        with self._lock:
            if self._file is not None:
                self._file.write(line + "\n")
                self._file.flush()
            else:
                self._held.append(line)

    def attach(self, run_dir: str) -> None:
        """From now on, lines go to <run_dir>/ray.log, after those held so far."""
        self.detach()  # a run before this one that ended without detaching (an error, Ctrl-C)
        location = storage.join(run_dir, LOG_FILE)
        with self._lock:
            self._location = location
            if storage.is_local(location):
                self._file = open(location.removeprefix("file://"), "a")
                self._file.writelines(line + "\n" for line in self._held)
                self._file.flush()
                self._held.clear()

    def detach(self) -> None:
        """The run has ended: close its log (writing it whole to object storage) and hold again."""
        with self._lock:
            if self._file is not None:
                self._file.close()
            elif self._location is not None:
                previous = storage.read_bytes(self._location) if storage.exists(self._location) else b""
                storage.write_bytes(self._location, previous + "".join(f"{l}\n" for l in self._held).encode())
                self._held.clear()
            self._file = self._location = None


RUN_LOG = RunLog()
atexit.register(RUN_LOG.detach)  # a run that ended in an error still leaves its log whole


class _ToRunLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
            RUN_LOG.write_line(f"{stamp} {record.levelname} {record.name}: {record.getMessage()}")
        except Exception:  # a log line must never break the run
            self.handleError(record)


_installed = False


def keep_off_screen() -> None:
    """Send the driver's Ray, Tune and Train logging, and Python warnings, to RUN_LOG instead of
    the terminal. Call after `import ray` (which sets up the "ray" logger's handlers) and before
    `ray.init` (which logs the token-authentication warning)."""
    global _installed
    if _installed:
        return
    handler = _ToRunLog()
    for name in ("ray", "py.warnings"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
    logging.getLogger("ray").setLevel(logging.INFO)
    logging.captureWarnings(True)
    _installed = True


def worker_output(batch: dict) -> None:
    """One batch of lines a Ray worker printed, as Ray's log monitor hands them to the driver."""
    source = batch.get("actor_name") or batch.get("task_name") or ""
    where = f"({source + ' ' if source else ''}pid={batch.get('pid')}, ip={batch.get('ip')})"
    stream = "stderr" if batch.get("is_err") else "stdout"
    lines = batch.get("lines", [])
    if batch.get("pid") == "autoscaler":
        # Its status table every few seconds; Ray itself prints only its event lines
        # (ray/_private/worker.py, filter_autoscaler_events; LOG_PREFIX_EVENT_SUMMARY).
        lines = [line for line in lines if ":event_summary:" in line]
    for line in lines:
        RUN_LOG.write_line(f"{where} {stream}: {line}")
