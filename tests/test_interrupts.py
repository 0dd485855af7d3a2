"""Ctrl-C and SIGTERM sent to a real `finetune run` process: the trials stop and keep their
checkpoints, the run folder holds a consistent partial table and an `interrupted` summary, the
process exits 130 / 143 saying how to resume, and a resume finishes the search with every trial.
Each test runs the CLI in processes of its own (no `ray_session` here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO, write_job

pytestmark = pytest.mark.ray

EPOCHS = 5
TRIALS = 3


def job_file(tmp_path: Path, tiny_job_text: str) -> Path:
    text = tiny_job_text.replace("epochs: 3", f"epochs: {EPOCHS}").replace("num_samples: 2", f"num_samples: {TRIALS}")
    return write_job(tmp_path, text.replace("choice: [3.0e-3, 1.0e-2]", "choice: [3.0e-3]"))


def start(*arguments: str) -> subprocess.Popen:
    """`python -m finetune ...` in a session of its own, as a terminal runs a command: a Ctrl-C
    reaches its whole process group."""
    return subprocess.Popen([sys.executable, "-m", "finetune", *arguments], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def signal_at(process: subprocess.Popen, text: str, *signals: tuple[int, bool]) -> tuple[int, str, str]:
    """Read the process's output until a line holds `text`, then send each (signal, to the whole
    group?) a moment apart; its exit code, output and errors."""
    seen = []
    for line in process.stdout:
        seen.append(line)
        if text in line:
            break
    else:
        pytest.fail(f"the run ended before {text!r}:\n{''.join(seen)[-3000:]}\n{process.stderr.read()[-3000:]}")
    for signum, group in signals:
        (os.killpg if group else os.kill)(process.pid, signum)
        time.sleep(0.3)
    out, err = process.communicate(timeout=120)
    return process.returncode, "".join(seen) + out, err


def run_folder(tmp_path: Path) -> Path:
    (folder,) = (tmp_path / "runs" / "tiny").iterdir()
    return folder


def check_partial(folder: Path, out: str, err: str, signame: str) -> dict:
    """What a stopped run leaves: an interrupted summary, a table whose rows are the epochs that
    were reported, each once, and how to resume."""
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["stopped_by"] == signame, summary
    assert summary["num_planned"] == TRIALS and summary["model_path"] is None
    assert summary["num_interrupted"] >= 1
    rows = pq.read_table(folder / "metrics.parquet").to_pylist()
    keys = [(r["trial_id"], r["epoch"]) for r in rows]
    assert len(keys) == len(set(keys)) >= 1
    for trial in summary["trials"]:
        assert sorted(e for t, e in keys if t == trial["trial_id"]) == list(range(1, trial["epochs"] + 1))
        if trial["status"] == "interrupted":
            assert trial["epochs"] < EPOCHS
    assert f"{signame}: run {folder} stopped" in err and f"Resume it with: finetune resume {folder}" in err
    assert "Traceback" not in err, err[-3000:]
    return summary


def check_finished(folder: Path) -> None:
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "finished" and "stopped_by" not in summary
    assert summary["num_trials"] == TRIALS and summary["num_completed"] == TRIALS, summary["trials"]
    assert summary["model_path"] and os.path.exists(summary["model_path"])
    rows = pq.read_table(folder / "metrics.parquet").to_pylist()
    assert sorted((r["trial_id"], r["epoch"]) for r in rows) == sorted(
        (t["trial_id"], e) for t in summary["trials"] for e in range(1, EPOCHS + 1))


@pytest.mark.slow
def test_ctrl_c_then_sigterm_stop_a_run_that_resumes_to_every_trial(tmp_path, tiny_job_text):
    job = job_file(tmp_path, tiny_job_text)
    code, out, err = signal_at(start("run", str(job)), "epoch 2/", (signal.SIGINT, True))
    assert code == 130, err[-3000:]
    folder = run_folder(tmp_path)
    first = check_partial(folder, out, err, "SIGINT")
    assert "Press Ctrl-C again to stop at once" in err

    # A resumed run stopped by SIGTERM (what Kubernetes sends a pod), to its driver alone.
    code, out, err = signal_at(start("resume", str(folder)), "epoch", (signal.SIGTERM, False))
    assert code == 143, err[-3000:]
    assert f"resuming {folder}" in out
    second = check_partial(folder, out, err, "SIGTERM")
    assert second["num_trials"] >= first["num_trials"]

    finished = subprocess.run([sys.executable, "-m", "finetune", "run", str(job), "--resume"], cwd=REPO,
                              capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    check_finished(folder)


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_the_run_still_resumes(tmp_path, tiny_job_text):
    job = job_file(tmp_path, tiny_job_text)
    code, out, err = signal_at(start("run", str(job)), "epoch 2/", (signal.SIGINT, True), (signal.SIGINT, True))
    assert code == 130, err[-3000:]
    folder = run_folder(tmp_path)
    assert f"SIGINT: run {folder} stopped at once" in err and f"finetune resume {folder}" in err
    assert json.loads((folder / "summary.json").read_text())["status"] == "interrupted"

    finished = subprocess.run([sys.executable, "-m", "finetune", "resume", str(folder)], cwd=REPO,
                              capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    check_finished(folder)


def children(pid: int) -> set[str]:
    """The names of the processes whose parent is `pid`."""
    names = set()
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            if entry.name.isdigit() and int(fields[1]) == pid:
                names.add((entry / "comm").read_text().strip())
        except OSError:
            continue
    return names


def test_ctrl_c_before_the_search_keeps_nothing(tmp_path, tiny_job_text):
    job = job_file(tmp_path, tiny_job_text)
    process = start("run", str(job))
    deadline = time.time() + 120
    while "raylet" not in children(process.pid):  # Ray is up: the data loads, the pre-flight step runs
        assert time.time() < deadline and process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.2)
    time.sleep(1)
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert "SIGINT: stopped before the search started; nothing was kept." in err
    assert not (tmp_path / "runs" / "tiny").exists() or not list((tmp_path / "runs" / "tiny").iterdir())
