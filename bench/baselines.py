"""The comparison baselines of the digits benchmark: the same data, splits and model without Ray.

    python bench/baselines.py [--epochs 8] [--seed 0] [--max-epochs 18] [--factor 3] [--skip-tuner]

Both baselines run the reference workload of bench/digits-search.yaml through our own code
(`load_job`, `load_data`, `trial_job`, `create_model`, `create_optimizer`), so only the training
machinery differs from a `finetune run`:

1. plain Keras: one model with the job's default hyperparameters, trained with `model.fit`
   (batch 64, validation data), timing every epoch with and without its validation pass. The
   train-only time is what our loop reports as `train_seconds`; the whole epoch as `epoch_seconds`.
2. KerasTuner: `keras_tuner.Hyperband` (objective val_accuracy, max_epochs 18, factor 3) over the
   job's search space, in one process: the tuning a user would otherwise write by hand.

Nothing here imports or starts Ray. TensorFlow is imported quietly and only when a baseline runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

JOB_FILE = Path(__file__).resolve().parent / "digits-search.yaml"
BATCH_SIZE = 64
PROJECT_NAME = "bench-digits"

# The search space of digits-search.yaml, for KerasTuner's hp.Float / hp.Choice (hp.Choice takes
# scalars, so units are sampled as one int and become the one-layer list [units]).
LEARNING_RATE_RANGE = (1e-4, 1e-1)       # train.learning_rate: {loguniform: [1.0e-4, 1.0e-1]}
HEAD_UNITS = (32, 64, 128)               # model.head.units: {choice: [[32], [64], [128]]}
DROPOUT_RANGE = (0.0, 0.5)               # model.head.dropout: {uniform: [0.0, 0.5]}
OPTIMIZERS = ("adam", "sgd", "rmsprop")  # train.optimizer: {choice: [adam, sgd, rmsprop]}


def _load_workload(job_file: str | os.PathLike = JOB_FILE) -> tuple[Any, Any]:
    """The job and its loaded splits, exactly as the runner loads them (TensorFlow imported
    quietly first, since finetune.models imports Keras)."""
    from quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    from finetune.data import load_data
    from finetune.job import load_job

    job = load_job(str(job_file))
    return job, load_data(job.dataset, job.seed)


def _compiled_model(job_dict: dict, sampled: dict[str, Any], data: Any):
    """One trial's model, built and compiled through our code: `sampled` maps dotted job paths to
    values, as a Tune trial's configuration does."""
    from finetune.models import create_model
    from finetune.optimization import create_optimizer
    from finetune.trial import trial_job

    trial = trial_job(job_dict, sampled)
    model = create_model(trial, data)
    model.compile(optimizer=create_optimizer(trial.train), loss=trial.train.loss, metrics=["accuracy"])
    return model


# --- plain Keras ---------------------------------------------------------------------------------


def _epoch_timer():
    """A Keras callback recording, for each epoch, the wall seconds of the whole epoch (training
    and validation) and of its training part alone (epoch start to validation start). It defines
    no batch hooks, so Keras keeps its asynchronous batch-callback dispatch as in a plain fit."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epoch_seconds: list[float] = []
            self.train_seconds: list[float] = []
            self._started = 0.0
            self._train_ended: float | None = None

        def on_epoch_begin(self, epoch, logs=None):
            self._train_ended = None
            self._started = time.perf_counter()

        def on_test_begin(self, logs=None):  # fit's validation pass calls evaluate with our callbacks
            if self._train_ended is None:
                self._train_ended = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            ended = time.perf_counter()
            self.epoch_seconds.append(ended - self._started)
            self.train_seconds.append((self._train_ended or ended) - self._started)

    return EpochTimer()


def plain_keras_epochs(epochs: int = 8, seed: int = 0) -> dict[str, list[float]]:
    """Train one model with the job's default hyperparameters (`trial_job(job, {})`) for `epochs`
    epochs in one `model.fit` call, batch 64, with the validation split as validation_data.

    Returns {"epoch_seconds": [...], "train_seconds": [...]}, one float per epoch: the epoch's wall
    seconds including its validation pass, and its training steps alone. The first epoch includes
    tracing the step functions; take the median of the epochs after it for the steady state."""
    job, data = _load_workload()
    import keras

    keras.utils.set_random_seed(seed)
    model = _compiled_model(job.model_dump(mode="json"), {}, data)
    timer = _epoch_timer()
    model.fit(data.train.features, data.train.labels, batch_size=BATCH_SIZE, epochs=epochs,
              validation_data=(data.validation.features, data.validation.labels),
              callbacks=[timer], verbose=0)
    return {"epoch_seconds": list(timer.epoch_seconds), "train_seconds": list(timer.train_seconds)}


def side_by_side_epochs(epochs: int = 8, seed: int = 0) -> dict[str, list[float]]:
    """Our per-worker loop (train_loop.EpochTrainer, one worker) and `model.fit` on a model built
    the same way, in this one process, epoch by epoch in turn: one `fit` call whose epoch-end
    callback trains one epoch of our loop. Both see the same machine state, which separate
    commands on a shared machine do not give.

    Returns {"fit_train_seconds": [...], "loop_train_seconds": [...]}: each epoch's training
    part, fit's from epoch begin to epoch end (no validation data), ours as it reports it."""
    job, data = _load_workload()
    import time

    import keras

    from finetune.train_loop import EpochTrainer

    keras.utils.set_random_seed(seed)
    model = _compiled_model(job.model_dump(mode="json"), {}, data)
    trainer = EpochTrainer(job, data, seed=seed, rank=0, world_size=1)
    fit_seconds, loop_seconds = [], []

    class InTurn(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            fit_seconds.append(time.perf_counter() - self.started)
            loop_seconds.append(trainer.train_epoch(epoch + 1)["train_seconds"])

    model.fit(data.train.features, data.train.labels, batch_size=BATCH_SIZE, epochs=epochs,
              callbacks=[InTurn()], verbose=0)
    return {"fit_train_seconds": fit_seconds, "loop_train_seconds": loop_seconds}


def plain_keras_epoch_seconds(epochs: int = 8, seed: int = 0) -> list[float]:
    """Each epoch's wall seconds, validation included (`plain_keras_epochs(...)["epoch_seconds"]`)."""
    return plain_keras_epochs(epochs, seed)["epoch_seconds"]


def steady_median(seconds: list[float]) -> float:
    """The median of the epochs after the first (which includes tracing)."""
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


# --- KerasTuner ----------------------------------------------------------------------------------


def _hypermodel(job_dict: dict, data: Any):
    """A keras_tuner.HyperModel sampling the job's search space and building through our code.
    It counts the epochs each fit actually runs (`epochs_fit`), a check on the count taken from
    the trials' Hyperband bookkeeping."""
    import keras_tuner

    class DigitsHyperModel(keras_tuner.HyperModel):
        def __init__(self) -> None:
            super().__init__(name="digits_small_cnn")
            self.epochs_fit = 0

        def build(self, hp):
            sampled = {
                "train.learning_rate": hp.Float("learning_rate", *LEARNING_RATE_RANGE, sampling="log"),
                "model.head.units": [hp.Choice("units", list(HEAD_UNITS))],
                "model.head.dropout": hp.Float("dropout", *DROPOUT_RANGE),
                "train.optimizer": hp.Choice("optimizer", list(OPTIMIZERS)),
            }
            return _compiled_model(job_dict, sampled, data)

        def fit(self, hp, model, *args, **kwargs):
            history = model.fit(*args, **kwargs)
            self.epochs_fit += len(history.epoch)  # Hyperband passes initial_epoch: only new epochs
            return history

    return DigitsHyperModel()


def _as_job_paths(values: dict[str, Any]) -> dict[str, Any]:
    """KerasTuner's hyperparameter values as the job's dotted paths (tuner/* bookkeeping dropped)."""
    return {
        "train.learning_rate": float(values["learning_rate"]),
        "model.head.units": [int(values["units"])],
        "model.head.dropout": float(values["dropout"]),
        "train.optimizer": str(values["optimizer"]),
    }


def keras_tuner_search(seed: int = 0, max_epochs: int = 18, factor: int = 3,
                       directory: str | None = None) -> dict[str, Any]:
    """KerasTuner's own Hyperband (objective val_accuracy, `max_epochs`, `factor`, `seed`, one
    iteration) over the job's search space, batch 64, in `directory` (a temporary folder by
    default, removed afterwards; overwrite=True either way).

    Returns:
        wall_seconds: seconds of the `tuner.search` call alone (not loading data or constructing
            the tuner, which builds the model once to learn the space);
        best_val_accuracy: the best trial's score, its best epoch's val_accuracy;
        trials: the trials Hyperband ran (continuations of earlier trials count as trials);
        epochs: epochs trained over all trials, from each trial's tuner/epochs - tuner/initial_epoch
            (a continued trial resumes its parent's best checkpoint at tuner/initial_epoch);
        epochs_fit: the same, counted from the epochs each model.fit ran (a check);
        failed_trials: trials not COMPLETED;
        best_hyperparameters: the best trial's values as job paths (train.learning_rate, ...).
    """
    job, data = _load_workload()
    import keras
    import keras_tuner

    keras.utils.set_random_seed(seed)
    hypermodel = _hypermodel(job.model_dump(mode="json"), data)
    with tempfile.TemporaryDirectory(prefix="bench-keras-tuner-") as scratch:
        tuner = keras_tuner.Hyperband(
            hypermodel, objective="val_accuracy", max_epochs=max_epochs, factor=factor, seed=seed,
            directory=directory or scratch, project_name=PROJECT_NAME, overwrite=True,
        )
        with warnings.catch_warnings():
            # A continued trial loads its parent's checkpoint into a model whose optimizer has no
            # slots yet, so Keras skips the optimizer variables (KerasTuner's behaviour) and says so.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            started = time.perf_counter()
            tuner.search(data.train.features, data.train.labels, batch_size=BATCH_SIZE,
                         validation_data=(data.validation.features, data.validation.labels), verbose=0)
            wall_seconds = time.perf_counter() - started
        trials = list(tuner.oracle.trials.values())
        completed = [t for t in trials if t.status == "COMPLETED"]  # keras_tuner TrialStatus values are strings
        epochs = sum(int(t.hyperparameters.values.get("tuner/epochs", 0))
                     - int(t.hyperparameters.values.get("tuner/initial_epoch", 0)) for t in completed)
        best = tuner.oracle.get_best_trials(1)[0]
        return {
            "wall_seconds": wall_seconds,
            "best_val_accuracy": float(best.score),
            "trials": len(trials),
            "epochs": epochs,
            "epochs_fit": hypermodel.epochs_fit,
            "failed_trials": len(trials) - len(completed),
            "best_hyperparameters": _as_job_paths(best.hyperparameters.values),
        }


# --- command line --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8, help="plain Keras epochs to time (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-epochs", type=int, default=18, help="Hyperband max_epochs (default 18)")
    parser.add_argument("--factor", type=int, default=3, help="Hyperband reduction factor (default 3)")
    parser.add_argument("--directory", default=None, help="KerasTuner's folder (default: a temporary one)")
    parser.add_argument("--skip-tuner", action="store_true", help="time plain Keras only")
    parser.add_argument("--skip-plain", action="store_true", help="run KerasTuner only")
    parser.add_argument("--side-by-side", action="store_true",
                        help="also time our loop and fit in turn in this process (compare.py's figure 1c)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the figures (for compare.py)")
    args = parser.parse_args(argv)
    figures: dict[str, Any] = {}
    if not args.skip_plain:
        figures["plain"] = _print_plain(args)
    if args.side_by_side:
        figures["side_by_side"] = side_by_side_epochs(args.epochs, args.seed)
        print(f"in one process, in turn: fit {steady_median(figures['side_by_side']['fit_train_seconds']):.3f} s, "
              f"our loop {steady_median(figures['side_by_side']['loop_train_seconds']):.3f} s per epoch", flush=True)
    if not args.skip_tuner:
        figures["tuner"] = _print_tuner(args)
    if args.json:
        print(json.dumps(figures), flush=True)
    return 0


def _print_plain(args) -> dict:
    plain = plain_keras_epochs(args.epochs, args.seed)
    print(f"plain Keras, {args.epochs} epochs (median after the first):")
    print(f"  epoch (with validation): {steady_median(plain['epoch_seconds']):.3f} s   "
          f"[{', '.join(f'{s:.3f}' for s in plain['epoch_seconds'])}]")
    print(f"  train only:              {steady_median(plain['train_seconds']):.3f} s   "
          f"[{', '.join(f'{s:.3f}' for s in plain['train_seconds'])}]")
    sys.stdout.flush()
    return plain


def _print_tuner(args) -> dict:
    tuned = keras_tuner_search(args.seed, args.max_epochs, args.factor, args.directory)
    print(f"KerasTuner Hyperband (max_epochs {args.max_epochs}, factor {args.factor}, seed {args.seed}):")
    print(f"  wall: {tuned['wall_seconds']:.1f} s   trials: {tuned['trials']} "
          f"({tuned['failed_trials']} failed)   epochs: {tuned['epochs']} (fit ran {tuned['epochs_fit']})   "
          f"{tuned['wall_seconds'] / max(1, tuned['epochs']):.3f} s/epoch")
    print(f"  best val_accuracy: {tuned['best_val_accuracy']:.4f}   {tuned['best_hyperparameters']}")
    return tuned


if __name__ == "__main__":
    sys.exit(main())
