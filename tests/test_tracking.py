"""Tracking settings and the run log, on plain values and real files (no Ray)."""

from __future__ import annotations

from conftest import write_job

from finetune.job import load_job
from finetune.ray_logs import RunLog, worker_output
from finetune.tracking import hparam_values, mlflow_uri


def test_an_mlflow_path_is_an_sqlite_file_beside_the_job_and_uris_stay(tmp_path):
    job = load_job(write_job(tmp_path, "name: t\ntracking: {mlflow: tracking/mlflow.db}\n"))
    assert job.tracking.mlflow == str(tmp_path / "tracking" / "mlflow.db")
    assert mlflow_uri(job.tracking.mlflow) == f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}"
    assert (tmp_path / "tracking").is_dir()
    for uri in ("sqlite:///x.db", "http://127.0.0.1:5000", "databricks"):
        assert mlflow_uri(uri) == uri
        assert load_job(write_job(tmp_path, f"name: t\ntracking: {{mlflow: '{uri}'}}\n")).tracking.mlflow == uri


def test_hyperparameters_are_numbers_booleans_or_text():
    values = hparam_values({"train.learning_rate": 0.01, "model.head.units": [32], "train.optimizer": "sgd",
                            "train.optimizer_args.momentum": None}, seed=7)
    assert values == {"train.learning_rate": 0.01, "model.head.units": "[32]", "train.optimizer": "sgd", "seed": 7}


def test_the_run_log_holds_lines_until_the_run_folder_exists_then_appends(tmp_path):
    log = RunLog()
    log.write_line("before the folder")
    log.attach(str(tmp_path))
    log.write_line("during the run")
    log.detach()
    log.write_line("held for the next run")
    assert (tmp_path / "ray.log").read_text() == "before the folder\nduring the run\n"
    second = tmp_path / "second"
    second.mkdir()
    log.attach(str(second))
    log.detach()
    assert (second / "ray.log").read_text() == "held for the next run\n"


def test_worker_output_names_its_process_and_drops_the_autoscalers_status_table(tmp_path, monkeypatch):
    from finetune import ray_logs

    log = RunLog()
    monkeypatch.setattr(ray_logs, "RUN_LOG", log)
    log.attach(str(tmp_path))
    worker_output({"pid": 12, "ip": "127.0.0.1", "is_err": True, "task_name": "preflight_in_worker",
                   "lines": ["I0000 cuda_platform.cc:52] failed call to cuInit"]})
    worker_output({"pid": "autoscaler", "ip": "127.0.0.1", "is_err": False,
                   "lines": ["======== Autoscaler status ========", ":event_summary:Adding 1 node(s)"]})
    log.detach()
    assert (tmp_path / "ray.log").read_text().splitlines() == [
        "(preflight_in_worker pid=12, ip=127.0.0.1) stderr: I0000 cuda_platform.cc:52] failed call to cuInit",
        "(pid=autoscaler, ip=127.0.0.1) stdout: :event_summary:Adding 1 node(s)"]
