"""What a run tells its user: live progress lines, the per-epoch metrics table (Parquet), the
trial outcomes and the final table of trials."""

from __future__ import annotations

import io
import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from finetune import storage

# Columns every metrics row has, before the metrics themselves.
KEY_COLUMNS = ("trial_id", "epoch")
# What Tune adds to each result that is bookkeeping, not a metric of the model.
_TUNE_BOOKKEEPING = {
    "timestamp", "checkpoint_dir_name", "should_checkpoint", "done", "training_iteration", "trial_id",
    "date", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "time_since_restore",
    "iterations_since_restore", "config", "experiment_tag",
}


@dataclass
class TrialOutcome:
    trial_id: str
    status: str  # completed | stopped_early | failed
    epochs: int
    config: dict
    best_metric: float | None
    best_epoch: int | None
    error: str | None = None
    node_ip: str | None = None
    failure_kind: str | None = None  # for failed trials: finetune.failures' kind, or None (retries ran out)


def short_trial_name(trial_id: str) -> str:
    """'3f2a1_00006' -> '7': Tune's ids end in the trial's index from 0; people count from 1."""
    _, _, index = trial_id.rpartition("_")
    return str(int(index) + 1) if index.isdigit() else trial_id


def format_config(config: dict) -> str:
    return " ".join(f"{path.rpartition('.')[2]}={_format_value(v)}" for path, v in config.items())


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def make_progress_printer(job, num_trials: int, run_dir: str, out=None):
    """A Tune callback printing one line per trial event and epoch, with the best so far."""
    from ray.tune import Callback

    from finetune.failures import read_failure

    metric, mode, epochs = job.search.metric, job.search.mode, job.train.epochs

    class ProgressPrinter(Callback):
        def __init__(self):
            self.best = None
            self.seen = set()
            self.started = time.monotonic()
            self.out = out or sys.stdout

        def _print(self, text: str) -> None:
            elapsed = time.monotonic() - self.started
            print(f"[{elapsed:7.1f}s] {text}", file=self.out, flush=True)

        def on_trial_start(self, iteration, trials, trial, **info):
            if trial.trial_id in self.seen:
                self._print(f"trial {short_trial_name(trial.trial_id)} restarted")
                return
            self.seen.add(trial.trial_id)
            self._print(f"trial {short_trial_name(trial.trial_id)}/{num_trials} started: "
                        f"{format_config(trial.config.get('space', {}))}")

        def on_trial_recover(self, iteration, trials, trial, **info):
            self._print(f"trial {short_trial_name(trial.trial_id)} failed: {error_line(trial.get_error())}; "
                        "restarting it from its last checkpoint")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            value = result.get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                if self.best is None or (value > self.best if mode == "max" else value < self.best):
                    self.best = value
            best = f"{self.best:.4f}" if self.best is not None else "-"
            self._print(
                f"trial {short_trial_name(trial.trial_id)} epoch {result.get('epoch')}/{epochs}: "
                f"loss {result.get('loss', float('nan')):.4f} {metric} {value:.4f} "
                f"({result.get('epoch_seconds', 0):.2f}s) best {best}"
            )

        def on_trial_complete(self, iteration, trials, trial, **info):
            failure = read_failure(storage.join(run_dir, "trials", trial.trial_id))
            if failure is not None:  # failed for good: the trial ended without raising (finetune.failures)
                self._print(f"trial {short_trial_name(trial.trial_id)} failed: {failure['reason']}")
                return
            done = (trial.last_result or {}).get("epoch", 0)
            how = "completed" if done >= epochs else f"stopped early by {job.search.scheduler.type}"
            self._print(f"trial {short_trial_name(trial.trial_id)} {how} after {done} epochs")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._print(f"trial {short_trial_name(trial.trial_id)} failed: {error_line(trial.get_error())}")

    return ProgressPrinter()


def error_line(error: Any) -> str:
    """The one line of an error a user needs: the innermost exception's message."""
    if error is None:
        return "unknown error"
    from finetune.errors import innermost_cause

    cause = innermost_cause(error)
    text = str(cause).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    # Tune's error files hold a traceback: the last line names the exception.
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line.strip()[:300]
    return (lines[-1] if lines else type(cause).__name__).strip()[:300]


def metrics_rows(results, space_paths: list[str]) -> list[dict]:
    """One row per trial and epoch, once each, even when a trial was restarted and repeated an epoch
    (the later report wins)."""
    rows: dict[tuple[str, int], dict] = {}
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or frame.empty or "epoch" not in frame:
            continue
        sampled = (result.config or {}).get("space", {})
        for record in frame.to_dict("records"):
            if record.get("epoch") is None or (isinstance(record["epoch"], float) and math.isnan(record["epoch"])):
                continue
            row = {"trial_id": record["trial_id"], "epoch": int(record["epoch"])}
            for key, value in record.items():
                if key not in _TUNE_BOOKKEEPING and key not in row and not key.startswith("config/"):
                    row[key] = value
            for path in space_paths:
                row[f"config.{path}"] = sampled.get(path)
            rows[(row["trial_id"], row["epoch"])] = row
    return [rows[key] for key in sorted(rows)]


def metrics_table(rows: list[dict]) -> pa.Table:
    columns: dict[str, list] = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, [])
    for row in rows:
        for key in columns:
            columns[key].append(row.get(key))
    arrays = {}
    for key, values in columns.items():
        try:
            arrays[key] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays[key] = _mixed_column(values)
    return pa.table(arrays)


def _mixed_column(values: list) -> pa.Array:
    """A column of text reported by some epochs only (pandas fills the others with NaN), as text
    and nulls; other mixed types (a choice between a number and a list, say) as JSON text."""
    missing = [v is None or (isinstance(v, float) and math.isnan(v)) for v in values]
    if all(m or isinstance(v, str) for v, m in zip(values, missing)):
        return pa.array([None if m else v for v, m in zip(values, missing)], pa.string())
    return pa.array([None if v is None else json.dumps(v) for v in values])


def write_parquet(table: pa.Table, location: str) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(location, buffer.getvalue())


def trial_outcomes(results, job, failures: dict[str, dict]) -> list[TrialOutcome]:
    """Each trial's status, epochs, best metric and, when it failed, why: from its failure marker
    (finetune.failures) or the error Tune kept after its last retry."""
    metric, mode, epochs = job.search.metric, job.search.mode, job.train.epochs
    outcomes = []
    for result in results:
        frame = result.metrics_dataframe
        trial_id = result_trial_id(result)
        best_metric = best_epoch = None
        done = 0
        node_ip = None
        if frame is not None and not frame.empty and metric in frame:
            values = frame[[metric, "epoch"]].dropna()
            if not values.empty:
                index = values[metric].idxmax() if mode == "max" else values[metric].idxmin()
                best_metric, best_epoch = float(values.loc[index, metric]), int(values.loc[index, "epoch"])
                done = int(values["epoch"].max())
            if "node_ip" in frame:
                node_ip = str(frame["node_ip"].iloc[-1])
        failure_kind = None
        if trial_id in failures:
            status, error, failure_kind = "failed", failures[trial_id]["reason"], failures[trial_id].get("kind")
        elif result.error is not None:
            status, error = "failed", error_line(result.error)
        else:
            status = "completed" if done >= epochs else "stopped_early"
            error = None
        outcomes.append(TrialOutcome(trial_id, status, done, (result.config or {}).get("space", {}),
                                     best_metric, best_epoch, error, node_ip, failure_kind))
    return sorted(outcomes, key=lambda o: o.trial_id)


def result_trial_id(result) -> str:
    return str(result.metrics.get("trial_id") or result.path.rstrip("/").rpartition("/")[2])


def algorithm_name(job) -> str:
    """'tpe with asha', 'random with pbt': what proposed the trials and what stopped or exploited them."""
    return f"{job.search.algorithm} with {job.search.scheduler.type}"


def print_final_table(outcomes: list[TrialOutcome], job, out=None) -> None:
    out = out or sys.stdout
    print(f"search: {algorithm_name(job)}", file=out)
    metric = job.search.metric
    paths = list(job.search.space)
    header = ["trial", "status", "epochs", f"best {metric}", *[p.rpartition(".")[2] for p in paths]]
    rows = []
    for o in outcomes:
        value = "-" if o.best_metric is None else f"{o.best_metric:.4f}"
        status = o.status if not o.error else f"failed: {o.error[:60]}"
        rows.append([short_trial_name(o.trial_id), status, str(o.epochs), value,
                     *[_format_value(o.config.get(p)) for p in paths]])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), file=out)
