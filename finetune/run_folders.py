"""Reading run folders back: a run's state, trials and metrics, finished or not, for
`finetune runs`, `finetune show` and `finetune report`.

A finished (or failed, or interrupted) run has `summary.json` and `metrics.parquet`; a run that is
still going, or whose driver was killed, has neither yet, and its trials are read from Tune's
per-trial `result.json` files (one JSON line per reported epoch) and failure markers instead.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass, field

from finetune import storage
from finetune.errors import UserError
from finetune.failures import read_failure
from finetune.registry import SUMMARY_FILE

DRIVER_FILE = "driver.json"  # the driver's host, pid and start time: whether a run is still going
TUNE_FOLDER = "tune"  # as finetune.tuner.TUNE_FOLDER, without importing Tune's set-up
METRICS_FILE = "metrics.parquet"
EVALUATION_FILE = "evaluation.json"
RECENT_SECONDS = 600  # a run on another host that wrote within this long is taken to be running


@dataclass
class RunRecord:
    run_dir: str
    run_id: str
    name: str
    state: str  # finished | failed | interrupted | running (or what a summary's status says)
    job: dict | None  # job.yaml as written (absolute paths)
    summary: dict | None
    rows: list[dict] = field(default_factory=list)  # one per trial and epoch
    trials: list[dict] = field(default_factory=list)  # trial_id, status, epochs, config, best/last metric, error
    evaluation: dict | None = None
    classes: list | None = None
    started: float | None = None
    wall_seconds: float | None = None

    @property
    def metric(self) -> str:
        return (self.summary or {}).get("metric") or ((self.job or {}).get("search") or {}).get("metric", "val_accuracy")

    @property
    def mode(self) -> str:
        return (self.summary or {}).get("mode") or ((self.job or {}).get("search") or {}).get("mode", "max")

    @property
    def best_value(self) -> float | None:
        values = [t["best_metric"] for t in self.trials if t.get("best_metric") is not None and t["status"] != "failed"]
        if not values:
            return None
        return max(values) if self.mode == "max" else min(values)


def write_driver_marker(run_dir: str) -> None:
    """Written when a run starts: `finetune runs` tells a running run from an interrupted one."""
    storage.write_json(storage.join(run_dir, DRIVER_FILE),
                       {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()})


def read_run(run_dir: str) -> RunRecord:
    import yaml

    run_dir = storage.absolute(run_dir)
    if not storage.exists(storage.join(run_dir, "job.yaml")):
        raise UserError(f"{run_dir} is not a run folder (expected job.yaml in it; runs are "
                        f"<storage_path>/<job name>/<run id>/, listed by `finetune runs`).")
    job = yaml.safe_load(storage.read_bytes(storage.join(run_dir, "job.yaml")))
    summary = _json_or_none(storage.join(run_dir, SUMMARY_FILE))
    rows = _metrics_rows(run_dir)
    record = RunRecord(run_dir=run_dir, run_id=run_dir.rstrip("/").rpartition("/")[2], name=job.get("name", "?"),
                       state="?", job=job, summary=summary, rows=rows,
                       evaluation=_json_or_none(storage.join(run_dir, EVALUATION_FILE)),
                       classes=_json_or_none(storage.join(run_dir, "classes.json")))
    record.trials = _trials(record)
    record.state, record.started, record.wall_seconds = _state(run_dir, summary)
    return record


def _json_or_none(location: str):
    return storage.read_json(location) if storage.exists(location) else None


def _metrics_rows(run_dir: str) -> list[dict]:
    """metrics.parquet when the run wrote it, else every trial's result.json as Tune wrote it so far."""
    parquet = storage.join(run_dir, METRICS_FILE)
    if storage.exists(parquet):
        import io

        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(storage.read_bytes(parquet))).to_pylist()
    rows: dict[tuple, dict] = {}
    tune = storage.join(run_dir, TUNE_FOLDER)
    for trial_id in storage.list_dirs(tune):
        location = storage.join(tune, trial_id, "result.json")
        if not storage.exists(location):
            continue
        for line in storage.read_bytes(location).decode(errors="replace").splitlines():
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a killed driver
            if not isinstance(result, dict) or result.get("epoch") is None:
                continue
            row = {"trial_id": result.get("trial_id", trial_id), "epoch": int(result["epoch"])}
            row.update({k: v for k, v in result.items() if isinstance(v, (int, float)) and k not in row})
            for path, value in ((result.get("config") or {}).get("space") or {}).items():
                row[f"config.{path}"] = value
            rows[(row["trial_id"], row["epoch"])] = row  # a restarted trial's repeated epoch: the later wins
    return [rows[key] for key in sorted(rows)]


def _trials(record: RunRecord) -> list[dict]:
    """Each trial: from the summary when there is one, else from its rows and failure marker."""
    metric, mode = record.metric, record.mode
    by_trial: dict[str, list[dict]] = {}
    for row in record.rows:
        by_trial.setdefault(row["trial_id"], []).append(row)
    if record.summary:
        trials = [dict(t) for t in record.summary.get("trials", [])]
    else:
        epochs = ((record.job or {}).get("train") or {}).get("epochs")
        trials = []
        known = set(by_trial) | set(storage.list_dirs(storage.join(record.run_dir, "trials")))
        for trial_id in sorted(known):
            failure = read_failure(storage.join(record.run_dir, "trials", trial_id))
            done = max((r["epoch"] for r in by_trial.get(trial_id, [])), default=0)
            status = "failed" if failure else "completed" if epochs and done >= epochs else "unfinished"
            trials.append({"trial_id": trial_id, "status": status, "epochs": done, "error": (failure or {}).get("reason"),
                           "config": _config_of(by_trial.get(trial_id, [])), "best_metric": None, "best_epoch": None})
    for trial in trials:
        values = [(r[metric], r["epoch"]) for r in by_trial.get(trial["trial_id"], [])
                  if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
        trial["last_metric"] = values[-1][0] if values else None
        if values and trial.get("best_metric") is None:
            best = (max if mode == "max" else min)(values, key=lambda v: v[0])
            trial["best_metric"], trial["best_epoch"] = best
    return trials


def _config_of(rows: list[dict]) -> dict:
    if not rows:
        return {}
    return {k.removeprefix("config."): v for k, v in rows[0].items() if k.startswith("config.")}


def _state(run_dir: str, summary: dict | None) -> tuple[str, float | None, float | None]:
    """(state, start time, wall seconds so far)."""
    driver = _json_or_none(storage.join(run_dir, DRIVER_FILE)) or {}
    started = driver.get("started")
    if summary:
        return summary.get("status", "finished"), started, summary.get("wall_seconds")
    last = _last_write(run_dir)
    if driver.get("host") == socket.gethostname():
        running = _alive(driver.get("pid"))
    else:
        running = last is not None and time.time() - last < RECENT_SECONDS
    end = time.time() if running else last
    return ("running" if running else "interrupted"), started, (end - started if started and end else None)


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _last_write(run_dir: str) -> float | None:
    """When Tune last wrote a result of this run (local run folders; None elsewhere)."""
    if not storage.is_local(run_dir):
        return None
    tune = os.path.join(run_dir.removeprefix("file://"), TUNE_FOLDER)
    times = [os.path.getmtime(os.path.join(folder, name)) for folder, _, names in os.walk(tune) for name in names]
    return max(times) if times else None


# --- listing and showing ---------------------------------------------------------------------------


def list_runs(storage_path: str = "runs", name: str | None = None) -> list[RunRecord]:
    root = storage.absolute(storage_path)
    if not storage.exists(root):
        raise UserError(f"runs: no folder {root} (--storage-path names where runs go; default runs/ of the "
                        f"working directory).")
    names = [name] if name else storage.list_dirs(root)
    if name and not storage.exists(storage.join(root, name)):
        raise UserError(f"runs: no runs of {name!r} under {root}; jobs with runs there: "
                        f"{', '.join(storage.list_dirs(root)) or 'none'}.")
    records = []
    for job_name in names:
        for run_id in storage.list_dirs(storage.join(root, job_name)):
            run_dir = storage.join(root, job_name, run_id)
            if storage.exists(storage.join(run_dir, "job.yaml")):
                records.append(read_run(run_dir))
    return records


def format_runs(records: list[RunRecord]) -> str:
    if not records:
        return "no runs"
    header = ["job", "run", "state", "trials", "best", "wall", "folder"]
    rows = []
    for r in records:
        best = "-" if r.best_value is None else f"{r.metric} {r.best_value:.4f}"
        rows.append([r.name, r.run_id, r.state, str(len(r.trials)), best, format_seconds(r.wall_seconds), r.run_dir])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows])


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def format_show(record: RunRecord) -> str:
    from finetune.reports import format_config, short_trial_name

    summary = record.summary or {}
    counts = {s: sum(t["status"] == s for t in record.trials) for s in ("completed", "stopped_early", "failed", "unfinished")}
    lines = [f"run {record.run_id} of job {record.name}: {record.state}",
             f"folder: {record.run_dir}",
             f"wall time: {format_seconds(record.wall_seconds)}",
             f"trials: {len(record.trials)} ({counts['completed']} completed, {counts['stopped_early']} stopped early, "
             f"{counts['failed']} failed" + (f", {counts['unfinished']} unfinished" if counts["unfinished"] else "") + ")"]
    best = summary.get("best_trial_id")
    if best:
        lines.append(f"best: trial {short_trial_name(best)} epoch {summary.get('best_epoch')}, {record.metric} "
                     f"{summary['best_metrics'][record.metric]:.4f}; {format_config(summary.get('best_config') or {})}")
    elif record.best_value is not None:
        lines.append(f"best so far: {record.metric} {record.best_value:.4f}")
    if summary.get("test_metrics"):
        lines.append("test: " + ", ".join(f"{k} {v:.4f}" for k, v in summary["test_metrics"].items()))
    if summary.get("model_path"):
        lines.append(f"model: {summary['model_path']}")
    reasons = list(dict.fromkeys(t["error"] for t in record.trials if t["status"] == "failed" and t.get("error")))
    if reasons:
        lines.append("failures:")
        lines += [f"  - {reason}" for reason in reasons]
    fingerprint = summary.get("data_fingerprint")
    if fingerprint:
        lines.append(f"data: {json.dumps(fingerprint)[:300]}")
    if summary.get("versions"):
        lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()))
    report = storage.join(record.run_dir, "report.html")
    lines.append(f"report: {report}" if storage.exists(report) else f"report: none yet (finetune report {record.run_dir})")
    return "\n".join(lines)
