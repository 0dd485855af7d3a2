"""The five figures of docs/benchmarks.md, measured side by side in one run.

    python bench/compare.py [--pairs 3] [--search-pairs 2] [--skip-scaling]

Every measurement runs as its own command, the way a user runs it (a fresh process, Ray started by
`finetune run` itself), and the compared commands alternate: A, B, A, B... Medians and their ratio
are printed as a Markdown table, with the machine they ran on.

1. epoch: steady-state epoch inside a one-worker trial (`finetune run`, one trial, 2 CPUs) against
   plain Keras 3 `model.fit` in one process (bench/baselines.py), same model, data and batch.
2. trial start: from a trial's start to its first training step, in the warm part of the search.
3. search: the reference search (bench/digits-search.yaml) against KerasTuner Hyperband
   (max_epochs 18, factor 3) over the same space, data and seed: wall time of the whole command
   and best validation accuracy.
4. memory: peak proportional set size (PSS) of every process of the search command (driver, Ray's
   processes, trials) together, sampled every 0.25 s; and whether Ray's memory monitor killed any.
5. data parallelism: training samples per second of a compute-bound CNN (32x32x3 digit images,
   a few million parameters) with 1 and 2 Ray Train workers, each worker's TensorFlow thread pools
   sized to its CPUs.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from process_tree import PeakPss

REPO = Path(__file__).resolve().parent.parent
SEARCH_JOB = REPO / "bench" / "digits-search.yaml"
PYTHON = sys.executable
FINETUNE = [PYTHON, "-m", "finetune", "run"]


def run(command: list[str], sample_memory: bool = False) -> tuple[float, str, float]:
    """(wall seconds, stdout, peak PSS bytes of the command and all its descendants)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
    memory = PeakPss(process.pid) if sample_memory else None
    stdout, _ = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{stdout[-3000:]}")
    return wall, stdout, memory.peak if memory else 0.0


def summary_of(stdout: str) -> dict:
    line = next(line for line in reversed(stdout.splitlines()) if line.startswith("summary: "))
    return json.loads(Path(line.removeprefix("summary: ")).read_text())


def tune_results(summary: dict) -> list[dict]:
    rows = []
    for path in glob.glob(os.path.join(summary["run_dir"], "tune", "*", "result.json")):
        rows.extend(json.loads(line) for line in Path(path).read_text().splitlines())
    return rows


# --- 1 and 2 -------------------------------------------------------------------------------------


def epoch_pair(storage: str, epochs: int) -> tuple[dict, dict]:
    _, out, _ = run([PYTHON, "bench/baselines.py", "--skip-tuner", "--side-by-side", "--epochs", str(epochs), "--json"])
    figures = json.loads(out.strip().splitlines()[-1])
    plain, side = figures["plain"], figures["side_by_side"]
    _, out, _ = run([*FINETUNE, str(SEARCH_JOB), "--set", f"storage_path={storage}", "--set", "search.num_samples=1",
                     "--set", "search.space={}", "--set", "search.scheduler=none", "--set", f"train.epochs={epochs}",
                     "--set", "resources.cpus_per_worker=2"])
    results = sorted(tune_results(summary_of(out)), key=lambda r: r["epoch"])[1:]  # steady state: after epoch 1
    trial = {
        "cadence": statistics.median(r["time_this_iter_s"] for r in results),  # report to report
        "epoch": statistics.median(r["epoch_seconds"] for r in results),  # train + validation
        "train": statistics.median(r["train_seconds"] for r in results),
    }
    return {"epoch": statistics.median(plain["epoch_seconds"][1:]),
            "train": statistics.median(plain["train_seconds"][1:]),
            "side_fit": statistics.median(side["fit_train_seconds"][1:]),
            "side_loop": statistics.median(side["loop_train_seconds"][1:])}, trial


# --- 3 and 4 -------------------------------------------------------------------------------------


def search_pair(storage: str) -> tuple[dict, dict]:
    wall, out, _ = run([PYTHON, "bench/baselines.py", "--skip-plain", "--json"])
    tuner = json.loads(out.strip().splitlines()[-1])["tuner"]
    tuner["command_seconds"] = wall
    wall, out, peak = run([*FINETUNE, str(SEARCH_JOB), "--set", f"storage_path={storage}"], sample_memory=True)
    summary = summary_of(out)
    # A trial reports its start-up once, with the process it trained in. The first trial of each
    # process is cold (process start, TensorFlow import); the others ran in a reused process.
    firsts = sorted((r["trial_id"], r["worker_pid"], r["startup_seconds"]) for r in tune_results(summary)
                    if r.get("startup_seconds") is not None)
    seen: set = set()
    cold, warm = [], []
    for _, pid, seconds in firsts:
        (warm if pid in seen else cold).append(seconds)
        seen.add(pid)
    errors = " ".join(t.get("error") or "" for t in summary["trials"])
    ours = {"command_seconds": wall, "best_val_accuracy": summary["best_metrics"]["val_accuracy"],
            "epochs": len(tune_results(summary)), "trials": summary["num_trials"], "failed": summary["num_failed"],
            "peak_pss": peak, "oom_killed": "OutOfMemory" in errors or "memory monitor" in errors,
            "cold_starts": cold, "warm_starts": warm}
    return tuner, ours


# --- 5 -------------------------------------------------------------------------------------------


def scaling(storage: str, workers: int, epochs: int = 4) -> tuple[float, int]:
    """(training samples per second of all workers together, median over the epochs after the
    first; the model's parameter count)."""
    cpus = 2 / workers
    _, out, _ = run([*FINETUNE, str(REPO / "bench" / "cnn-scaling.yaml"), "--set", f"storage_path={storage}",
                     "--set", f"resources.num_workers={workers}", "--set", f"resources.cpus_per_worker={cpus:g}",
                     "--set", f"train.epochs={epochs}"])
    results = sorted(tune_results(summary_of(out)), key=lambda r: r["epoch"])
    return statistics.median(r["samples_per_second"] for r in results[1:]), results[-1]["trainable_params"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="A/B pairs for the epoch figure")
    parser.add_argument("--search-pairs", type=int, default=2, help="A/B pairs for the whole search")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per epoch-figure run")
    parser.add_argument("--skip-scaling", action="store_true")
    args = parser.parse_args()
    storage = tempfile.mkdtemp(prefix="finetune-bench-")

    plain_runs, trial_runs = [], []
    for i in range(args.pairs):
        plain, trial = epoch_pair(storage, args.epochs)
        plain_runs.append(plain)
        trial_runs.append(trial)
        print(f"epoch pair {i + 1}: plain {plain}  trial {trial}", flush=True)
    tuner_runs, our_runs = [], []
    for i in range(args.search_pairs):
        tuner, ours = search_pair(storage)
        tuner_runs.append(tuner)
        our_runs.append(ours)
        print(f"search pair {i + 1}: KerasTuner {tuner['command_seconds']:.1f}s best {tuner['best_val_accuracy']:.4f}; "
              f"finetune {ours['command_seconds']:.1f}s best {ours['best_val_accuracy']:.4f} "
              f"peak {ours['peak_pss'] / 2**30:.2f} GiB", flush=True)
    rates, parameters = {}, 0
    if not args.skip_scaling:
        for workers in (1, 2, 1, 2):
            rate, parameters = scaling(storage, workers)
            rates.setdefault(workers, []).append(rate)
            print(f"scaling: {workers} worker(s): {rates[workers][-1]:,.0f} samples/s", flush=True)

    def median(runs, key):
        return statistics.median(r[key] for r in runs)

    plain_epoch, plain_train = median(plain_runs, "epoch"), median(plain_runs, "train")
    cadence, trial_epoch, trial_train = median(trial_runs, "cadence"), median(trial_runs, "epoch"), median(trial_runs, "train")
    warm_starts = [s for run_ in our_runs for s in run_["warm_starts"]]
    cold_starts = [s for run_ in our_runs for s in run_["cold_starts"]]
    tuner_wall, our_wall = median(tuner_runs, "command_seconds"), median(our_runs, "command_seconds")
    tuner_best, our_best = median(tuner_runs, "best_val_accuracy"), median(our_runs, "best_val_accuracy")
    peak = max(r["peak_pss"] for r in our_runs)

    memory = psutil.virtual_memory().total / 2**30
    print()
    print(f"Machine: {platform.machine()}, {psutil.cpu_count()} cores, {memory:.0f} GiB, Python "
          f"{platform.python_version()}; {args.pairs} epoch pairs, {args.search_pairs} search pairs, "
          f"{time.strftime('%Y-%m-%d')}")
    print()
    print("| # | figure | finetune | baseline | ratio | target | met |")
    print("| --- | --- | ---: | ---: | ---: | --- | --- |")
    ratio = cadence / plain_epoch
    print(f"| 1 | epoch, report to report (train, validation, checkpoint, report) vs `fit` epoch with validation "
          f"| {cadence:.3f} s | {plain_epoch:.3f} s | {ratio:.2f} | <= 1.10 | {'yes' if ratio <= 1.10 else 'no'} |")
    print(f"| 1a | epoch, training only vs `fit` training only | {trial_train:.3f} s | {plain_train:.3f} s "
          f"| {trial_train / plain_train:.2f} | (detail) | |")
    print(f"| 1b | epoch, training and validation vs `fit` epoch with validation | {trial_epoch:.3f} s | "
          f"{plain_epoch:.3f} s | {trial_epoch / plain_epoch:.2f} | (detail) | |")
    side_fit, side_loop = median(plain_runs, "side_fit"), median(plain_runs, "side_loop")
    print(f"| 1c | training only, our loop vs `fit` on the same model, in turn in one process (no Ray) | "
          f"{side_loop:.3f} s | {side_fit:.3f} s | {side_loop / side_fit:.2f} | (detail) | |")
    worst = max(warm_starts)
    print(f"| 2 | trial start to first step, warm trials (median / max of {len(warm_starts)}) | "
          f"{statistics.median(warm_starts):.2f} / {worst:.2f} s | | | <= 3 s | {'yes' if worst <= 3 else 'no'} |")
    print(f"| 2 | trial start to first step, first trial of each process (cold; median / max of {len(cold_starts)}) | "
          f"{statistics.median(cold_starts):.2f} / {max(cold_starts):.2f} s | | | (detail) | |")
    wall_ratio = our_wall / tuner_wall
    print(f"| 3 | whole search, wall time of the command | {our_wall:.1f} s | {tuner_wall:.1f} s (KerasTuner) | "
          f"{wall_ratio:.2f} | <= 0.70 | {'yes' if wall_ratio <= 0.70 else 'no'} |")
    gap = our_best - tuner_best
    print(f"| 3 | best validation accuracy | {our_best:.4f} | {tuner_best:.4f} | {gap:+.4f} | >= -0.005 | "
          f"{'yes' if gap >= -0.005 else 'no'} |")
    print(f"| 3 | epochs trained, trials | {median(our_runs, 'epochs'):.0f}, {our_runs[0]['trials']} | "
          f"{median(tuner_runs, 'epochs'):.0f}, {tuner_runs[0]['trials']} | | | |")
    killed = any(r["oom_killed"] for r in our_runs)
    print(f"| 4 | peak memory of the search, all processes (PSS) | {peak / 2**30:.2f} GiB | | | <= 4 GiB, none "
          f"killed | {'yes' if peak <= 4 * 2**30 and not killed else 'no'} |")
    if rates:
        one, two = statistics.median(rates[1]), statistics.median(rates[2])
        print(f"| 5 | samples/s, 2 workers x 1 CPU vs 1 worker x 2 CPUs (CNN, {parameters / 1e6:.1f} M parameters) "
              f"| {two:,.0f} | "
              f"{one:,.0f} | {two / one:.2f} | report | |")


if __name__ == "__main__":
    main()
