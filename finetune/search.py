"""The Tune search: one trial per sampled configuration, a scheduler that stops weak trials, and
the resource arithmetic that decides how many trials run at once.

A trial is `run_trial`. With `ray_train` it starts a Ray Train `TensorflowTrainer` whose workers
run `train_loop.train_worker`; with `in_trial` (one worker) it runs the very same loop in its own
process, which Tune reuses from trial to trial so TensorFlow is imported once.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

from finetune import storage
from finetune.errors import UserError
from finetune.failures import USER_ERROR, read_failure, record_failure
from finetune.job import Job, SearchSpec, set_path, validate_job_dict
from finetune.search_space import parse_space, to_tune_space

# Ray Train's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (default 2 s),
# and each ray.train.report waits for that poll: a 0.2 s epoch would take 2 s. The controller takes
# the variable from the process that starts it (the trial), which propagates it on a cluster too.
REPORT_POLL_INTERVAL_S = "0.05"

# Memory one trial takes, from the field notes: a process with TensorFlow imported is about 0.8 GB.
GIB = 1024**3
TRIAL_PROCESS_MEMORY = 1.0 * GIB
TRAIN_CONTROLLER_MEMORY = 0.8 * GIB
# The trial that drives a Ray Train run asks for memory only: a CPU share would be taken from the
# Train workers, and on a 2-core machine two 1-CPU workers would then never be placed.
TRAIN_DRIVER_BUNDLE = {"memory": 256 * 1024**2}


@dataclass(frozen=True)
class DataHandle:
    """The run's train and validation data, in Ray's object store, shared by every trial."""

    ref: Any


@dataclass(frozen=True)
class Capacity:
    """What the Ray cluster offers, as `ray.cluster_resources()` reports it."""

    cpus: float
    gpus: float
    memory: float
    nodes: int
    started_here: bool = True  # a local Ray this process started, not a cluster it joined


def trial_resources(job: Job) -> dict[str, float]:
    """What Tune reserves for one trial process."""
    if job.executor == "ray_train":
        return dict(TRAIN_DRIVER_BUNDLE)
    resources = {"CPU": job.resources.cpus_per_worker}
    if job.resources.use_gpu:
        resources["GPU"] = job.resources.gpus_per_worker
    return resources


def plan_concurrency(job: Job, capacity: Capacity, num_trials: int, streaming: bool = False,
                     local: bool = True) -> int:
    """How many trials may run at once: as many as the CPUs, GPUs and memory hold, so that no
    trial's workers wait forever for CPUs another trial's driver holds, memory never runs out, and
    streaming data keeps CPUs free for Ray Data's read tasks (else those wait behind the workers
    that wait for their data).

    On a cluster Ray was asked to join (`local` false), one trial that does not fit yet is not an
    error: the autoscaler may add nodes, and Tune queues the trials until it has.
    """
    resources = job.resources
    cpus_needed = resources.num_workers * resources.cpus_per_worker + data_cpus(job, streaming)
    limits = {"CPUs": math.floor(capacity.cpus / cpus_needed + 1e-9)}
    if resources.use_gpu:
        limits["GPUs"] = math.floor(capacity.gpus / (resources.num_workers * resources.gpus_per_worker) + 1e-9)
    limits["memory"] = math.floor(capacity.memory / estimated_trial_memory(job))
    fitting = min(limits.values())
    if fitting < 1 and local:
        short = min(limits, key=limits.get)
        data = f" plus {data_cpus(job, streaming):g} CPU for Ray Data to stream the data" if streaming else ""
        raise UserError(
            f"resources: one trial needs {resources.num_workers} workers x {resources.cpus_per_worker:g} "
            f"CPUs{' and GPUs' if resources.use_gpu else ''}{data}, but this Ray has {capacity.cpus:g} CPUs, "
            f"{capacity.gpus:g} GPUs and {capacity.memory / GIB:.1f} GiB of memory ({short} too few). Lower "
            f"resources.num_workers or cpus_per_worker, or run on a larger cluster."
        )
    if resources.max_concurrent_trials != "auto":
        return max(1, min(resources.max_concurrent_trials, num_trials))
    return max(1, min(fitting, num_trials))


def data_cpus(job: Job, streaming: bool) -> float:
    if job.resources.data_cpus != "auto":
        return float(job.resources.data_cpus)
    return 1.0 if streaming else 0.0


def estimated_trial_memory(job: Job) -> float:
    if job.executor == "ray_train":
        return TRIAL_PROCESS_MEMORY + TRAIN_CONTROLLER_MEMORY + job.resources.num_workers * TRIAL_PROCESS_MEMORY
    return TRIAL_PROCESS_MEMORY


def count_trials(search: SearchSpec) -> int:
    """Tune runs num_samples trials, each over the full grid when the space has grid entries."""
    grid = 1
    for domain in parse_space(search.space).values():
        if domain.kind == "grid":
            grid *= len(domain.args[0])
    return search.num_samples * grid


def create_scheduler(job: Job):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    spec = job.search.scheduler
    if spec.type in ("asha", "hyperband"):
        # Ray's ASHAScheduler is AsyncHyperBandScheduler; several brackets make it asynchronous
        # HyperBand. Both only stop trials, so they need no Tune checkpoint to pause and resume.
        return ASHAScheduler(time_attr="epoch", max_t=job.train.epochs, grace_period=spec.grace_period,
                             reduction_factor=spec.reduction_factor, brackets=spec.brackets)
    if spec.type == "median":
        return MedianStoppingRule(time_attr="epoch", grace_period=spec.grace_period,
                                  min_samples_required=spec.min_samples_required)
    return FIFOScheduler()


TUNE_FOLDER = "tune"  # Tune's experiment folder inside a run folder


def make_trainable(job: Job, run_dir: str, data: DataHandle):
    """`run_trial` with the run's job, folder and data bound, and its resources."""
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(run_trial, job_dict=job.model_dump(mode="json"), run_dir=run_dir, data=data),
        trial_resources(job),
    )


def restore_tuner(job: Job, run_dir: str, data: DataHandle, callbacks: list):
    """The run's Tune experiment as its driver left it. Finished and failed trials stay as they
    are; unfinished ones continue from their latest checkpoints. The progress callbacks of this
    process replace the ones pickled with the experiment."""
    from ray import tune

    from finetune.resume import repair_snapshot

    repair_snapshot(storage.join(run_dir, TUNE_FOLDER))
    tuner = tune.Tuner.restore(storage.join(run_dir, TUNE_FOLDER), make_trainable(job, run_dir, data),
                               resume_unfinished=True, resume_errored=False, restart_errored=False)
    tuner._local_tuner._run_config.callbacks = run_callbacks(run_dir, callbacks)  # no public way to set them again
    return tuner


def run_callbacks(run_dir: str, callbacks: list) -> list:
    """Every Tune callback of a run: Tune's JSON and CSV result files (what metrics tables and
    resumes read), the keeper of whole snapshot copies (finetune.resume), then the caller's. Tune's
    TensorBoard logger, added by default, is left out: TensorFlow 2.21 ships no TensorBoard to
    read it, and it costs the driver a write per result."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from finetune.resume import SnapshotKeeper

    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    return [JsonLoggerCallback(), CSVLoggerCallback(), SnapshotKeeper(storage.join(run_dir, TUNE_FOLDER)), *callbacks]


def create_tuner(job: Job, run_dir: str, data: DataHandle, concurrency: int, callbacks: list):
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return tune.Tuner(
        make_trainable(job, run_dir, data),
        param_space={
            "space": to_tune_space(job.search.space, fixed=job.model_dump(mode="json")),
            # Every trial's seed, drawn by the seeded search: the experiment seed fixes them all.
            "seed": tune.randint(0, 2**31 - 1),
        },
        tune_config=tune.TuneConfig(
            metric=job.search.metric,
            mode=job.search.mode,
            num_samples=job.search.num_samples,
            scheduler=create_scheduler(job),
            # Tune ignores TuneConfig.max_concurrent_trials when given a generator instance (field
            # notes); the generator's own max_concurrent is the cap that holds.
            search_alg=BasicVariantGenerator(random_state=job.seed, max_concurrent=concurrency),
            # A reused trial process keeps TensorFlow imported: later trials start in about a second.
            # Only for in_trial: a trial that drives a Ray Train run is inside trainer.fit() when a
            # scheduler stops it, so Tune cannot reset it for reuse (and errors the next trial).
            reuse_actors=job.executor == "in_trial",
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=tune.RunConfig(
            name=TUNE_FOLDER,
            storage_path=run_dir,
            verbose=0,
            callbacks=run_callbacks(run_dir, callbacks),
            failure_config=tune.FailureConfig(max_failures=job.resources.max_failures),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=job.search.metric,
                checkpoint_score_order=job.search.mode,
            ),
        ),
    )


def trial_job(job_dict: dict, sampled: dict[str, Any]) -> Job:
    """The job with one trial's sampled values in place."""
    for dotted, value in sampled.items():
        if value is not None:  # None: a conditional entry whose condition this trial does not meet
            job_dict = set_path(job_dict, dotted, value)
    job_dict["search"]["space"] = {}
    return validate_job_dict(job_dict, source="trial configuration")


def run_trial(config: dict, *, job_dict: dict, run_dir: str, data: DataHandle) -> None:
    """One Tune trial: train the sampled configuration, reporting every epoch to Tune.

    A failure that would only repeat (a user error such as a missing file or a layer the base does
    not have, or a loss that became NaN) is recorded in the trial's failure marker and the trial
    ends: Tune does not retry it. Anything else (a killed process, a lost node) raises, and Tune
    restarts the trial from its last checkpoint, up to `resources.max_failures` times."""
    import ray.tune

    started_at = time.time()
    trial_id = ray.tune.get_context().get_trial_id()
    trial_dir = storage.join(run_dir, "trials", trial_id)
    if read_failure(trial_dir) is not None:
        return  # already failed for good (a restored run): nothing to redo
    try:
        job = trial_job(job_dict, config["space"])
        loop_config = {"job": job.model_dump(mode="json"), "seed": config["seed"], "data": data,
                       "trial_dir": trial_dir, "trial_started_at": started_at}
        if job.executor == "in_trial":
            from finetune.train_loop import TuneTrialSession, run_worker_loop

            run_worker_loop(loop_config, TuneTrialSession())
        else:
            run_ray_train(job, loop_config, run_dir, trial_id, data)
    except UserError as error:
        record_failure(trial_dir, str(error), USER_ERROR)


def run_ray_train(job: Job, loop_config: dict, run_dir: str, trial_id: str, data: DataHandle) -> None:
    """A Ray Train run for one trial. Its name is the trial id, so a restarted trial resumes the
    same run from its latest checkpoint. Streaming splits go to Ray Train, which shards them equally
    across the workers; in-memory splits reach the workers through the object store."""
    import ray
    import ray.train
    from ray.train.tensorflow import TensorflowTrainer
    from ray.util.queue import Queue

    from finetune.train_loop import train_worker
    from finetune.train_to_tune import ReportsToQueue, fit_reporting_to_tune

    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = REPORT_POLL_INTERVAL_S
    resources = job.resources
    per_worker = {"CPU": resources.cpus_per_worker}
    if resources.use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    loaded = ray.get(data.ref)
    reports = Queue(actor_options={"num_cpus": 0})
    datasets = {"train": loaded.train.dataset, "validation": loaded.validation.dataset} if loaded.streaming else None
    trainer = TensorflowTrainer(
        train_loop_per_worker=train_worker,
        train_loop_config=loop_config,
        datasets=datasets,
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.num_workers, use_gpu=resources.use_gpu, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=trial_id,
            storage_path=storage.join(run_dir, "trials"),
            callbacks=[ReportsToQueue(reports)],
            failure_config=ray.train.FailureConfig(max_failures=resources.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=job.search.metric,
                checkpoint_score_order=job.search.mode,
            ),
        ),
    )
    fit_reporting_to_tune(trainer, reports)
