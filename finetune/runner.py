"""`finetune run`, top to bottom: check everything, search, then keep and test the best model.

Every check a user can fail (the job, the data, the model against the data, the resources) runs
before the run folder exists, so bad input leaves nothing behind.
"""

from __future__ import annotations

import platform
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from finetune import reports, storage
from finetune.data import LoadedData, check_fits_workers, load_data
from finetune.errors import RunFailedError, UserError
from finetune.failures import USER_ERROR, trial_failures
from finetune.job import Job, to_yaml
from finetune.registry import SUMMARY_FILE
from finetune.resources import plan_concurrency
from finetune.search_space import count_trials
from finetune.trial import DataHandle
from finetune.tuner import TUNE_FOLDER, create_tuner, restore_tuner

METRICS_FILE = "metrics.parquet"
MODEL_FILE = "model.keras"


def run_job(job: Job, address: str | None = None, verbose: bool = False, out=None,
            callbacks: tuple = (), resume: bool = False) -> dict:
    """Run a job's whole search and return its summary (also written to summary.json).

    resume: continue the newest unfinished run of this job instead of starting a new one.
    callbacks: extra `ray.tune.Callback`s, for callers that watch trials as they run."""
    run_dir = unfinished_run(job) if resume else None
    return _run(job, run_dir, address, verbose, out or sys.stdout, callbacks)


def resume_run(run_dir: str, address: str | None = None, verbose: bool = False, out=None,
               callbacks: tuple = ()) -> dict:
    """Continue a run whose driver stopped (killed, lost its node): finished trials are kept,
    trials in flight restart from their last checkpoints, the rest start."""
    import yaml

    from finetune.job import validate_job_dict

    run_dir = storage.absolute(run_dir)
    job_file = storage.join(run_dir, "job.yaml")
    if not storage.exists(storage.join(run_dir, TUNE_FOLDER)) or not storage.exists(job_file):
        raise UserError(f"resume: {run_dir} is not a run folder (expected job.yaml and {TUNE_FOLDER}/ in it).")
    if storage.exists(storage.join(run_dir, SUMMARY_FILE)):
        raise UserError(f"resume: run {run_dir} already finished (it has {SUMMARY_FILE}); nothing to resume.")
    job = validate_job_dict(yaml.safe_load(storage.read_bytes(job_file)), source=job_file)
    return _run(job, run_dir, address, verbose, out or sys.stdout, callbacks)


def unfinished_run(job: Job) -> str:
    """The newest run folder of this job without a summary, started from the same job."""
    root = storage.join(storage.absolute(job.storage_path), job.name)
    runs = [r for r in storage.list_dirs(root) if not storage.exists(storage.join(root, r, SUMMARY_FILE))
            and storage.exists(storage.join(root, r, TUNE_FOLDER))]
    if not runs:
        raise UserError(f"--resume: no unfinished run of {job.name!r} under {root}. Run without --resume to start one.")
    run_dir = storage.join(root, runs[-1])
    if storage.read_bytes(storage.join(run_dir, "job.yaml")).decode() != to_yaml(job):
        raise UserError(f"--resume: the newest unfinished run, {run_dir}, was started from a different job "
                        f"(its job.yaml differs from this one). Resume it as it was with `finetune resume "
                        f"{run_dir}`, or run without --resume to start a new run.")
    return run_dir


def _run(job: Job, run_dir: str | None, address, verbose: bool, out, callbacks) -> dict:
    started = time.time()

    # 1. Everything that can be wrong with the input, before anything is written.
    from finetune import ray_cluster
    from finetune.job import check_inputs_exist, local_inputs

    check_inputs_exist(job, f"job {job.name!r}")
    from finetune.searchers import check_available

    check_available(job)

    # Ray starts first: file sources are read by Ray Data, and TensorFlow work runs in Ray workers,
    # so this driver never imports TensorFlow (it stays light on a cluster's head node).
    if job.dataset.embedded:
        # Embedded data needs no Ray: load it (scikit-learn's import takes a second or two) while
        # Ray starts its processes.
        loading = ThreadPoolExecutor(1).submit(load_data, job.dataset, job.seed, job.model.task)
    capacity = ray_cluster.connect(address, verbose=verbose, dashboard=job.executor == "ray_train")
    ray_cluster.check_reachable(storage.join(storage.absolute(job.storage_path), job.name), local_inputs(job),
                                capacity)
    import ray

    data = loading.result() if job.dataset.embedded else load_data(job.dataset, job.seed, job.model.task)
    check_fits_workers(data, job.resources.num_workers)
    from finetune.full_batch import check_data_fits, ignored_fields_note

    check_data_fits(job, data.streaming)
    handle = DataHandle(ray.put(data.without_test()))
    from finetune.evaluation import preflight_in_worker

    ray_cluster.run_in_worker(preflight_in_worker, job.model_dump(mode="json"), handle)
    num_trials = count_trials(job.search)
    concurrency = plan_concurrency(job, capacity, num_trials, streaming=data.streaming,
                                   local=capacity.started_here)

    # 2. The run folder: <storage_path>/<name>/<run id>/
    resuming = run_dir is not None
    if not resuming:
        run_dir = new_run_dir(job)
        storage.write_bytes(storage.join(run_dir, "job.yaml"), to_yaml(job).encode())
        storage.write_json(storage.join(run_dir, "classes.json"), data.classes)
    if data.skipped_rows:
        print(f"skipped {data.skipped_rows} images that do not decode (dataset.on_bad_image: skip)", file=out)
    print(
        f"{'resuming' if resuming else 'run'} {run_dir}\n{num_trials} trials, {concurrency} at a time, "
        f"search {reports.algorithm_name(job)}, "
        f"{job.resources.num_workers} worker(s) each ({job.executor}); Ray: {capacity.cpus:g} CPUs, "
        f"{capacity.gpus:g} GPUs, {capacity.nodes} node(s)",
        file=out, flush=True,
    )
    if ignored_fields_note(job):
        print(ignored_fields_note(job), file=out, flush=True)

    # 3. The search.
    progress = reports.make_progress_printer(job, num_trials, run_dir, out)
    if resuming:
        tuner = restore_tuner(job, run_dir, handle, [progress, *callbacks])
    else:
        tuner = create_tuner(job, run_dir, handle, concurrency, [progress, *callbacks])
    results = list(tuner.fit())

    # 4. What came of it.
    return finish_run(job, run_dir, results, data, started, out, capacity)


def new_run_dir(job: Job) -> str:
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
    run_dir = storage.join(storage.absolute(job.storage_path), job.name, run_id)
    storage.make_dirs(run_dir)
    return run_dir


def finish_run(job: Job, run_dir: str, results: list, data: LoadedData, started: float, out, capacity) -> dict:
    outcomes = reports.trial_outcomes(results, job, trial_failures(run_dir))
    rows = reports.metrics_rows(results, list(job.search.space))
    reports.write_parquet(reports.metrics_table(rows), storage.join(run_dir, METRICS_FILE))

    summary: dict = {
        "name": job.name,
        "run_dir": run_dir,
        "status": "finished",
        "algorithm": job.search.algorithm,
        "scheduler": job.search.scheduler.type,
        "metric": job.search.metric,
        "mode": job.search.mode,
        "num_trials": len(outcomes),
        "num_completed": sum(o.status == "completed" for o in outcomes),
        "num_stopped_early": sum(o.status == "stopped_early" for o in outcomes),
        "num_failed": sum(o.status == "failed" for o in outcomes),
        "best_trial_id": None,
        "best_epoch": None,
        "best_config": None,
        "best_metrics": None,
        "test_metrics": None,
        "model_path": None,
        "classes": data.classes,
        "data_fingerprint": data.fingerprint,
        "metrics_path": storage.join(run_dir, METRICS_FILE),
        "trials": [vars(o) for o in outcomes],
        "wall_seconds": round(time.time() - started, 1),
        "cluster": {"nodes": capacity.nodes, "cpus": capacity.cpus, "gpus": capacity.gpus,
                    "started_here": capacity.started_here},
        "versions": _versions(),
    }
    candidates = [o for o in outcomes if o.status != "failed" and o.best_metric is not None]
    if candidates:
        pick = max if job.search.mode == "max" else min
        best = pick(candidates, key=lambda o: o.best_metric)
        result = next(r for r in results if reports.result_trial_id(r) == best.trial_id)
        model_path = storage.join(run_dir, MODEL_FILE)
        best_row = copy_best_checkpoint(result, [r for r in rows if r["trial_id"] == best.trial_id],
                                        best.best_metric, job, run_dir, model_path)
        summary.update(
            best_trial_id=best.trial_id,
            best_epoch=best_row["epoch"],
            best_config=best.config,
            best_metrics={k: v for k, v in best_row.items() if isinstance(v, (int, float)) and not k.startswith("config.")},
            model_path=model_path,
            test_metrics=evaluate_on_test(model_path, data, job),
        )
    else:
        summary["status"] = "failed"
    storage.write_json(storage.join(run_dir, SUMMARY_FILE), summary)

    print("", file=out)
    reports.print_final_table(outcomes, job, out)
    print(
        f"\n{summary['num_trials']} trials: {summary['num_completed']} completed, "
        f"{summary['num_stopped_early']} stopped early, {summary['num_failed']} failed "
        f"in {summary['wall_seconds']:.0f}s",
        file=out,
    )
    failed = [o for o in outcomes if o.status == "failed"]
    reasons = list(dict.fromkeys(o.error for o in failed))  # each distinct reason once, in trial order
    if failed and candidates:
        print(f"{len(failed)} of {len(outcomes)} trials failed:", file=out)
        for reason in reasons:
            print(f"  - {reason}", file=out)
    if summary["best_trial_id"]:
        print(f"best: trial {reports.short_trial_name(summary['best_trial_id'])} epoch {summary['best_epoch']} "
              f"{job.search.metric} {summary['best_metrics'][job.search.metric]:.4f}; "
              f"test {_format_metrics(summary['test_metrics'])}", file=out)
        print(f"model: {summary['model_path']}", file=out)
    print(f"summary: {storage.join(run_dir, SUMMARY_FILE)}", file=out, flush=True)
    if not candidates:
        raise _no_model_error(run_dir, job, failed, reasons)
    return summary


def _no_model_error(run_dir: str, job: Job, failed: list, reasons: list[str]) -> RunFailedError:
    """The run produced no model: every reason once, and exit code 2 when only the job or its
    files can fix it."""
    user_errors = bool(failed) and all(o.failure_kind == USER_ERROR for o in failed)
    why = [f"  - {reason}" for reason in reasons] or [f"  - no trial reported {job.search.metric}"]
    if user_errors:
        fix = "Fix the job or the files it names, then run it again."
    elif any(o.failure_kind is None for o in failed):
        fix = f"Each trial's error.txt under {storage.join(run_dir, TUNE_FOLDER)} has the whole traceback."
    else:  # every loss became NaN or infinite
        fix = "Lower train.learning_rate (or its search range), or clip gradients with train.clipnorm."
    return RunFailedError("\n".join([f"run {run_dir}: every trial failed, so there is no model:", *why, fix]),
                          exit_code=UserError.exit_code if user_errors else 1)


def copy_best_checkpoint(result, trial_rows: list[dict], best_value: float, job: Job, run_dir: str,
                         destination: str) -> dict:
    """Copy the model of the trial's best epoch into the run folder and return that epoch's row.

    Tune keeps each trial's best checkpoint (in_trial), Ray Train keeps its own and names it in
    the reported metrics (ray_train). When epochs tie on the metric, the one kept is the latest."""
    from finetune.train_loop import MODEL_FILE as CHECKPOINT_MODEL
    from finetune.train_to_tune import CHECKPOINT_PATH_KEY

    metric = job.search.metric
    tied = sorted((r for r in trial_rows if r.get(metric) == best_value), key=lambda r: -r["epoch"])
    kept_by_tune = {m.get("epoch"): c.path for c, m in (result.best_checkpoints or [])}
    for row in tied:
        for path in (kept_by_tune.get(row["epoch"]), row.get(CHECKPOINT_PATH_KEY)):
            model = path and storage.beside(run_dir, f"{path.rstrip('/')}/{CHECKPOINT_MODEL}")
            if model and storage.exists(model):
                storage.copy_file(model, destination)
                return row
    raise RuntimeError(f"no checkpoint of trial {trial_rows[0]['trial_id']} with {metric} {best_value} is left")


def evaluate_on_test(model_path: str, data: LoadedData, job: Job) -> dict | None:
    """The best model scored on the held-out test split, in a Ray worker (see finetune.evaluation)."""
    if data.test is None:
        return None
    from finetune import ray_cluster
    from finetune.evaluation import evaluate_in_worker

    return ray_cluster.run_in_worker(evaluate_in_worker, model_path, job.model_dump(mode="json"), data.test,
                                     data.num_classes, data.input_shape)


def _format_metrics(metrics: dict | None) -> str:
    return "-" if not metrics else " ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("ray", "tensorflow", "keras", "pyarrow"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    return versions
