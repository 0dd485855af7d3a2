"""What one trial does: train one sampled configuration, reporting every epoch to Tune.

With `ray_train` the trial starts a Ray Train data-parallel run (our TF_CONFIG backend,
`finetune.train_backend`) whose workers run `train_loop.train_worker`; with `in_trial` (one worker) it runs the very same loop in its own
process, which Tune reuses from trial to trial so TensorFlow is imported once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from finetune import storage
from finetune.errors import UserError
from finetune.failures import USER_ERROR, read_failure, record_failure
from finetune.job import Job, set_path, validate_job_dict
from finetune.startup import process_started_at


@dataclass(frozen=True)
class DataHandle:
    """The run's train and validation data, in Ray's object store, shared by every trial."""

    ref: Any


def trial_job(job_dict: dict, sampled: dict[str, Any]) -> Job:
    """The job with one trial's sampled values in place."""
    for dotted, value in sampled.items():
        if value is not None:  # None: a conditional entry whose condition this trial does not meet
            job_dict = set_path(job_dict, dotted, value)
    # The trial's job is one configuration: no space to sample, nothing to schedule.
    job_dict["search"]["space"], job_dict["search"]["scheduler"] = {}, {"type": "none"}
    return validate_job_dict(job_dict, source="trial configuration")


def run_trial(config: dict, *, job_dict: dict, run_dir: str, data: DataHandle, mailbox=None) -> None:
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
                       "trial_dir": trial_dir, "trial_started_at": started_at, "run_dir": run_dir,
                       "trial_id": trial_id, "sampled": config["space"],
                       "startup_marks": {"trial_process": process_started_at()}}
        if job.executor == "in_trial":
            from finetune.train_loop import TuneTrialSession, run_worker_loop

            run_worker_loop(loop_config, TuneTrialSession())
        else:
            run_ray_train(job, loop_config, run_dir, trial_id, data, mailbox)
    except UserError as error:
        record_failure(trial_dir, str(error), USER_ERROR)
    except Exception:
        if read_failure(trial_dir) is not None:
            return  # a Ray Train worker recorded why before the run failed (train_loop.train_worker)
        raise


def run_ray_train(job: Job, loop_config: dict, run_dir: str, trial_id: str, data: DataHandle, mailbox) -> None:
    """A Ray Train run for one trial. Its name is the trial id, so a restarted trial resumes the
    same run from its latest checkpoint. Streaming splits go to Ray Train, which shards them equally
    across the workers; in-memory splits reach the workers through the object store."""
    import ray
    import ray.train

    from finetune._compat import data_parallel_trainer
    from finetune.train_backend import MultiWorkerConfig
    from finetune.train_loop import train_worker
    from finetune.train_to_tune import ReportsToMailbox, fit_reporting_to_tune

    resources = job.resources
    per_worker = {"CPU": resources.cpus_per_worker}
    if resources.use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    loaded = ray.get(data.ref)
    datasets = {"train": loaded.train.dataset, "validation": loaded.validation.dataset} if loaded.streaming else None
    loop_config["startup_marks"]["fit"] = time.time()
    trainer = data_parallel_trainer()(
        train_loop_per_worker=train_worker,
        train_loop_config=loop_config,
        backend_config=MultiWorkerConfig(),
        datasets=datasets,
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.num_workers, use_gpu=resources.use_gpu, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=trial_id,
            storage_path=storage.join(run_dir, "trials"),
            callbacks=[ReportsToMailbox(mailbox, trial_id, loop_config["trial_started_at"])],
            failure_config=ray.train.FailureConfig(max_failures=resources.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=job.search.metric,
                checkpoint_score_order=job.search.mode,
            ),
        ),
    )
    fit_reporting_to_tune(trainer, mailbox, trial_id)
