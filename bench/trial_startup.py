"""Where a Ray Train trial's start-up goes, and this code against an older checkout, side by side.

    python bench/trial_startup.py [--trials 6] [--pairs 1] [--baseline DIR]

Runs the README's default job (jobs/digits.yaml: 2 Ray Train workers per trial) as a user would,
`python -m finetune run`, with `--trials` trials of `--epochs` epochs and no early stopping, so
every trial pays a whole start-up. Each trial's first epoch reports `startup_seconds` (trial start
to its first finished step) and, from this code on, `startup.<phase>`: the wall-clock marks that
finetune/startup.py lists, written by the processes themselves. The script prints the median of
each mark over the trials, the step between marks, and what it names.

With `--baseline DIR` (a git worktree of an older commit: `git worktree add /tmp/old 172686f`)
the same job runs on that code too, alternating old, new, old, new..., and the table compares the
wall time of the whole command, the median `startup_seconds`, the best validation accuracy and
the peak memory (PSS summed over the command and every process it started: driver, Ray, trials,
Train workers). `--as-is` runs jobs/digits.yaml unchanged (12 trials, ASHA, 9 epochs): the
README's first command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from process_tree import PeakPss

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from finetune.startup import PHASES  # noqa: E402

# What happens between the mark before and this one.
STEPS = {
    "trial_process": "Tune starts the trial's process (negative: it was started before the trial)",
    "fit": "the trial builds the Ray Train trainer and calls fit()",
    "controller_process": "Ray starts the Train controller's actor process",
    "worker_process": "placement group, then rank 0's worker actor process starts",
    "loop": "the worker imports Ray Train and this package; the backend sets TF_CONFIG",
    "tensorflow": "TensorFlow and Keras are imported and configured",
    "data": "the run's data comes from the object store",
    "strategy": "MultiWorkerMirroredStrategy sets up its collectives",
    "model": "model and optimizer are built, the step functions defined",
    "pipeline": "the input pipelines are built and distributed",
    "first_step": "the first step: tracing the epoch function, the first all-reduce",
}


def run_job(tree: Path, storage: str, trials: int, epochs: int, as_is: bool) -> tuple[float, float, dict]:
    """(wall seconds, peak PSS bytes, summary) of one `finetune run` of jobs/digits.yaml on the
    code in `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "finetune", "run", str(tree / "jobs" / "digits.yaml"),
               "--set", f"storage_path={storage}"]
    if not as_is:
        command += ["--set", f"search.num_samples={trials}", "--set", "search.scheduler=none",
                    "--set", f"train.epochs={epochs}"]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=storage, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    memory = PeakPss(process.pid)
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{stdout[-3000:]}\n{stderr[-3000:]}")
    line = next(line for line in reversed(stdout.splitlines()) if line.startswith("summary: "))
    return wall, memory.peak, json.loads(Path(line.removeprefix("summary: ")).read_text())


def first_epochs(run_dir: Path) -> list[dict]:
    """Each trial's first reported epoch, with its start-up columns."""
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    firsts: dict[str, dict] = {}
    for row in sorted(rows, key=lambda r: r["epoch"]):
        firsts.setdefault(row["trial_id"], row)
    return list(firsts.values())


def phase_table(rows: list[dict]) -> list[str]:
    """The median of each mark, and of the step from the mark of the work before it (process
    starts are points in time and may come before the trial, for a process Ray started early)."""
    lines = ["| phase | median mark (s after trial start) | median step (s) | what the step is |",
             "|---|---:|---:|---|"]
    previous = None  # the trial's start
    for phase in PHASES:
        marks = [r[f"startup.{phase}"] for r in rows if r.get(f"startup.{phase}") is not None]
        if not marks:
            continue
        if phase == "trial_process":
            step = ""
        else:
            steps = [r[f"startup.{phase}"] - (r[f"startup.{previous}"] if previous else 0.0) for r in rows
                     if r.get(f"startup.{phase}") is not None and (not previous or r.get(f"startup.{previous}") is not None)]
            step = f"{statistics.median(steps):.2f}"
            previous = phase
        lines.append(f"| {phase} | {statistics.median(marks):.2f} | {step} | {STEPS[phase]} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=1, help="runs of each code (alternating)")
    parser.add_argument("--baseline", type=Path, help="a checkout of older code to compare with")
    parser.add_argument("--as-is", action="store_true", help="jobs/digits.yaml unchanged: 12 trials, ASHA")
    args = parser.parse_args()
    trees = {"this code": REPO}
    if args.baseline:
        trees = {"baseline": args.baseline.resolve(), **trees}
    walls: dict[str, list[float]] = {name: [] for name in trees}
    startups: dict[str, list[float]] = {name: [] for name in trees}
    peaks: dict[str, list[float]] = {name: [] for name in trees}
    accuracies: dict[str, list[float]] = {name: [] for name in trees}
    phases: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as storage:
        for _ in range(args.pairs):
            for name, tree in trees.items():
                wall, peak, summary = run_job(tree, storage, args.trials, args.epochs, args.as_is)
                rows = first_epochs(Path(summary["run_dir"]))
                walls[name].append(wall)
                peaks[name].append(peak)
                accuracies[name].append(summary["best_metrics"]["val_accuracy"])
                startups[name].extend(r["startup_seconds"] for r in rows)
                if tree == REPO:
                    phases.extend(rows)
    cores = os.cpu_count()
    what = "jobs/digits.yaml as it is (12 trials, ASHA, up to 9 epochs)" if args.as_is else \
        f"{args.trials} trials x {args.epochs} epochs of jobs/digits.yaml, no early stopping"
    print(f"Machine: {platform.machine()}, {cores} cores, Python {platform.python_version()}; {what} "
          f"(2 Ray Train workers a trial), {args.pairs} run(s) of each code\n")
    print("| code | whole command (s, median) | trial start to first step (s, median, min-max) "
          "| best val_accuracy (median) | peak PSS, all processes (GiB, max) |")
    print("|---|---:|---:|---:|---:|")
    for name in trees:
        values = startups[name]
        print(f"| {name} | {statistics.median(walls[name]):.1f} | {statistics.median(values):.1f} "
              f"({min(values):.1f}-{max(values):.1f}) | {statistics.median(accuracies[name]):.4f} "
              f"| {max(peaks[name]) / 2**30:.2f} |")
    if args.baseline:
        ratio = statistics.median(walls["this code"]) / statistics.median(walls["baseline"])
        print(f"\nthis code / baseline, whole command: {ratio:.2f}x")
    print()
    print("\n".join(phase_table(phases)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
