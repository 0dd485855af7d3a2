"""A job with relative paths, run from another working directory on a real local Ray: trials, whose
working directory Tune changes, and Ray Train workers read the same files the job file names; a
trial that meets a user error is attempted once."""

from __future__ import annotations

import io
import os

import keras
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO, write_job

from finetune.job import load_job
from finetune.runner import run_job

pytestmark = pytest.mark.ray


def make_project(folder) -> None:
    """What a user brings: a trained Keras 3 model with a layer named `features`, a Parquet table,
    and a job file beside them that names both by relative paths."""
    from finetune.data.embedded import digits_table

    (folder / "models").mkdir(parents=True)
    (folder / "data").mkdir()
    inputs = keras.Input((64,), name="pixels")
    features = keras.layers.Dense(32, activation="relu", name="features")(inputs)
    keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(features)).save(folder / "models" / "base.keras")
    pq.write_table(digits_table("pixels"), folder / "data" / "digits.parquet")


def job_text(executor: str, cut_at: list[str]) -> str:
    workers = "{num_workers: 2, cpus_per_worker: 1}" if executor == "ray_train" else "{num_workers: 1}"
    return f"""
name: relative-{executor}
seed: 0
dataset: {{source: data/digits.parquet, label: label}}
model:
  base: models/base.keras
  cut_at: features
  freeze: all
  head: {{units: [32]}}
train: {{epochs: 2, batch_size: 64, learning_rate: 1.0e-2}}
search:
  num_samples: 1
  scheduler: none
  space:
    model.cut_at: {{grid: {cut_at}}}
resources: {workers}
"""


class Attempts:
    """Counts, per trial, how often Tune started it and how often it restarted it."""

    @staticmethod
    def make(counts: dict):
        from ray.tune import Callback

        class _Counter(Callback):
            def on_trial_start(self, iteration, trials, trial, **info):
                counts.setdefault(trial.trial_id, {"started": 0, "recovered": 0})["started"] += 1

            def on_trial_recover(self, iteration, trials, trial, **info):
                counts[trial.trial_id]["recovered"] += 1

        return _Counter()


def train_workers_created() -> int:
    from ray.util.state import list_actors

    return sum(1 for a in list_actors(limit=10_000, raise_on_missing_output=False)
               if a.class_name == "RayTrainWorker")


@pytest.mark.parametrize("executor", ["in_trial", pytest.param("ray_train", marks=pytest.mark.slow)])
def test_relative_paths_from_another_directory_and_a_user_error_is_attempted_once(ray_session, tmp_path, monkeypatch,
                                                                                 executor):
    folder, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    make_project(folder)
    write_job(folder, job_text(executor, ["features", "nope"]))
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    job = load_job(os.path.join("..", "project", "job.yaml"))
    assert job.executor == executor
    workers_before = train_workers_created() if executor == "ray_train" else 0
    counts: dict = {}
    out = io.StringIO()
    summary = run_job(job, out=out, callbacks=[Attempts.make(counts)])

    # The trial that cuts the base at its real layer trained from the relative files.
    good = next(t for t in summary["trials"] if t["config"]["model.cut_at"] == "features")
    assert good["status"] == "completed" and good["epochs"] == 2, summary["trials"]
    assert summary["test_metrics"]["accuracy"] > 0.5
    # The other met a user error: failed once, with the reason, and was not retried.
    bad = next(t for t in summary["trials"] if t["config"]["model.cut_at"] == "nope")
    assert bad["status"] == "failed" and "model.cut_at: no layer 'nope'" in bad["error"]
    assert bad["failure_kind"] == "user_error"
    assert counts[bad["trial_id"]] == {"started": 1, "recovered": 0}
    if executor == "ray_train":  # Ray Train did not restart the failed trial's workers either
        assert train_workers_created() - workers_before == 2 * 2
    printed = out.getvalue()
    assert "1 of 2 trials failed:" in printed and printed.count("no layer 'nope'") == 3  # progress, table, reasons

    # The run folder is under the working directory's runs/, and its job.yaml holds absolute paths.
    run_dir = summary["run_dir"]
    assert run_dir.startswith(str(elsewhere / "runs" / job.name))
    recorded = yaml.safe_load(open(os.path.join(run_dir, "job.yaml")))
    assert recorded["model"]["base"] == str(folder / "models" / "base.keras")
    assert recorded["dataset"]["source"] == str(folder / "data" / "digits.parquet")
    assert recorded["storage_path"] == str(elsewhere / "runs")


@pytest.mark.slow
def test_a_relative_weights_file_and_image_folder_reach_the_trial(ray_session, tmp_path, monkeypatch):
    import shutil

    folder = tmp_path / "project"
    shutil.copytree(REPO / "data" / "digit-images", folder / "images")
    source = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3))
    source.save_weights(folder / "mobilenet.weights.h5")
    write_job(folder, """
name: relative-weights
dataset: {source: images, format: images, image_size: [32, 32], channels: 3}
model: {base: keras:MobileNetV3Small, weights: mobilenet.weights.h5, freeze: all, head: {units: [16]}}
train: {epochs: 1, batch_size: 64}
search: {num_samples: 1, scheduler: none}
""")
    monkeypatch.chdir(tmp_path)
    summary = run_job(load_job("project/job.yaml"), out=io.StringIO())
    assert summary["num_failed"] == 0 and summary["trials"][0]["epochs"] == 1
    recorded = yaml.safe_load(open(os.path.join(summary["run_dir"], "job.yaml")))
    assert recorded["model"]["weights"] == str(folder / "mobilenet.weights.h5")
    # The trial's base holds the file's weights, frozen: the best model's base is that file's network.
    model = keras.models.load_model(summary["model_path"])
    network = next(layer for layer in model.get_layer("base").layers if isinstance(layer, keras.Model))
    for expected, loaded in zip(source.get_weights(), network.get_weights()):
        assert (expected == loaded).all()
