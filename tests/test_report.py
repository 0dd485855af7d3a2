"""What a run shows after it ends, from real small runs on a real local Ray: report.html (opened
in a real headless Chromium), `finetune runs`, `show` and `report`, the TensorBoard event files
and the MLflow runs (a real local sqlite store, read back with MLflow's client).

Two runs feed every test of this module: a classification search of four trials that ASHA prunes,
and a regression job of one trial. The all-failed run's report is checked in tests/test_cli.py."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from browser import chromium_path, visit
from conftest import write_job

from finetune.job import load_job
from finetune.reports import short_trial_name
from finetune.runner import run_job

pytestmark = pytest.mark.ray

PLOTS = ("curves", "best_trial", "parameters", "importance", "test")


@pytest.fixture(scope="module")
def runs(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    mlflow_uri = f"sqlite:///{root / 'mlflow.db'}"
    search = write_job(root, f"""
name: tiny
seed: 1
storage_path: {root / 'runs'}
dataset: {{source: sklearn:digits, split: {{validation: 0.2, test: 0.2}}}}
model: {{base: builtin:small_cnn, head: {{units: [32], dropout: 0.1}}}}
train: {{epochs: 4, batch_size: 64, learning_rate: 3.0e-3}}
search:
  num_samples: 4
  scheduler: {{type: asha, grace_period: 1, reduction_factor: 2}}
  space:
    train.learning_rate: {{loguniform: [1.0e-4, 3.0e-2]}}
    model.head.units: {{choice: [[16], [32]]}}
resources: {{num_workers: 1}}
tracking: {{mlflow: mlflow.db}}   # an SQLite file beside the job file
promote: {{}}                      # registers v1 and, with no champion yet, makes it the champion
""", "search.yaml")
    regression = write_job(root, f"""
name: diabetes
storage_path: {root / 'runs'}
dataset: {{source: sklearn:diabetes}}
model: {{base: builtin:mlp, task: regression, head: {{units: [16]}}}}
train: {{epochs: 3, batch_size: 32, learning_rate: 1.0e-2, loss: mse, metrics: [mae]}}
search: {{metric: val_loss, mode: min, num_samples: 1, scheduler: none}}
resources: {{num_workers: 1}}
""", "regression.yaml")
    summaries = {}
    for name, job_file in (("search", search), ("regression", regression)):
        summaries[name] = run_job(load_job(job_file), out=io.StringIO())
    return {"root": root, "mlflow": mlflow_uri, **summaries}


def run_dir(runs, name: str) -> Path:
    return Path(runs[name]["run_dir"])


def test_the_report_names_every_trial_and_holds_every_plot(runs):
    folder = run_dir(runs, "search")
    page = (folder / "report.html").read_text()
    for trial in runs["search"]["trials"]:
        assert trial["trial_id"] in page
        assert trial["status"].replace("_", " ") in page
    assert runs["search"]["num_stopped_early"] >= 1  # ASHA stopped some: the curves mark where
    assert page.count("data:image/png;base64,") == len(PLOTS)
    for plot in PLOTS:
        png = (folder / "plots" / f"{plot}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000, plot
    assert "fANOVA" in page and "confusion" in page.lower()
    assert runs["search"]["data_fingerprint"]["sha256"] in page and "tensorflow" in page


def test_the_confusion_matrix_counts_every_test_row(runs):
    folder = run_dir(runs, "search")
    evaluation = json.loads((folder / "evaluation.json").read_text())
    counts = evaluation["counts"]
    assert len(counts) == 10 and all(len(row) == 10 for row in counts)
    assert sum(map(sum, counts)) == runs["search"]["data_fingerprint"]["split_rows"]["test"]
    correct = sum(counts[i][i] for i in range(10)) / sum(map(sum, counts))
    assert correct == pytest.approx(runs["search"]["test_metrics"]["accuracy"], abs=1e-6)


def test_parameter_importance_covers_the_searched_parameters(runs):
    from finetune.report import parameter_importance
    from finetune.run_folders import read_run

    importance = parameter_importance(read_run(runs["search"]["run_dir"]))
    assert set(importance) == {"train.learning_rate", "model.head.units"}
    assert sum(importance.values()) == pytest.approx(1.0, abs=1e-6)


def test_a_one_trial_regression_run_has_residuals_and_says_why_there_is_no_importance(runs):
    folder = run_dir(runs, "regression")
    page = (folder / "report.html").read_text()
    evaluation = json.loads((folder / "evaluation.json").read_text())
    assert evaluation["kind"] == "residuals" and len(evaluation["true"]) == len(evaluation["predicted"]) > 50
    assert "Residuals (test split)" in page and (folder / "plots" / "test.png").exists()
    assert "Parameter importance needs at least two trials" in page
    assert "every trial trained the same configuration" in page
    assert runs["regression"]["trials"][0]["trial_id"] in page


@pytest.mark.skipif(chromium_path() is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_the_report_renders_in_a_real_browser_with_no_console_error_and_no_network(runs, tmp_path):
    folder = run_dir(runs, "search")
    shot = Path(os.environ.get("FINETUNE_REPORT_SCREENSHOT", tmp_path / "report.png"))
    seen = visit(folder / "report.html", screenshot=shot)
    assert seen.console == []
    assert seen.requests == [(folder / "report.html").as_uri()]  # the page itself, nothing else
    assert len(seen.images) == len(PLOTS)
    for image in seen.images:
        assert image["complete"] and image["naturalWidth"] >= 400 and image["naturalHeight"] >= 250, image
    assert seen.title.startswith("tiny ")
    for trial in runs["search"]["trials"]:
        assert f"{short_trial_name(trial['trial_id'])} {trial['trial_id']}" in seen.text
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 50_000


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "finetune", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_runs_and_show_list_and_describe_the_runs_from_another_folder(runs, tmp_path):
    storage = os.path.relpath(runs["root"] / "runs", tmp_path)
    listing = cli("runs", "--storage-path", storage, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["job", "run", "state", "trials", "best", "wall", "folder"]
    assert any(line.startswith("diabetes ") and " finished " in line and "val_loss" in line for line in lines)
    assert any(line.startswith("tiny ") and " finished " in line and " 4 " in line for line in lines)
    only = cli("runs", "tiny", "--storage-path", storage, cwd=tmp_path)
    assert only.returncode == 0 and "diabetes" not in only.stdout and "tiny" in only.stdout
    shown = cli("show", os.path.relpath(runs["search"]["run_dir"], tmp_path), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert f"run {run_dir(runs, 'search').name} of job tiny: finished" in shown.stdout
    assert "test: accuracy" in shown.stdout and "report: " in shown.stdout and "best: trial" in shown.stdout
    missing = cli("show", "nowhere", cwd=tmp_path)
    assert missing.returncode == 2 and "is not a run folder" in missing.stderr and "Traceback" not in missing.stderr
    absent = cli("runs", "nope", "--storage-path", storage, cwd=tmp_path)
    assert absent.returncode == 2 and "no runs of 'nope'" in absent.stderr


def test_report_rewrites_the_report_of_a_run_with_no_summary_yet(runs, tmp_path):
    """What a killed or still-running driver leaves: no summary, no metrics.parquet, no test
    evaluation; the trials come from Tune's result.json files."""
    copy = tmp_path / "copy"
    shutil.copytree(run_dir(runs, "search"), copy)
    for name in ("summary.json", "metrics.parquet", "evaluation.json", "report.html"):
        (copy / name).unlink()
    result = cli("report", "copy", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    page = (copy / "report.html").read_text()
    assert "no summary yet" in page
    for trial in runs["search"]["trials"]:
        assert trial["trial_id"] in page
    assert page.count("data:image/png;base64,") == 4  # no test evaluation yet
    assert "There is no test evaluation" in page
    shown = cli("show", "copy", cwd=tmp_path)
    assert shown.returncode == 0 and "best so far" in shown.stdout
    # Its driver (this test process, here) is alive: running. Once the driver is gone: interrupted.
    assert "run copy of job tiny: running" in shown.stdout
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    driver = json.loads((copy / "driver.json").read_text())
    (copy / "driver.json").write_text(json.dumps({**driver, "pid": int(gone.stdout)}))
    assert "run copy of job tiny: interrupted" in cli("show", "copy", cwd=tmp_path).stdout


def test_each_trial_wrote_its_scalars_and_hparams_for_tensorboard(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    board = run_dir(runs, "search") / "tensorboard"
    trials = {t["trial_id"]: t for t in runs["search"]["trials"]}
    assert sorted(p.name for p in board.iterdir()) == sorted(trials)
    for trial_id, trial in trials.items():
        events = EventAccumulator(str(board / trial_id), size_guidance={"tensors": 0})
        events.Reload()
        tags = events.Tags()["tensors"]
        for name in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
            assert name in tags
        steps = [e.step for e in events.Tensors("val_accuracy")]
        assert steps == list(range(1, trial["epochs"] + 1))
        content = events.PluginTagToContent("hparams")
        assert set(content) == {"_hparams_/experiment", "_hparams_/session_start_info"}
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        values = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.session_start_info.hparams.items()}
        assert values["train.learning_rate"] == pytest.approx(trial["config"]["train.learning_rate"])
        assert values["model.head.units"] == json.dumps(trial["config"]["model.head.units"])


def test_each_trial_is_an_mlflow_run_under_the_search_with_the_best_model_as_an_artifact_and_the_champion(runs):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=runs["mlflow"])
    experiment = client.get_experiment_by_name("tiny")
    found = client.search_runs([experiment.experiment_id])
    parents = [r for r in found if r.data.tags.get("finetune.kind") == "search"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags["finetune.run_dir"] == runs["search"]["run_dir"]
    assert parent.data.metrics["test_accuracy"] == pytest.approx(runs["search"]["test_metrics"]["accuracy"])
    assert "report.html" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    trials = {r.data.tags["finetune.trial_id"]: r for r in found if r.data.tags.get("finetune.kind") == "trial"}
    assert set(trials) == {t["trial_id"] for t in runs["search"]["trials"]}
    for outcome in runs["search"]["trials"]:
        run = trials[outcome["trial_id"]]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["finetune.status"] == outcome["status"] and run.info.status == "FINISHED"
        assert float(run.data.params["train.learning_rate"]) == pytest.approx(outcome["config"]["train.learning_rate"])
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert sorted(m.step for m in history) == list(range(1, outcome["epochs"] + 1))
    # Artifacts beside the database, not in ./mlruns of the folder the run started from.
    assert experiment.artifact_location == f"file://{runs['root'] / 'mlflow-artifacts'}"
    assert (runs["root"] / "mlflow-artifacts").is_dir() and not (Path.cwd() / "mlruns").exists()
    best = trials[runs["search"]["best_trial_id"]]
    assert [a.path for a in client.list_artifacts(best.info.run_id, "model")] == ["model/model.keras"]
    assert parent.data.tags["finetune.best_trial_run"] == best.info.run_id

    # The registry's new version and the champion alias the gate moved are mirrored in MLflow's
    # model registry, pointing at the best trial's model.
    promotion = runs["search"]["promotion"]
    assert promotion["version"] == "v1" and promotion["promoted"]
    champion = client.get_model_version_by_alias("tiny", "champion")
    assert champion.run_id == best.info.run_id and champion.source == f"runs:/{best.info.run_id}/model"
    assert champion.tags["finetune.version"] == "v1" and champion.tags["finetune.decision"] == "promoted"


def test_an_alias_moved_by_hand_moves_in_mlflow_as_well(runs, tmp_path):
    """`finetune models promote` (and rollback) move MLflow's alias of the mirrored version too,
    found through the tracking URI in the version's own job file."""
    from mlflow.tracking import MlflowClient

    registry = runs["search"]["promotion"]["registry"]
    moved = cli("models", "promote", "tiny", "v1", "--alias", "staging", "--reason", "canary",
                "--registry", registry, cwd=tmp_path)
    assert moved.returncode == 0, moved.stderr
    assert "tiny: staging - -> v1 (canary)" in moved.stdout and "MLflow: tiny@staging -> MLflow version" in moved.stdout
    assert "warning" not in moved.stderr
    client = MlflowClient(tracking_uri=runs["mlflow"])
    staging = client.get_model_version_by_alias("tiny", "staging")
    assert staging.tags["finetune.version"] == "v1"
    assert staging.version == client.get_model_version_by_alias("tiny", "champion").version


def test_the_workers_output_went_to_the_run_log_not_the_screen(runs):
    log = run_dir(runs, "search") / "ray.log"
    assert log.exists()
