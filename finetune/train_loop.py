"""The per-worker training loop, what runs on each Ray Train worker (and inside an in-trial
trial): build the model and optimizer in the strategy's scope, resume from the latest checkpoint,
then each epoch train, validate, check the loss, checkpoint and report.

One loop serves one worker and N. The compiled step functions it calls (the explicit distributed
step that Keras 3 needs under MultiWorkerMirroredStrategy) are `finetune.train_step`.

Where it runs is behind a small session object: `RayTrainSession` on Ray Train workers (rank 0
writes the checkpoint, every rank reports), `TuneTrialSession` when a one-worker trial runs the
same loop inside the Tune trial, without a Ray Train start-up.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import math
import os
import tempfile
import time

import numpy as np

from finetune.data import LoadedData
from finetune.data.feed import Batches, worker_batches
from finetune.errors import DataChanged, UserError
from finetune.failures import NON_FINITE, USER_ERROR, read_failure, record_failure
from finetune.job import Job
from finetune.job.schema import FULL_BATCH_OPTIMIZERS
from finetune.optimization import (
    create_loss,
    create_optimizer,
    encode_labels,
    label_encoding,
    learning_rate_at,
    per_example_metric,
)
from finetune.startup import StartupClock, process_started_at
from finetune.train_step import make_eval_sums, make_train_steps

MODEL_FILE = "model.keras"
STATE_FILE = "state.json"


# --- where the loop runs -------------------------------------------------------------------------


class RayTrainSession:
    """On a Ray Train worker: every rank reports every epoch (the report is a barrier); rank 0
    alone attaches the checkpoint."""

    def __init__(self):
        import ray.train

        self._train = ray.train
        context = ray.train.get_context()
        self.world_rank = context.get_world_rank()
        self.world_size = context.get_world_size()

    def latest_checkpoint(self):
        return self._train.get_checkpoint()

    def dataset_shard(self, name: str):
        """This worker's share of a streaming split (Ray Train splits it across the workers)."""
        return self._train.get_dataset_shard(name)

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        from ray.train import Checkpoint

        checkpoint = Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        self._train.report(metrics, checkpoint=checkpoint)


class TuneTrialSession:
    """Inside a Tune trial (one worker): reports go straight to Tune."""

    world_rank = 0
    world_size = 1

    def latest_checkpoint(self):
        import ray.tune

        return ray.tune.get_checkpoint()

    def dataset_shard(self, name: str):
        return None  # the only worker reads the whole split

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        import ray.tune

        checkpoint = ray.tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.tune.report(metrics, checkpoint=checkpoint)


# --- the loop ------------------------------------------------------------------------------------


def train_worker(config: dict) -> None:
    """Entry point of a trial's Ray Train workers (`train_loop_per_worker=train_worker`). A user error (the
    same on every worker: a missing file, a layer the base lacks) is recorded and the run ends, so
    that Ray Train does not restart the workers to meet it again."""
    if read_failure(config["trial_dir"]) is not None:
        return  # an earlier attempt of this Train run failed for good: every worker ends here
    session = RayTrainSession()
    try:
        run_worker_loop(config, session)
    except DataChanged as error:
        record_failure(config["trial_dir"], str(error), USER_ERROR)
        if session.world_size > 1:
            # The other workers may be waiting for this one inside a collective step: raising, not
            # returning, makes Ray Train stop them all. Its restart then ends at the marker above.
            raise RuntimeError(str(error)) from None
    except UserError as error:
        record_failure(config["trial_dir"], str(error), USER_ERROR)


def run_worker_loop(config: dict, session) -> None:
    """Train one trial's model for `train.epochs` epochs, resuming from the latest checkpoint.

    config: {"job": resolved job dict, "seed": int, "data": DataHandle, "trial_dir": str,
             "trial_started_at": float (time.time() when the trial started), and for TensorBoard
             "run_dir", "trial_id", "sampled" (the trial's sampled values)}
    """
    clock = StartupClock(config["trial_started_at"], config.get("startup_marks"))
    clock.mark("worker_process", process_started_at())
    clock.mark("loop")
    job = Job.model_validate(config["job"])
    configure_tensorflow(job.resources.cpus_per_worker)
    clock.mark("tensorflow")
    import ray

    data: LoadedData = ray.get(config["data"].ref)
    clock.mark("data")
    shards = {name: session.dataset_shard(name) for name in ("train", "validation")} if data.streaming else {}
    trainer = EpochTrainer(job, data, seed=config["seed"], rank=session.world_rank,
                           world_size=session.world_size, shards=shards,
                           trial=os.path.basename(config["trial_dir"].rstrip("/")), clock=clock)
    start_epoch = 0
    checkpoint = session.latest_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            start_epoch = trainer.restore(directory)
    node_id = ray.get_runtime_context().get_node_id()
    board = trial_board(job, config, session.world_rank)
    try:
        train_epochs(job, config, session, trainer, start_epoch, node_id, board)
    finally:
        if board is not None:
            board.close()


def trial_board(job: Job, config: dict, rank: int):
    """Rank 0's TensorBoard writer for this trial, when tracking.tensorboard is on (finetune.tracking)."""
    from finetune.tracking import TrialBoard, tensorboard_enabled

    if rank != 0 or "run_dir" not in config or not tensorboard_enabled(job, config["run_dir"]):
        return None
    return TrialBoard(job, config["run_dir"], config["trial_id"], config["sampled"], config["seed"])


def train_epochs(job: Job, config: dict, session, trainer: "EpochTrainer", start_epoch: int, node_id: str,
                 board) -> None:
    for epoch in range(start_epoch + 1, job.train.epochs + 1):
        with tempfile.TemporaryDirectory(prefix="finetune-ckpt-") as directory:
            checkpoint_dir = directory if session.world_rank == 0 else None  # rank 0 alone writes it
            metrics = trainer.train_epoch(epoch, checkpoint_dir)
            metrics["node_id"] = node_id  # where rank 0 trained: trials spread over a cluster's nodes
            if epoch == start_epoch + 1:  # the first epoch of this process: where its start-up time went
                metrics.update(first_epoch_figures(config, trainer, start_epoch))
            bad = [k for k in ("loss", "val_loss") if not math.isfinite(metrics[k])]
            if bad:
                # Every rank sees the same all-reduced loss and stops here; the trial reads the marker.
                if session.world_rank == 0:
                    record_failure(config["trial_dir"], f"{bad[0]} became {metrics[bad[0]]} at epoch {epoch}",
                                   NON_FINITE, epoch=epoch, metrics=metrics)
                return
            if board is not None:
                board.epoch(epoch, metrics)
            session.report(metrics, checkpoint_dir)


def first_epoch_figures(config: dict, trainer: "EpochTrainer", start_epoch: int) -> dict:
    """Start-up time of this process (trial start to first step, and per phase), and whose
    checkpoint the trial went on from: its own, or a PBT donor's."""
    figures = {"startup_seconds": trainer.clock.marks["first_step"] - config["trial_started_at"]}
    if start_epoch > 0:
        figures["resumed_from_trial"], figures["resumed_from_epoch"] = trainer.restored_from, start_epoch
    figures.update(trainer.clock.relative())
    return figures


def configure_tensorflow(cpus: float) -> None:
    """Size TensorFlow's thread pools to the worker's CPUs, so workers sharing a node do not fight
    over cores. Only possible before TensorFlow starts; a reused process keeps its first setting."""
    from finetune import _compat

    _compat.import_keras_for_training()  # Keras, and TensorFlow with it, without what training never uses
    import tensorflow as tf

    threads = max(1, int(round(cpus)))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # TensorFlow already initialised in this process (a reused actor)


def _dtype_policy(job: Job) -> str:
    """mixed_float16 computes in float16 and keeps float32 weights (GPUs only: the job refuses it on
    CPUs); cg and lbfgs run in float64, which their line searches need (finetune.full_batch)."""
    if job.train.optimizer in FULL_BATCH_OPTIMIZERS:
        return "float64"
    return "mixed_float16" if job.train.mixed_precision else "float32"


def create_strategy(world_size: int):
    import tensorflow as tf

    if world_size > 1:
        # Ray Train's TensorFlow backend has set TF_CONFIG on every worker.
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


class EpochTrainer:
    """Model, optimizer and compiled epoch functions for one trial on one worker."""

    def __init__(self, job: Job, data: LoadedData, seed: int, rank: int, world_size: int,
                 shards: dict | None = None, trial: str | None = None, clock: StartupClock | None = None):
        import keras
        import tensorflow as tf

        from finetune.models import create_model

        self.job, self.data, self.seed, self.rank, self.world_size = job, data, seed, rank, world_size
        self.trial = trial  # the trial id, recorded in checkpoints
        self.restored_from: str | None = None  # the trial whose checkpoint this one resumed from
        self.clock = clock or StartupClock(time.time())
        self.spec = job.train  # the job's train: section
        self.strategy = create_strategy(world_size)
        self.clock.mark("strategy")
        self.task = job.model.task
        self.encoding = label_encoding(job.train.loss, self.task)
        self.metric_names = list(job.train.metrics)
        self.metric_fns = [per_example_metric(n, job.train.loss, self.task) for n in self.metric_names]
        self.loss_fn = create_loss(job.train, data.num_classes, self.task)
        self.full_batch = job.train.optimizer in FULL_BATCH_OPTIMIZERS
        keras.mixed_precision.set_global_policy(_dtype_policy(job))
        keras.utils.set_random_seed(seed)  # same initial weights on every worker
        self.phase = 1
        with self.strategy.scope():
            self.model = create_model(job, data)
            self._new_optimizer()
        self._make_functions()
        self.clock.mark("model")
        shards = shards or {}
        self.validation_batches = self._batches(data.validation, shards.get("validation"), shuffle=False)
        if self.full_batch:  # the minimizer holds this worker's rows of the training split itself
            self._tf = tf
            return
        self.train_batches = self._batches(data.train, shards.get("train"), shuffle=True)
        if world_size > 1:
            # Each worker already holds its own shard: hand it to the strategy as is, no re-sharding.
            local = self.train_batches.dataset
            self.train_batches.dataset = self.strategy.distribute_datasets_from_function(lambda _: local)
        self.clock.mark("pipeline")
        self._tf = tf

    def _new_optimizer(self) -> None:
        """A fresh optimizer for the current phase's trainable weights. Compiling is not for fit():
        it records the loss, metrics and optimizer in the saved .keras file, so the model loads
        ready to evaluate in plain Keras. Call inside the strategy's scope. A full-batch method
        (finetune.full_batch) has no Keras optimizer: the model is compiled with plain SGD, which
        only the saved file records."""
        if self.full_batch:
            import keras

            self.optimizer = keras.optimizers.SGD()
        else:
            self.optimizer = create_optimizer(self.spec, self._phase_scale(), self.spec.mixed_precision)
        self.model.compile(optimizer=self.optimizer, loss=self.spec.loss, metrics=self.metric_names)
        self.optimizer.build(self.model.trainable_variables)

    def _phase_scale(self) -> float:
        fine_tune = self.spec.fine_tune
        return fine_tune.learning_rate_scale if fine_tune and self.phase == 2 else 1.0

    def _enter_phase_two(self) -> None:
        """Unfreeze the top of the base and go on with a new optimizer at the scaled learning rate."""
        from finetune.models import freeze_base

        self.phase = 2
        with self.strategy.scope():
            freeze_base(self.model, self.job.model.freeze, unfreeze_top=self.spec.fine_tune.unfreeze_top)
            self._new_optimizer()
        self._make_functions()

    # -- data --

    def _encode(self, features, labels):
        return features, encode_labels(labels, self.encoding, self.data.num_classes)

    def _batches(self, split, shard, shuffle: bool) -> Batches:
        per_worker_batch = max(1, self.job.train.batch_size // self.world_size)
        batches = worker_batches(split, shard, self.rank, self.world_size, self.data.input_shape,
                                 per_worker_batch, shuffle, self.seed)
        batches.dataset = batches.dataset.map(self._encode)
        return batches

    # -- compiled functions --

    def _make_functions(self) -> None:
        """Trace-ready epoch functions for the current model and optimizer (finetune.train_step), or
        the full-batch minimizer over the current trainable weights (finetune.full_batch)."""
        self._eval_fn = make_eval_sums(self.model, self.loss_fn, self.metric_fns)
        if self.full_batch:
            self._minimizer = self._full_batch_minimizer()
            return
        self._train_fn = make_train_steps(self.strategy, self.model, self.optimizer, self.loss_fn, self.metric_fns,
                                          jit_compile=self.spec.jit_compile)

    def _full_batch_minimizer(self):
        from finetune.full_batch import FullBatchMinimizer

        split = self.data.train
        rows = np.arange(self.rank, len(split), self.world_size)
        labels = encode_labels(split.labels[rows], self.encoding, self.data.num_classes)
        return FullBatchMinimizer(self.model, self.loss_fn, self.metric_fns, split.features[rows], np.asarray(labels),
                                  self._all_reduce, self.spec.optimizer, self.spec.optimizer_args)

    def _all_reduce(self, local_value):
        """Sum a per-worker tensor over all workers (identity with one worker)."""
        if self.world_size == 1:
            return local_value
        import tensorflow as tf

        per_replica = self.strategy.run(lambda: tf.identity(local_value))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    # -- one epoch --

    def train_epoch(self, epoch: int, checkpoint_dir: str | None = None) -> dict:
        """One epoch's training and validation, and its metrics; with `checkpoint_dir`, the
        checkpoint of the epoch's weights written there while the epoch validates. Streaming files
        that disappeared or changed since the run started stop it with a DataChanged naming the
        file, checked by rank 0 before the epoch and by every worker when the epoch fails."""
        if self.rank == 0:
            self._check_data_unchanged()
        try:
            return self._train_epoch(epoch, checkpoint_dir)
        except Exception:
            self._check_data_unchanged()
            raise

    def _check_data_unchanged(self) -> None:
        change = self.data.changed_source() if self.data.streaming else None
        if change is not None:
            raise DataChanged(
                f"{change} while the run was reading it. A streaming run (dataset.in_memory: false) reads its files "
                "again every epoch, so they must stay as they are until it ends: put the file back as it was, or "
                "start a new run on the new data.")

    def _train_epoch(self, epoch: int, checkpoint_dir: str | None) -> dict:
        tf = self._tf
        fine_tune = self.spec.fine_tune
        if fine_tune and self.phase == 1 and epoch > fine_tune.after_epoch:
            self._enter_phase_two()
        if self.full_batch:
            return self._full_batch_epoch(epoch, checkpoint_dir)
        learning_rate = learning_rate_at(self.spec, epoch, self._phase_scale())
        self.optimizer.learning_rate = learning_rate
        started = time.perf_counter()
        iterator = iter(self.train_batches.dataset)
        steps = self.train_batches.steps
        # The first step runs alone once, so the trial can report when training really began.
        totals = self._train_fn(iterator, tf.constant(1))
        self.clock.mark("first_step")
        if steps > 1:
            totals += self._train_fn(iterator, tf.constant(steps - 1))
        train_seconds = time.perf_counter() - started
        metrics = self._epoch_metrics(epoch, totals.numpy(), started, train_seconds, checkpoint_dir)
        metrics["learning_rate"] = learning_rate
        return metrics

    def _full_batch_epoch(self, epoch: int, checkpoint_dir: str | None) -> dict:
        """One epoch of cg or lbfgs: `iterations` iterations over the whole training split."""
        started = time.perf_counter()
        totals, counts = self._minimizer.run_epoch()
        self.clock.mark("first_step", self._minimizer.first_evaluation_at)  # its first function evaluation
        metrics = self._epoch_metrics(epoch, totals, started, time.perf_counter() - started, checkpoint_dir)
        metrics.update(counts)  # iterations and function evaluations of scipy.optimize.minimize
        return metrics

    def _epoch_metrics(self, epoch: int, totals: np.ndarray, started: float, train_seconds: float,
                       checkpoint_dir: str | None) -> dict:
        """Training sums of the epoch, then validation (and the checkpoint), parameter counts and timings."""
        from finetune.models import parameter_counts

        with self._saving_meanwhile(checkpoint_dir, epoch):
            validation_totals = self._all_reduce(self._eval_fn(self.validation_batches.dataset))
        metrics = {"epoch": epoch}
        metrics.update(self._means(totals, prefix=""))
        metrics.update(self._means(validation_totals.numpy(), prefix="val_"))
        metrics["train_seconds"] = train_seconds
        metrics["epoch_seconds"] = time.perf_counter() - started
        metrics["samples_per_second"] = float(totals[-1]) / train_seconds
        metrics["phase"] = self.phase
        metrics.update(parameter_counts(self.model))
        metrics["worker_pid"] = os.getpid()  # rank 0's process: where the trial really trains
        if self.world_size > 1:
            metrics["replica_weight_spread"] = self._replica_weight_spread()
        return metrics

    def _means(self, totals: np.ndarray, prefix: str) -> dict:
        count = max(totals[-1], 1.0)
        names = ["loss", *self.metric_names]
        return {prefix + name: float(totals[i] / count) for i, name in enumerate(names)}

    def _replica_weight_spread(self) -> float:
        """Largest difference between workers of the sum of all weights: 0 when in sync."""
        import tensorflow as tf

        local = tf.add_n([tf.reduce_sum(tf.cast(v.value, tf.float64)) for v in self.model.weights])
        per_replica = self.strategy.run(lambda: tf.reshape(local, [1]))
        gathered = self.strategy.gather(per_replica, axis=0).numpy()
        return float(gathered.max() - gathered.min())

    # -- checkpoints --

    @contextlib.contextmanager
    def _saving_meanwhile(self, directory: str | None, epoch: int):
        """Write the epoch's checkpoint (when train_epoch was given a folder) in a thread while the
        body runs. Validation only reads the weights, so the file holds exactly the weights the
        epoch's metrics describe, and the report still waits for it: a restarted trial loses at
        most the epoch in progress. TensorFlow runs validation outside the GIL, so the two share
        the cores: on the reference model what an epoch cost beyond its training and validation
        went from 0.115 s to 0.019 s (bench/epoch_cadence.py, docs/benchmarks.md). The report
        itself stays on the training path: Tune's answer to it (go on, or stop this trial) decides
        whether the next epoch runs at all."""
        if directory is None:
            yield
            return
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="finetune-checkpoint") as writer:
            saved = writer.submit(self.save, directory, epoch)
            yield
        saved.result()  # a failed write raises here, on the training thread

    def save(self, directory: str, epoch: int) -> str:
        self.model.save(os.path.join(directory, MODEL_FILE))
        with open(os.path.join(directory, STATE_FILE), "w") as out:
            json.dump({"epoch": epoch, "seed": self.seed, "phase": self.phase, "trial": self.trial,
                       "configuration": self.configuration}, out)
        return directory

    @property
    def configuration(self) -> str:
        """A digest of the trial's model and train sections: what its checkpoints were made with."""
        text = json.dumps([self.job.model.model_dump(mode="json"), self.spec.model_dump(mode="json")], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def restore(self, directory: str) -> int:
        """Load weights, trainable flags and optimizer state from a checkpoint; returns the epoch
        it ended. `restored_from` is the trial that wrote it.

        A checkpoint made with another configuration is a PBT exploit (the donor's weights, this
        trial's new, perturbed configuration): the model is the one built from this trial's job,
        given the checkpoint's weights and, where they fit, its optimizer's slots, so that values
        built into the model (dropout) or its optimizer (weight decay) take their new values."""
        import keras

        with open(os.path.join(directory, STATE_FILE)) as state_file:
            state = json.load(state_file)
        self.restored_from = state.get("trial")
        with self.strategy.scope():
            # The loaded model brings its own optimizer, whose state is tied to its variables.
            loaded = keras.models.load_model(os.path.join(directory, MODEL_FILE), compile=True, safe_mode=True)
        if state.get("configuration", self.configuration) != self.configuration:
            self._take_weights(loaded, int(state.get("phase", 1)))
            return int(state["epoch"])
        self.model, self.optimizer = loaded, loaded.optimizer
        self.phase = int(state.get("phase", 1))
        self._make_functions()
        return int(state["epoch"])

    def _take_weights(self, loaded, phase: int) -> None:
        """This trial's own model and optimizer, holding another configuration's weights and, when
        the optimizers' variables match (same kind and shapes), its optimizer state."""
        if phase == 2 and self.phase == 1:
            self._enter_phase_two()
        self.model.set_weights(loaded.get_weights())
        ours, theirs = self.optimizer.variables, getattr(loaded.optimizer, "variables", [])
        if not self.full_batch and len(ours) == len(theirs) and all(a.shape == b.shape for a, b in zip(ours, theirs)):
            for variable, value in zip(ours, theirs):
                variable.assign(value)
        self._make_functions()
