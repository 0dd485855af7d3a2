"""Records of a search outside its run folder: TensorBoard (written by each trial's rank-0 worker,
`TrialBoard`) and MLflow (written by the driver from Tune's events, `MlflowTracker`).

TensorBoard: `<run>/tensorboard/<trial id>/` holds each trial's per-epoch scalars and the HParams
plugin's data (the experiment's hyperparameters and metrics, and the trial's values), so
`tensorboard --logdir <run>` compares trials in its HParams table and parallel coordinates.

MLflow: an experiment per job (tracking.mlflow_experiment), a parent run per search tagged with
its run folder, and under it one run per trial with its sampled parameters and per-epoch metrics;
the best model is an artifact of the best trial's run, and the parent holds the test metrics and
report.html.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time

from finetune import storage
from finetune.errors import JobError, Problem
from finetune.job import Job
from finetune.job.schema import reported_metrics

TENSORBOARD_FOLDER = "tensorboard"
EXTRA_SCALARS = ("learning_rate", "epoch_seconds")  # reported besides the job's losses and metrics


def check_available(job: Job, source: str) -> None:
    """A JobError, before anything starts, when tracking asks for a library that is not installed."""
    problems = []
    if job.tracking.tensorboard is True and importlib.util.find_spec("tensorboard") is None:
        problems.append(Problem("tracking.tensorboard", True, "expected the tensorboard package: "
                                "pip install 'finetune[tensorboard]', or set tracking.tensorboard: auto"))
    if job.tracking.mlflow and importlib.util.find_spec("mlflow") is None:
        problems.append(Problem("tracking.mlflow", job.tracking.mlflow,
                                "expected the mlflow package: pip install 'finetune[mlflow]'"))
    if problems:
        raise JobError(source, problems)


def scalar_names(job: Job) -> list[str]:
    return [*reported_metrics(job.train.metrics), *EXTRA_SCALARS]


def hparam_values(sampled: dict, seed: int) -> dict:
    """A trial's sampled values as TensorBoard and MLflow take them: numbers, booleans and text
    (a list such as model.head.units [64] becomes its JSON text)."""
    values = {path: value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
              for path, value in sampled.items() if value is not None}
    return {**values, "seed": seed}


# --- TensorBoard, in the trial ----------------------------------------------------------------------


def tensorboard_enabled(job: Job, run_dir: str) -> bool:
    setting = job.tracking.tensorboard
    if setting is False or not storage.is_local(run_dir):
        return False
    return importlib.util.find_spec("tensorboard") is not None


class TrialBoard:
    """A trial's TensorBoard writer (rank 0 only): the HParams experiment and this trial's values
    once, then each epoch's scalars. The HParams plugin finds the experiment in any run folder of
    the log folder, so each trial writing the same one needs no writer in the driver (which has no
    TensorFlow)."""

    def __init__(self, job: Job, run_dir: str, trial_id: str, sampled: dict, seed: int):
        import tensorflow as tf
        from tensorboard.plugins.hparams import api as hp

        self.names = scalar_names(job)
        self.tf = tf
        folder = os.path.join(run_dir.removeprefix("file://"), TENSORBOARD_FOLDER, trial_id)
        self.writer = tf.summary.create_file_writer(folder)
        values = hparam_values(sampled, seed)
        metrics = [hp.Metric(name, display_name=name) for name in reported_metrics(job.train.metrics)]
        with self.writer.as_default():
            hp.hparams_config(hparams=[hp.HParam(name) for name in values], metrics=metrics)
            hp.hparams(values, trial_id=trial_id)
        self.writer.flush()

    def epoch(self, epoch: int, metrics: dict) -> None:
        with self.writer.as_default():
            for name in self.names:
                value = metrics.get(name)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.tf.summary.scalar(name, value, step=epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


# --- MLflow, in the driver ----------------------------------------------------------------------------


def trial_trackers(job: Job, run_dir: str) -> list:
    """The Tune callbacks that record trials elsewhere: MLflow's, when tracking.mlflow is set."""
    return [make_mlflow_tracker(job, run_dir)] if job.tracking.mlflow else []


def finish_trackers(trackers: list, summary: dict, report_path: str | None = None) -> None:
    for tracker in trackers:
        tracker.finish(summary, report_path)


def mlflow_uri(value: str) -> str:
    """A tracking URI as given (sqlite:///..., http://..., databricks); a local path names an SQLite
    database file, made with its folder if need be. MLflow 3 refuses its old folder store unless
    MLFLOW_ALLOW_FILE_STORE is set (mlflow/store/tracking/file_store.py); `file://` URIs still
    reach it that way."""
    if "://" in value or value == "databricks" or value.startswith("databricks:"):
        return value
    os.makedirs(os.path.dirname(os.path.abspath(value)), exist_ok=True)
    return f"sqlite:///{os.path.abspath(value)}"


def mirror_alias(uri: str, name: str, alias: str, version: str) -> str:
    """Point MLflow's alias `alias` of the registered model `name` at the MLflow version that
    mirrors our `version` (tagged finetune.version when the run registered it), as `finetune
    models promote|rollback` just moved ours. Our registry stays the one that decides, so a mirror
    that cannot follow is said, not raised. Returns one line for the user."""
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError:
        return (f"warning: MLflow's {name}@{alias} not moved: the version's job tracks to MLflow ({uri}) but mlflow "
                "is not installed here; pip install 'finetune[mlflow]' and promote again to mirror it.")
    client = MlflowClient(tracking_uri=mlflow_uri(uri))
    try:
        mirrored = [v for v in client.search_model_versions(f"name = '{name}'")
                    if v.tags.get("finetune.version") == version]
        if not mirrored:
            return (f"warning: MLflow's {name}@{alias} not moved: {uri} has no version of {name} tagged "
                    f"finetune.version={version} (its run did not mirror it).")
        target = max(mirrored, key=lambda v: int(v.version))
        client.set_registered_model_alias(name, alias, target.version)
    except MlflowException as error:
        return f"warning: MLflow's {name}@{alias} not moved: {error.message}"
    return f"MLflow: {name}@{alias} -> MLflow version {target.version} (ours {version})"


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside an SQLite database, in mlflow-artifacts/
    (MLflow's own default is ./mlruns of whatever folder the driver runs in); a server decides
    for itself (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    return "file://" + os.path.join(os.path.dirname(uri.removeprefix("sqlite:///")), "mlflow-artifacts")


def make_mlflow_tracker(job: Job, run_dir: str):
    from ray.tune import Callback

    class MlflowTracker(Callback):
        """Each trial an MLflow run under the search's parent run; found again on resume by the
        tags finetune.run_dir and finetune.trial_id."""

        def __init__(self):
            self.uri = mlflow_uri(job.tracking.mlflow)
            self.experiment_name = job.tracking.mlflow_experiment or job.name
            self.runs: dict[str, str] = {}  # trial id -> MLflow run id
            self.parent: str | None = None
            self._client = None

        def __getstate__(self):  # Tune pickles its callbacks; the client's store connection stays here
            return {**self.__dict__, "_client": None}

        @property
        def client(self):
            if self._client is None:
                from mlflow.tracking import MlflowClient

                self._client = MlflowClient(tracking_uri=self.uri)
            return self._client

        def setup(self, **info):
            self._parent_run()

        def _experiment_id(self) -> str:
            found = self.client.get_experiment_by_name(self.experiment_name)
            if found:
                return found.experiment_id
            return self.client.create_experiment(self.experiment_name, artifact_location=artifact_location(self.uri))

        def _parent_run(self) -> str:
            if self.parent is None:
                experiment = self._experiment_id()
                existing = self.client.search_runs(
                    [experiment], filter_string=f"tags.`finetune.run_dir` = '{run_dir}' and tags.`finetune.kind` = 'search'")
                if existing:
                    self.parent = existing[0].info.run_id
                else:
                    run = self.client.create_run(experiment, run_name=os.path.basename(run_dir.rstrip("/")), tags={
                        "finetune.run_dir": run_dir, "finetune.kind": "search", "finetune.job": job.name})
                    self.parent = run.info.run_id
                    self._log_params(self.parent, {
                        "job": job.name, "seed": job.seed, "train.epochs": job.train.epochs, "metric": job.search.metric,
                        "mode": job.search.mode, "num_samples": job.search.num_samples,
                        "scheduler": job.search.scheduler.type, "model.base": job.model.base})
            return self.parent

        def _trial_run(self, trial) -> str:
            trial_id = trial.trial_id
            if trial_id not in self.runs:
                parent = self._parent_run()
                experiment = self.client.get_run(parent).info.experiment_id
                existing = self.client.search_runs([experiment], filter_string=(
                    f"tags.`mlflow.parentRunId` = '{parent}' and tags.`finetune.trial_id` = '{trial_id}'"))
                if existing:
                    self.runs[trial_id] = existing[0].info.run_id
                else:
                    from finetune.reports import short_trial_name

                    run = self.client.create_run(experiment, run_name=f"trial {short_trial_name(trial_id)}", tags={
                        "mlflow.parentRunId": parent, "finetune.trial_id": trial_id, "finetune.kind": "trial"})
                    self.runs[trial_id] = run.info.run_id
                    self._log_params(run.info.run_id, hparam_values(trial.config.get("space", {}),
                                                                    trial.config.get("seed")))
            return self.runs[trial_id]

        def _log_params(self, run_id: str, values: dict) -> None:
            from mlflow.entities import Param

            self.client.log_batch(run_id, params=[Param(str(k), str(v)) for k, v in values.items()])

        def on_trial_start(self, iteration, trials, trial, **info):
            self._trial_run(trial)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            from mlflow.entities import Metric

            stamp, epoch = int(time.time() * 1000), int(result.get("epoch") or 0)
            metrics = [Metric(name, float(result[name]), stamp, epoch) for name in scalar_names(job)
                       if isinstance(result.get(name), (int, float)) and math.isfinite(result[name])]
            self.client.log_batch(self._trial_run(trial), metrics=metrics)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.client.set_terminated(self._trial_run(trial), status="FINISHED")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.client.set_terminated(self._trial_run(trial), status="FAILED")

        def finish(self, summary: dict, report_path: str | None) -> None:
            """After the search: each trial's final status, the test metrics, the best model in the best
            trial's run, and report.html in the parent run."""
            from mlflow.entities import Metric

            parent = self._parent_run()
            stamp = int(time.time() * 1000)
            for outcome in summary["trials"]:
                run_id = self.runs.get(outcome["trial_id"])
                if run_id:
                    self.client.set_tag(run_id, "finetune.status", outcome["status"])
                    if outcome.get("error"):
                        self.client.set_tag(run_id, "finetune.error", outcome["error"][:5000])
            metrics = [Metric(f"test_{k}", float(v), stamp, 0) for k, v in (summary.get("test_metrics") or {}).items()]
            metrics += [Metric(f"best_{job.search.metric}", float(summary["best_metrics"][job.search.metric]), stamp, 0)] \
                if summary.get("best_metrics") else []
            self.client.log_batch(parent, metrics=metrics)
            self.client.set_tag(parent, "finetune.status", summary["status"])
            best = self.runs.get(summary.get("best_trial_id") or "")
            if best and summary.get("model_path") and storage.is_local(summary["model_path"]):
                self.client.log_artifact(best, summary["model_path"].removeprefix("file://"), artifact_path="model")
                self.client.set_tag(parent, "finetune.best_trial_run", best)
            if report_path and storage.is_local(report_path):
                self.client.log_artifact(parent, report_path.removeprefix("file://"))
            promotion = summary.get("promotion") or {}
            if best and promotion.get("version") and best in self.runs.values():
                self._mirror_registry(promotion, best)
            self.client.set_terminated(parent, status="FINISHED" if summary["status"] == "finished" else "FAILED")

        def _mirror_registry(self, promotion: dict, best_run: str) -> None:
            """The version the run registered, as a version of the MLflow registered model of the same
            name (its source the best trial's model artifact, tagged with our version), and the alias
            the gate moved, moved there too (MLflow's aliases, set_registered_model_alias). Our
            registry stays the one that decides: MLflow numbers its versions itself, so
            `finetune.version` says which of ours each is."""
            from mlflow.exceptions import MlflowException

            name = promotion["name"]
            try:
                self.client.create_registered_model(name, tags={"finetune.registry": str(promotion.get("registry"))})
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            mirrored = self.client.create_model_version(name, source=f"runs:/{best_run}/model", run_id=best_run, tags={
                "finetune.version": promotion["version"], "finetune.decision": str(promotion.get("decision"))})
            if promotion.get("promoted"):
                self.client.set_registered_model_alias(name, job.promote.alias, mirrored.version)

    return MlflowTracker()
