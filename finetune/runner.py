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
from contextlib import suppress

from finetune import reports, storage, tracking
from finetune.data import LoadedData, check_fits_workers, load_data
from finetune.errors import RunFailedError, StorageError, UserError
from finetune.failures import USER_ERROR, trial_failures
from finetune.job import Job, to_yaml
from finetune.ray_logs import RUN_LOG
from finetune.registry.runs import SUMMARY_FILE, run_status
from finetune.run_folders import write_driver_marker
from finetune.resources import plan_concurrency
from finetune.search_space import count_trials
from finetune.trial import DataHandle
from finetune.tuner import TUNE_FOLDER, create_tuner, restore_tuner

METRICS_FILE = "metrics.parquet"
MODEL_FILE = "model.keras"
EVALUATION_FILE = "evaluation.json"  # the best model's confusion matrix or residuals on the test split
INTERRUPTED = "interrupted"  # the status of a run stopped half-way (finetune.stopping)


def run_job(job: Job, address: str | None = None, verbose: bool = False, out=None,
            callbacks: tuple = (), resume: bool = False, progress: str = "plain", night=None) -> dict:
    """Run a job's whole search and return its summary (also written to summary.json).

    resume: continue the newest unfinished run of this job instead of starting a new one.
    callbacks: extra `ray.tune.Callback`s, for callers that watch trials as they run.
    progress: plain (a line per event), live (a view refreshed in place, for terminals) or quiet
    (only the final result).
    night: a `finetune.registry.nightly.Night`: the run id comes from its date and the data, and a
    night with nothing to do returns `{"status": "skipped", "reason": ...}` without a run."""
    out = out or sys.stdout
    job = pin_registry(job, out)
    run_dir = unfinished_run(job) if resume else None
    return _run(job, run_dir, address, verbose, out, callbacks, progress, night)


def pin_registry(job: Job, out) -> Job:
    """The job with its registry settled and its registry base pinned to one version, every
    registry check made: nothing of it waits for the end of the search."""
    from finetune.registry import promotion, references

    job = references.settle_registry(job)
    references.check_can_register(job)
    job, note = references.pin_base(job)
    promotion.check_champion(job)
    if note:
        print(note, file=out, flush=True)
    return job


def resume_run(run_dir: str, address: str | None = None, verbose: bool = False, out=None,
               callbacks: tuple = (), progress: str = "plain") -> dict:
    """Continue a run whose driver stopped (killed, lost its node): finished trials are kept,
    trials in flight restart from their last checkpoints, the rest start."""
    from finetune.job import validate_job_dict
    from finetune.job.safe_yaml import decode_utf8, load_yaml

    run_dir = storage.absolute(run_dir)
    job_file = storage.join(run_dir, "job.yaml")
    if not storage.exists(storage.join(run_dir, TUNE_FOLDER)) or not storage.exists(job_file):
        raise UserError(f"resume: {run_dir} is not a run folder (expected job.yaml and {TUNE_FOLDER}/ in it).")
    status = run_status(run_dir)
    if status in ("finished", "failed"):
        raise UserError(f"resume: run {run_dir} already ended (its {SUMMARY_FILE} says {status}); nothing to resume.")
    job = validate_job_dict(load_yaml(decode_utf8(storage.read_bytes(job_file))), source=job_file)
    return _run(job, run_dir, address, verbose, out or sys.stdout, callbacks, progress)


def unfinished_run(job: Job) -> str:
    """The newest run folder of this job without a summary, started from the same job."""
    root = storage.join(storage.absolute(job.storage_path), job.name)
    runs = [r for r in storage.list_dirs(root) if run_status(storage.join(root, r)) in (None, INTERRUPTED)
            and storage.exists(storage.join(root, r, TUNE_FOLDER))]
    if not runs:
        raise UserError(f"--resume: no unfinished run of {job.name!r} under {root}. Run without --resume to start one.")
    run_dir = storage.join(root, runs[-1])
    if storage.read_bytes(storage.join(run_dir, "job.yaml")).decode() != to_yaml(job):
        raise UserError(f"--resume: the newest unfinished run, {run_dir}, was started from a different job "
                        f"(its job.yaml differs from this one). Resume it as it was with `finetune resume "
                        f"{run_dir}`, or run without --resume to start a new run.")
    return run_dir


def _run(job: Job, run_dir: str | None, address, verbose: bool, out, callbacks, progress: str = "plain",
         night=None) -> dict:
    from finetune.errors import StopNow
    from finetune.stopping import RunStopper

    started = time.time()
    resuming = run_dir is not None
    made: list[str] = []  # the run folder, once this process has made it
    with RunStopper() as stopper:
        try:
            return _run_steps(job, run_dir, address, verbose, out, callbacks, progress, night, started, stopper, made)
        except StopNow as stop:
            raise _stopped_at_once(job, run_dir or next(iter(made), None), resuming, stop.signum) from None
        except _StoppedByStorage:
            raise
        except StorageError as error:  # one of the runner's own writes
            where = run_dir or next(iter(made), None)
            if where is not None and tune_statuses(where):
                raise _StoppedByStorage(where, str(error)) from None
            for folder in made:  # before the search: nothing worth keeping
                with suppress(OSError, StorageError):
                    storage.remove_tree(folder)
            raise


def _run_steps(job: Job, run_dir: str | None, address, verbose: bool, out, callbacks, progress: str, night,
               started: float, stopper, made: list[str]) -> dict:
    # 1. Everything that can be wrong with the input, before anything is written.
    from finetune import ray_cluster
    from finetune.job import check_inputs_exist, local_inputs

    check_inputs_exist(job, f"job {job.name!r}")
    tracking.check_available(job, f"job {job.name!r}")
    storage.check_writable(run_dir or storage.join(storage.absolute(job.storage_path), job.name))

    # Ray starts first: file sources are read by Ray Data, and TensorFlow work runs in Ray workers,
    # so this driver never imports TensorFlow (it stays light on a cluster's head node).
    if job.dataset.embedded:
        # Embedded data needs no Ray: load it (scikit-learn's import takes a second or two) while
        # Ray starts its processes.
        loading = ThreadPoolExecutor(1).submit(load_data, job.dataset, job.seed, job.model.task)
    capacity = ray_cluster.connect(address, verbose=verbose, dashboard=job.executor == "ray_train")
    stopper.install()  # ray.init put its own SIGTERM handler in place of ours
    ray_cluster.check_reachable(storage.join(storage.absolute(job.storage_path), job.name), local_inputs(job),
                                capacity)
    if job.registers:
        from finetune.registry.references import registry_root

        ray_cluster.check_reachable(registry_root(job), {}, capacity, field="registry")
    import ray

    data = loading.result() if job.dataset.embedded else load_data(job.dataset, job.seed, job.model.task)
    check_fits_workers(data, job.resources.num_workers)
    from finetune.full_batch import check_data_fits, ignored_fields_note

    check_data_fits(job, data.streaming)
    holdout = None
    if job.promote is not None and job.promote.holdout is not None:
        from finetune.data import load_holdout

        holdout = load_holdout(job.dataset, job.promote.holdout, job.seed, job.model.task, data.classes)
    run_id = None
    if night is not None:
        from finetune.registry import nightly

        plan = nightly.plan(job, night, data.fingerprint)
        print(plan.message, file=out, flush=True)
        if plan.run_id is None:
            return {"name": job.name, "status": "skipped", "reason": plan.message, "night": night.as_dict(job.name)}
        run_id = plan.run_id
    handle = DataHandle(ray.put(data.without_test()))
    from finetune.evaluation import preflight_in_worker

    ray_cluster.run_in_worker(preflight_in_worker, job.model_dump(mode="json"), handle)
    num_trials = count_trials(job.search)
    concurrency = plan_concurrency(job, capacity, num_trials, streaming=data.streaming,
                                   local=capacity.started_here)

    # 2. The run folder: <storage_path>/<name>/<run id>/
    resuming = run_dir is not None
    if not resuming and night is not None:
        from finetune.registry import nightly

        run_dir = nightly.claim_run_dir(job, run_id)
        if run_dir is None:  # a second start of the same night, a moment behind the first
            reason = f"nothing to do: another process started night {night.date} as {run_id} a moment ago"
            print(reason, file=out, flush=True)
            return {"name": job.name, "status": "skipped", "reason": reason, "night": night.as_dict(job.name)}
    if not resuming:
        run_dir = run_dir or new_run_dir(job)
        made.append(run_dir)
        storage.write_bytes(storage.join(run_dir, "job.yaml"), to_yaml(job).encode())
        storage.write_json(storage.join(run_dir, "classes.json"), data.classes)
    write_driver_marker(run_dir)  # this driver's host and pid: `finetune runs` tells running from interrupted
    RUN_LOG.attach(run_dir)  # what Ray and its workers print, unless --verbose (finetune.ray_logs)
    if data.skipped_rows:
        print(f"skipped {data.skipped_rows} images that do not decode (dataset.on_bad_image: skip)", file=out)
    if progress != "quiet":
        print(
            f"{'resuming' if resuming else 'run'} {run_dir}\n{num_trials} trials, {concurrency} at a time, "
            f"search {reports.algorithm_name(job)}, "
            f"{job.resources.num_workers} worker(s) each ({job.executor}); Ray: {capacity.cpus:g} CPUs, "
            f"{capacity.gpus:g} GPUs, {capacity.nodes} node(s)",
            file=out, flush=True,
        )
        if ignored_fields_note(job):
            print(ignored_fields_note(job), file=out, flush=True)

    # 3. The search. A signal or a refused write stops it with every trial's last checkpoint kept.
    views = progress_views(job, progress, num_trials, concurrency, run_dir, out)
    trackers = tracking.trial_trackers(job, run_dir)
    watching = [*views, *trackers, stopper.callback(run_dir), *callbacks]
    try:
        if resuming:
            tuner = restore_tuner(job, run_dir, handle, watching)
        else:
            tuner = create_tuner(job, run_dir, handle, concurrency, watching)
        stopper.searching = True
        try:
            results = list(tuner.fit())
        except Exception:
            reason = stopper.storage_failure or storage.refuses_writes(run_dir)
            if reason is None:
                raise
            # Tune fails on files that the full storage cut short (a trial's error file, read back
            # into the results): nothing more can be written, and the run resumes from Tune's state.
            raise _StoppedByStorage(run_dir, reason) from None
        stopper.searching = False
    finally:
        for view in views:  # a live view gives the terminal back, however the search ended
            getattr(view, "close", lambda: None)()

    # 4. What came of it.
    if stopper.stopping:
        raise finish_stopped(job, run_dir, results, data, started, out, capacity, stopper)
    return finish_run(job, run_dir, results, data, started, out, capacity, quiet=progress == "quiet",
                      trackers=trackers, holdout=holdout, night=night.as_dict(job.name) if night else None)


def progress_views(job: Job, progress: str, num_trials: int, concurrency: int, run_dir: str, out) -> list:
    """The Tune callback that shows the search as it runs: a live view, plain lines, or none."""
    if progress == "quiet":
        return []
    if progress == "live":
        from finetune.live_view import make_live_view

        return [make_live_view(job, num_trials, concurrency, run_dir, out)]
    return [reports.make_progress_printer(job, num_trials, run_dir, out)]


def new_run_dir(job: Job) -> str:
    """A run folder of its own, `<start time>-<4 hex digits>`, even for runs of the same job
    started in the same second: the folder is created exclusively, with a new suffix if taken."""
    root = storage.join(storage.absolute(job.storage_path), job.name)
    while True:
        run_dir = storage.join(root, time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2))
        if storage.make_new_dir(run_dir):
            return run_dir


def finish_run(job: Job, run_dir: str, results: list, data: LoadedData, started: float, out, capacity,
               quiet: bool = False, trackers: list = (), holdout=None, night: dict | None = None) -> dict:
    outcomes = reports.trial_outcomes(results, job, trial_failures(run_dir))
    rows = reports.metrics_rows(results, list(job.search.space))
    reports.write_parquet(reports.metrics_table(rows), storage.join(run_dir, METRICS_FILE))
    summary = _summary(job, run_dir, outcomes, data, started, capacity)
    summary.update(night=night, promotion=None)
    candidates = [o for o in outcomes if o.status != "failed" and o.best_metric is not None]
    if candidates:
        pick = max if job.search.mode == "max" else min
        best = pick(candidates, key=lambda o: o.best_metric)
        result = next(r for r in results if reports.result_trial_id(r) == best.trial_id)
        model_path = storage.join(run_dir, MODEL_FILE)
        best_row = copy_best_checkpoint(result, [r for r in rows if r["trial_id"] == best.trial_id],
                                        best.best_metric, job, run_dir, model_path)
        test_metrics, test_details = evaluate_on_test(model_path, data, job)
        if test_details is not None:  # the confusion matrix or the residuals, for the report
            storage.write_json(storage.join(run_dir, EVALUATION_FILE), test_details)
        summary.update(
            best_trial_id=best.trial_id,
            best_epoch=best_row["epoch"],
            best_config=best.config,
            best_metrics={k: v for k, v in best_row.items() if isinstance(v, (int, float)) and not k.startswith("config.")},
            model_path=model_path,
            test_metrics=test_metrics,
        )
        from finetune.registry.runs import write_run_manifest

        write_run_manifest(run_dir, job.name)
        if job.registers:
            from finetune.registry.promotion import register_and_judge

            summary["promotion"] = register_and_judge(job, run_dir, summary, data, holdout, night, out)
    else:
        summary["status"] = "failed"
    storage.write_json(storage.join(run_dir, SUMMARY_FILE), summary)
    from finetune.report import write_report

    report_path = write_report(run_dir)
    tracking.finish_trackers(trackers, summary, report_path)

    if not quiet:
        print("", file=out)
        reports.print_final_table(outcomes, job, out)
    print(
        f"{'' if quiet else chr(10)}{summary['num_trials']} trials: {summary['num_completed']} completed, "
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
    print(f"report: {report_path}", file=out)
    print(f"summary: {storage.join(run_dir, SUMMARY_FILE)}", file=out, flush=True)
    RUN_LOG.detach()
    if not candidates:
        raise _no_model_error(run_dir, job, failed, reasons)
    return summary


def finish_stopped(job: Job, run_dir: str, results: list, data: LoadedData, started: float, out, capacity,
                   stopper) -> Exception:
    """A search stopped half-way (finetune.stopping): write the partial metrics table and a summary
    whose status is `interrupted`, print what was kept, and return the error to exit with."""
    from finetune.errors import Interrupted
    from finetune.stopping import signal_name

    outcomes = reports.trial_outcomes(results, job, trial_failures(run_dir))
    unfinished = {trial_id for trial_id, status in tune_statuses(run_dir).items() if status not in ("TERMINATED", "ERROR")}
    for outcome in outcomes:
        if outcome.trial_id in unfinished:
            outcome.status = INTERRUPTED
    summary = _summary(job, run_dir, outcomes, data, started, capacity)
    why = f"storage refused a write: {stopper.storage_failure}" if stopper.storage_failure else signal_name(stopper.signum)
    summary.update(status=INTERRUPTED, stopped_by=why, num_planned=count_trials(job.search),
                   num_interrupted=sum(o.status == INTERRUPTED for o in outcomes))
    try:
        rows = reports.metrics_rows(results, list(job.search.space))
        reports.write_parquet(reports.metrics_table(rows), storage.join(run_dir, METRICS_FILE))
        storage.write_json(storage.join(run_dir, SUMMARY_FILE), summary)
    except StorageError:
        if not stopper.storage_failure:
            raise
    print("", file=out)
    reports.print_final_table(outcomes, job, out)
    ended = summary["num_completed"] + summary["num_stopped_early"] + summary["num_failed"]
    kept = (f"{ended} of {summary['num_planned']} trials had ended; {summary['num_interrupted']} stopped "
            "half-way and keep their last checkpoints")
    if stopper.storage_failure:
        return _StoppedByStorage(run_dir, stopper.storage_failure, kept)
    return Interrupted(f"{why}: run {run_dir} stopped; {kept}.\nsummary: {storage.join(run_dir, SUMMARY_FILE)} "
                       f"(status: {INTERRUPTED})\n{_resume_hint(run_dir)}", stopper.signum)


def _stopped_at_once(job: Job, run_dir: str | None, resuming: bool, signum: int) -> Exception:
    """A second signal, or one outside the search: what Tune last saved stays to resume from. A run
    folder this process made before the search started holds nothing worth keeping and goes."""
    from finetune.errors import Interrupted
    from finetune.stopping import signal_name

    name = signal_name(signum)
    if run_dir is None or not tune_statuses(run_dir):  # no experiment state saved yet: nothing to resume
        if run_dir is not None and not resuming:
            storage.remove_tree(run_dir)
        return Interrupted(f"{name}: stopped before the search started; nothing was kept.", signum)
    if run_status(run_dir) is None:
        with suppress(StorageError):
            storage.write_json(storage.join(run_dir, SUMMARY_FILE), {
                "name": job.name, "run_dir": run_dir, "status": INTERRUPTED, "stopped_by": f"{name}, at once",
                "metric": job.search.metric, "mode": job.search.mode, "num_planned": count_trials(job.search)})
    return Interrupted(f"{name}: run {run_dir} stopped at once; its trials keep the checkpoints Tune last saved.\n"
                       f"{_resume_hint(run_dir)}", signum)


class _StoppedByStorage(StorageError):
    """A run that storage stopped half-way, resumable once the storage takes writes again."""

    def __init__(self, run_dir: str, reason: str, kept: str = ""):
        hint = _resume_hint(run_dir, "once the storage takes writes again (free space, or fix the mount)")
        super().__init__(f"run {run_dir} stopped: storage refused a write under it ({reason}). "
                         f"{kept + '. ' if kept else ''}{hint}")


def _resume_hint(run_dir: str, when: str = "") -> str:
    return f"Resume it{' ' + when if when else ''} with: finetune resume {run_dir}"


def tune_statuses(run_dir: str) -> dict[str, str]:
    """trial id -> status in Tune's last saved experiment state (what a resume starts from); empty
    when Tune has saved none yet."""
    from finetune import _compat

    tune_dir = storage.join(run_dir, TUNE_FOLDER)
    snapshots = sorted(n for n in storage.list_files(tune_dir) if n.startswith("experiment_state-"))
    for name in reversed(snapshots):
        try:
            return _compat.trial_statuses_in_snapshot(storage.read_bytes(storage.join(tune_dir, name)))
        except (OSError, ValueError, KeyError):  # cut short by a full disk: the one before it
            continue
    return {}


def _summary(job: Job, run_dir: str, outcomes: list, data: LoadedData, started: float, capacity) -> dict:
    """What summary.json records of any run, before its best model is known."""
    return {
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


def evaluate_on_test(model_path: str, data: LoadedData, job: Job) -> tuple[dict | None, dict | None]:
    """The best model scored on the held-out test split, in a Ray worker (see finetune.evaluation):
    its metrics, and its confusion matrix (classification) or residuals (regression)."""
    if data.test is None:
        return None, None
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
