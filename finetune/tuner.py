"""How Ray Tune is set up for a run: the search over the job's space, the scheduler that stops weak
trials, the callbacks, checkpoints and failure policy, and the restore of an interrupted run.

What each trial does is `finetune.trial`; how many run at once, `finetune.resources`.
"""

from __future__ import annotations

from finetune import _compat, storage
from finetune.job import Job
from finetune.resources import trial_resources
from finetune.search_space import ClampToSpace, pbt_mutations, to_tune_space
from finetune.searchers import create_search_alg
from finetune.trial import DataHandle, run_trial


def create_scheduler(job: Job):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    spec = job.search.scheduler
    if spec.type == "pbt":
        return create_pbt(job)
    if spec.type in ("asha", "hyperband"):
        # Ray's ASHAScheduler is AsyncHyperBandScheduler; several brackets make it asynchronous
        # HyperBand. Both only stop trials, so they need no Tune checkpoint to pause and resume.
        return ASHAScheduler(time_attr="epoch", max_t=job.train.epochs, grace_period=spec.grace_period,
                             reduction_factor=spec.reduction_factor, brackets=spec.brackets)
    if spec.type == "median":
        return MedianStoppingRule(time_attr="epoch", grace_period=spec.grace_period,
                                  min_samples_required=spec.min_samples_required)
    return FIFOScheduler()


def create_pbt(job: Job):
    """Population-based training over the space's numeric entries (search_space.pbt_mutations).
    An exploit restarts the trial with the donor's configuration, perturbed, and the donor's latest
    checkpoint; the trial rebuilds its model from that configuration with the donor's weights
    (train_loop.EpochTrainer.restore). Entries that are not mutated come with the donor's
    configuration, so the weights always fit the model they are loaded into."""
    from ray.tune.schedulers import PopulationBasedTraining

    spec = job.search.scheduler
    mutations = pbt_mutations(job.search.space, spec.mutate)
    return PopulationBasedTraining(
        time_attr="epoch", perturbation_interval=spec.perturbation_interval,
        hyperparam_mutations={"space": {path: domain.to_tune() for path, domain in mutations.items()}},
        quantile_fraction=spec.quantile_fraction, resample_probability=spec.resample_probability,
        custom_explore_fn=ClampToSpace(mutations), log_config=True,
    )


TUNE_FOLDER = "tune"  # Tune's experiment folder inside a run folder


def make_trainable(job: Job, run_dir: str, data: DataHandle):
    """`run_trial` with the run's job, folder and data bound, and its resources. Trials that run
    Ray Train share one mailbox for their reports (finetune.train_to_tune)."""
    from ray import tune

    from finetune.train_to_tune import open_mailbox

    mailbox = open_mailbox() if job.executor == "ray_train" else None
    return tune.with_resources(
        tune.with_parameters(run_trial, job_dict=job.model_dump(mode="json"), run_dir=run_dir, data=data,
                             mailbox=mailbox),
        trial_resources(job),
    )


def param_space(job: Job) -> dict:
    """What Tune samples for the basic generator; TPE proposes the whole configuration itself
    (finetune.tpe), so Tune is given nothing to sample."""
    from ray import tune

    if job.search.algorithm == "tpe":
        return {}
    return {
        "space": to_tune_space(job.search.space, fixed=job.model_dump(mode="json")),
        # Every trial's seed, drawn by the seeded search: the experiment seed fixes them all.
        "seed": tune.randint(0, 2**31 - 1),
    }


def create_tuner(job: Job, run_dir: str, data: DataHandle, concurrency: int, callbacks: list):
    from ray import tune

    return tune.Tuner(
        make_trainable(job, run_dir, data),
        param_space=param_space(job),
        tune_config=tune.TuneConfig(
            metric=job.search.metric,
            mode=job.search.mode,
            num_samples=job.search.num_samples,
            scheduler=create_scheduler(job),
            search_alg=create_search_alg(job, run_dir, concurrency),
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
                num_to_keep=checkpoints_to_keep(job), checkpoint_score_attribute=job.search.metric,
                checkpoint_score_order=job.search.mode,
            ),
        ),
    )


def checkpoints_to_keep(job: Job) -> int | None:
    """Each trial's best checkpoint (Tune also keeps the latest), or, under PBT, every one: an
    exploit points a trial at another trial's checkpoint, and Tune would delete it under both when
    either registers a newer one ("Path not found" in register_checkpoint, seen on Ray 2.60; Ray's
    PBT warns about num_to_keep <= 2, ray/tune/schedulers/pbt.py)."""
    return None if job.search.scheduler.type == "pbt" else 1


def restore_tuner(job: Job, run_dir: str, data: DataHandle, callbacks: list):
    """The run's Tune experiment as its driver left it. Finished and failed trials stay as they
    are; unfinished ones continue from their latest checkpoints. The progress callbacks of this
    process replace the ones pickled with the experiment."""
    from ray import tune

    from finetune.resume import repair_snapshot

    repair_snapshot(storage.join(run_dir, TUNE_FOLDER))
    tuner = tune.Tuner.restore(storage.join(run_dir, TUNE_FOLDER), make_trainable(job, run_dir, data),
                               resume_unfinished=True, resume_errored=False, restart_errored=False)
    _compat.set_restored_callbacks(tuner, run_callbacks(run_dir, callbacks))
    return tuner


def run_callbacks(run_dir: str, callbacks: list) -> list:
    """Every Tune callback of a run: Tune's JSON and CSV result files (what metrics tables and
    resumes read), the keeper of whole snapshot copies (finetune.resume), then the caller's. Tune's
    TensorBoard logger, added by default, is left out: TensorFlow 2.21 ships no TensorBoard to
    read it, and it costs the driver a write per result."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from finetune.resume import SnapshotKeeper

    return [JsonLoggerCallback(), CSVLoggerCallback(), SnapshotKeeper(storage.join(run_dir, TUNE_FOLDER)), *callbacks]
