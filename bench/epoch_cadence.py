"""An epoch inside a trial, report to report, this code against an older checkout, side by side.

    python bench/epoch_cadence.py --baseline DIR [--baseline DIR2] [--pairs 3] [--epochs 10]

Runs bench/digits-search.yaml as one in-trial trial with both CPUs and no search (figure 1 of
bench/compare.py) on each code in turn, the baselines then this code, `--pairs` times, and prints the
median over epochs 2.. of each run of Tune's `time_this_iter_s` (report to report: training,
validation, checkpoint, report) and of the loop's own `epoch_seconds` (training and validation),
then the medians of each code. The difference between the two columns is what a trial's epoch
costs beyond its training and validation.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from compare import summary_of, tune_results
from process_tree import CpuByProcess

REPO = Path(__file__).resolve().parent.parent


def one_run(tree: Path, storage: str, epochs: int, cpu: bool = False) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "finetune", "run", str(REPO / "bench" / "digits-search.yaml"),
               "--set", f"storage_path={storage}", "--set", "search.num_samples=1", "--set", "search.space={}",
               "--set", "search.scheduler=none", "--set", f"train.epochs={epochs}",
               "--set", "resources.cpus_per_worker=2"]
    process = subprocess.Popen(command, cwd=storage, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    sampler = CpuByProcess(process.pid) if cpu else None
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{stderr[-3000:]}")
    if sampler:
        print("  CPU seconds by process: " + ", ".join(f"{k} {v:.1f}" for k, v in list(sampler.by_kind().items())[:8]))
    rows = tune_results(summary_of(stdout))
    steady = sorted(rows, key=lambda r: r["epoch"])[1:]  # after epoch 1, which traces the functions
    return (statistics.median(r["time_this_iter_s"] for r in steady),
            statistics.median(r["epoch_seconds"] for r in steady))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, action="append", required=True,
                        help="a checkout of older code (repeatable)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--cpu", action="store_true", help="also print the CPU seconds of each process kind")
    args = parser.parse_args()
    trees = {f"baseline {path.name}": path.resolve() for path in args.baseline}
    trees["this code"] = REPO
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="bench-cadence-") as storage:
        for pair in range(args.pairs):
            for name, tree in trees.items():
                figures[name].append(one_run(tree, storage, args.epochs, args.cpu))
                cadence, epoch = figures[name][-1]
                print(f"pair {pair + 1}, {name}: report to report {cadence:.3f} s, training and validation "
                      f"{epoch:.3f} s", flush=True)
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{args.pairs} pairs, {args.epochs} epochs a run\n")
    print("| code | report to report (s, median) | training and validation (s, median) | the rest (s) |")
    print("|---|---:|---:|---:|")
    for name, runs in figures.items():
        cadence = statistics.median(c for c, _ in runs)
        epoch = statistics.median(e for _, e in runs)
        print(f"| {name} | {cadence:.3f} | {epoch:.3f} | {cadence - epoch:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
