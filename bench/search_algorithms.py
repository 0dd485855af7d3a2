"""Search algorithms and full-batch optimizers, side by side in one run.

    python bench/search_algorithms.py [--trials 12] [--epochs 12] [--seeds 0 1 2] [--skip-search] [--skip-optimizers]

1. Search: the reference digits search (bench/digits-search.yaml: learning rate, head units,
   dropout, optimizer; ASHA) at an equal trial budget, per seed in turn: `finetune run` with
   search.algorithm random, then tpe, each a fresh command as a user runs it, then KerasTuner's
   BayesianOptimization over the same space through our data and model code (bench/baselines.py),
   training every trial for all its epochs (KerasTuner has no early stopping here). Best
   validation accuracy, epochs trained and wall seconds of each.
2. Optimizers: Adam against L-BFGS and CG (train.optimizer lbfgs | cg, 20 iterations an epoch)
   on the tabular data sets with builtin:mlp, one worker, in this process: training and
   validation loss after the same epochs, and one continuous scipy L-BFGS-B call of as many
   iterations on the same function (what the per-epoch restarts cost).
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

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
JOB_FILE = BENCH / "digits-search.yaml"
TABULAR = ("breast_cancer", "wine", "iris")


# --- 1. search algorithms --------------------------------------------------------------------------


def finetune_search(algorithm: str, seed: int, trials: int, epochs: int, storage: str) -> dict:
    """One `finetune run` of the reference search, as a user runs it; its summary's figures."""
    command = [sys.executable, "-m", "finetune", "run", str(JOB_FILE), "--set", f"search.algorithm={algorithm}",
               "--set", f"seed={seed}", "--set", f"search.num_samples={trials}", "--set", f"train.epochs={epochs}",
               "--set", f"storage_path={storage}", "--set", f"name=bench-{algorithm}-{seed}"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{algorithm} seed {seed} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    summary_line = next(line for line in done.stdout.splitlines() if line.startswith("summary: "))
    summary = json.loads(Path(summary_line.partition(" ")[2]).read_text())
    return {"best_val_accuracy": summary["best_metrics"]["val_accuracy"], "seconds": seconds,
            "epochs": sum(t["epochs"] for t in summary["trials"]), "trials": summary["num_trials"],
            "stopped_early": summary["num_stopped_early"]}


def keras_tuner_bayesian(seed: int, trials: int, epochs: int) -> dict:
    """KerasTuner's BayesianOptimization over the same space, in a fresh process."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(Path(__file__)), "--keras-tuner-only", str(seed), "--trials",
                           str(trials), "--epochs", str(epochs)], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"KerasTuner seed {seed} failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {**figures, "seconds": time.perf_counter() - started}


def _keras_tuner_in_this_process(seed: int, trials: int, epochs: int) -> dict:
    sys.path.insert(0, str(BENCH))
    from baselines import BATCH_SIZE, _hypermodel, _load_workload

    job, data = _load_workload(JOB_FILE)
    import keras
    import keras_tuner

    keras.utils.set_random_seed(seed)
    with tempfile.TemporaryDirectory(prefix="bench-bayesian-") as scratch:
        tuner = keras_tuner.BayesianOptimization(_hypermodel(job.model_dump(mode="json"), data),
                                                 objective="val_accuracy", max_trials=trials, seed=seed,
                                                 directory=scratch, project_name="bayesian", overwrite=True)
        tuner.search(data.train.features, data.train.labels, batch_size=BATCH_SIZE, epochs=epochs,
                     validation_data=(data.validation.features, data.validation.labels), verbose=0)
        best = tuner.oracle.get_best_trials(1)[0]
        return {"best_val_accuracy": float(best.score), "epochs": trials * epochs,
                "trials": len(tuner.oracle.trials), "stopped_early": 0}


def compare_search(trials: int, epochs: int, seeds: list[int]) -> None:
    runs: dict[str, list[dict]] = {"random": [], "tpe": [], "KerasTuner BayesianOptimization": []}
    with tempfile.TemporaryDirectory(prefix="bench-search-") as storage:
        for seed in seeds:  # in turn, per seed: the three see the same machine state
            for name in runs:
                if name == "KerasTuner BayesianOptimization":
                    figures = keras_tuner_bayesian(seed, trials, epochs)
                else:
                    figures = finetune_search(name, seed, trials, epochs, storage)
                runs[name].append(figures)
                print(f"  seed {seed} {name}: best val_accuracy {figures['best_val_accuracy']:.4f}, "
                      f"{figures['epochs']} epochs, {figures['seconds']:.0f} s", flush=True)
    print()
    print(f"Search: bench/digits-search.yaml, {trials} trials of at most {epochs} epochs, seeds {seeds}")
    print()
    print("| algorithm | best val_accuracy per seed | mean | epochs trained (mean) | wall s (mean) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, figures in runs.items():
        bests = [f["best_val_accuracy"] for f in figures]
        print(f"| {name} | {', '.join(f'{b:.4f}' for b in bests)} | {statistics.mean(bests):.4f} | "
              f"{statistics.mean(f['epochs'] for f in figures):.0f} | {statistics.mean(f['seconds'] for f in figures):.0f} |")
    tpe_wins = sum(t["best_val_accuracy"] >= r["best_val_accuracy"] for t, r in zip(runs["tpe"], runs["random"]))
    print(f"\nTPE's best at least random's in {tpe_wins} of {len(seeds)} seeds.", flush=True)


# --- 2. full-batch optimizers ----------------------------------------------------------------------


def compare_optimizers(epochs: int) -> None:
    sys.path.insert(0, str(BENCH))
    from quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    from scipy.optimize import minimize

    from finetune.data import load_data
    from finetune.job import validate_job_dict
    from finetune.train_loop import EpochTrainer

    print(f"\nOptimizers: builtin:mlp (one hidden layer of 64), {epochs} epochs, one worker, seed 0")
    print()
    print("| data set | optimizer | training loss | validation loss | validation accuracy | seconds |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name in TABULAR:
        data = None
        for optimizer in ("adam", "lbfgs", "cg"):
            job = validate_job_dict({"name": "bench", "seed": 0, "dataset": {"source": f"sklearn:{name}"},
                                     "model": {"base": "builtin:mlp"},
                                     "train": {"epochs": epochs, "optimizer": optimizer}})
            data = data or load_data(job.dataset, seed=0)
            trainer = EpochTrainer(job, data, seed=0, rank=0, world_size=1)
            started = time.perf_counter()
            for epoch in range(1, epochs + 1):
                metrics = trainer.train_epoch(epoch)
            seconds = time.perf_counter() - started
            print(f"| {name} | {optimizer} | {metrics['loss']:.6f} | {metrics['val_loss']:.4f} | "
                  f"{metrics['val_accuracy']:.4f} | {seconds:.1f} |", flush=True)
        # The same function and start, one continuous L-BFGS-B call of epochs x 20 iterations.
        job = validate_job_dict({"name": "bench", "seed": 0, "dataset": {"source": f"sklearn:{name}"},
                                 "model": {"base": "builtin:mlp"}, "train": {"epochs": epochs, "optimizer": "lbfgs"}})
        minimizer = EpochTrainer(job, data, seed=0, rank=0, world_size=1)._minimizer
        started = time.perf_counter()
        result = minimize(lambda w: minimizer.evaluate(w)[:2], minimizer.weights(), jac=True, method="L-BFGS-B",
                          options={"maxiter": epochs * 20})
        print(f"| {name} | scipy L-BFGS-B, one call of {epochs * 20} iterations (reference) | {result.fun:.6f} | | | "
              f"{time.perf_counter() - started:.1f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=12, help="search epochs per trial (default 12)")
    parser.add_argument("--optimizer-epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--skip-optimizers", action="store_true")
    parser.add_argument("--keras-tuner-only", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.keras_tuner_only is not None:
        print(json.dumps(_keras_tuner_in_this_process(args.keras_tuner_only, args.trials, args.epochs)))
        return 0
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}; shared with other work: figures are noisy", flush=True)
    if not args.skip_search:
        compare_search(args.trials, args.epochs, args.seeds)
    if not args.skip_optimizers:
        compare_optimizers(args.optimizer_epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
