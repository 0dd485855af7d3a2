"""The live view of a search on a terminal: one screen, refreshed in place with `rich`.

Running trials with a progress bar each (epoch k of n, the metric, seconds per epoch), counts of
finished, stopped-early and failed trials, the best metric so far and its configuration, the
elapsed time and an estimate of the time left. `SearchBoard` is the state, fed by Tune's
callback events and tested on plain values; `make_live_view` is the Tune callback that draws it.
When the output is not a terminal the runner prints plain lines instead (finetune.reports).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from finetune.reports import format_config, short_trial_name
from finetune.run_folders import format_seconds


@dataclass
class TrialState:
    trial_id: str
    config: dict
    epoch: int = 0
    value: float | None = None
    epoch_seconds: float | None = None
    status: str = "running"  # running | completed | stopped_early | failed


@dataclass
class SearchBoard:
    """What the live view shows, from Tune's events."""

    metric: str
    mode: str
    epochs: int
    num_trials: int
    trials_at_once: int
    started: float = field(default_factory=time.monotonic)
    trials: dict[str, TrialState] = field(default_factory=dict)
    best: float | None = None
    best_config: dict | None = None
    epochs_done: int = 0
    first_result_at: float | None = None

    def start(self, trial_id: str, config: dict) -> None:
        state = self.trials.setdefault(trial_id, TrialState(trial_id, config))
        state.status = "running"

    def result(self, trial_id: str, epoch: int, value, epoch_seconds, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        state = self.trials.setdefault(trial_id, TrialState(trial_id, {}))
        if self.first_result_at is None:
            # Throughput counts from the first trial's start: its start-up is part of every trial's cost.
            self.first_result_at = self.started
        self.epochs_done += 1
        state.epoch, state.epoch_seconds = epoch, epoch_seconds
        if isinstance(value, (int, float)) and math.isfinite(value):
            state.value = float(value)
            if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
                self.best, self.best_config = float(value), state.config

    def end(self, trial_id: str, status: str) -> None:
        self.trials.setdefault(trial_id, TrialState(trial_id, {})).status = status

    def count(self, status: str) -> int:
        return sum(t.status == status for t in self.trials.values())

    def seconds_left(self, now: float | None = None) -> float | None:
        """Epochs still to run over the epochs per second seen so far. Trials not started yet are
        counted at the mean length of the trials that ended (at train.epochs before any has), so
        the estimate falls as a scheduler stops trials early."""
        now = time.monotonic() if now is None else now
        if not self.epochs_done or self.first_result_at is None:
            return None
        ended = [t.epoch for t in self.trials.values() if t.status != "running"]
        per_trial = sum(ended) / len(ended) if ended else self.epochs
        running = sum(max(0, self.epochs - t.epoch) for t in self.trials.values() if t.status == "running")
        pending = max(0, self.num_trials - len(self.trials)) * per_trial
        rate = self.epochs_done / max(now - self.first_result_at, 1e-9)
        return (running + pending) / rate


def render(board: SearchBoard, height: int = 24, now: float | None = None):
    """The board as one rich renderable that fits `height` lines."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    now = time.monotonic() if now is None else now
    left = board.seconds_left(now)
    done = sum(board.count(s) for s in ("completed", "stopped_early", "failed"))
    header = Text.assemble(
        (f"{done}/{board.num_trials} trials done", "bold"),
        f"  completed {board.count('completed')}  stopped early {board.count('stopped_early')}  ",
        (f"failed {board.count('failed')}", "red" if board.count("failed") else ""),
        f"  running {board.count('running')} (at most {board.trials_at_once} at once)",
    )
    timing = Text(f"elapsed {format_seconds(now - board.started)}  left ~{format_seconds(left) if left is not None else '?'}")
    best = Text.assemble(("best ", "bold"), f"{board.metric} ",
                         (f"{board.best:.4f}" if board.best is not None else "-", "green bold"),
                         f"  {format_config(board.best_config or {})}")
    table = Table(box=None, pad_edge=False, expand=False)
    for column in ("trial", "progress", "epoch", board.metric, "s/epoch", "config"):
        table.add_column(column, no_wrap=True, overflow="ellipsis", max_width=60 if column == "config" else None)
    running = [t for t in board.trials.values() if t.status == "running"]
    room = max(1, height - 6)
    for state in running[:room]:
        table.add_row(
            short_trial_name(state.trial_id),
            ProgressBar(total=board.epochs, completed=state.epoch, width=24),
            f"{state.epoch}/{board.epochs}",
            "-" if state.value is None else f"{state.value:.4f}",
            "-" if state.epoch_seconds is None else f"{state.epoch_seconds:.2f}",
            format_config(state.config),
        )
    parts = [header, timing, best, table]
    if len(running) > room:
        parts.append(Text(f"... and {len(running) - room} more running"))
    return Group(*parts)


def make_live_view(job, num_trials: int, trials_at_once: int, run_dir: str, out):
    """A Tune callback that draws the board on the terminal `out`, refreshed in place."""
    from ray.tune import Callback
    from rich.console import Console
    from rich.live import Live

    from finetune import storage
    from finetune.failures import read_failure

    board = SearchBoard(job.search.metric, job.search.mode, job.train.epochs, num_trials, trials_at_once)

    class LiveView(Callback):
        def __init__(self):
            self.board = board
            self.live = None

        def __getstate__(self):  # Tune pickles its callbacks with the experiment; the screen stays here
            return {**self.__dict__, "live": None}

        def setup(self, **info):
            console = Console(file=out, force_terminal=True)
            self.live = Live(console=console, refresh_per_second=4, transient=False, redirect_stdout=False,
                             redirect_stderr=False, get_renderable=lambda: render(board, console.size.height))
            self.live.start()

        def on_trial_start(self, iteration, trials, trial, **info):
            board.start(trial.trial_id, trial.config.get("space", {}))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            board.result(trial.trial_id, int(result.get("epoch") or 0), result.get(job.search.metric),
                         result.get("epoch_seconds"))

        def on_trial_complete(self, iteration, trials, trial, **info):
            if read_failure(storage.join(run_dir, "trials", trial.trial_id)) is not None:
                board.end(trial.trial_id, "failed")
                return
            done = (trial.last_result or {}).get("epoch", 0)
            board.end(trial.trial_id, "completed" if done >= job.train.epochs else "stopped_early")

        def on_trial_error(self, iteration, trials, trial, **info):
            board.end(trial.trial_id, "failed")

        def on_experiment_end(self, trials, **info):
            self.close()

        def close(self) -> None:
            if self.live is not None and self.live.is_started:
                self.live.refresh()
                self.live.stop()

    return LiveView()
