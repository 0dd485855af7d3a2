"""`run_job` end to end on a real local Ray: real trials train real Keras models on digits."""

from __future__ import annotations

import io
import json
import os

import pyarrow.parquet as pq
import pytest
from conftest import KillOnce, write_job

from finetune.job import load_job
from finetune.runner import run_job

pytestmark = pytest.mark.ray


def run(tmp_path, text: str, overrides=(), callbacks=()):
    job = load_job(write_job(tmp_path, text), list(overrides))
    out = io.StringIO()
    summary = run_job(job, out=out, callbacks=callbacks)
    return summary, out.getvalue()


def test_in_trial_run_writes_every_output(ray_session, tmp_path, tiny_job_text):
    summary, printed = run(tmp_path, tiny_job_text)
    run_dir = summary["run_dir"]
    assert run_dir.startswith(str(tmp_path / "runs" / "tiny"))
    on_disk = json.load(open(os.path.join(run_dir, "summary.json")))
    assert on_disk["best_config"] == summary["best_config"]
    for key in ("best_config", "best_metrics", "test_metrics", "model_path", "num_trials",
                "num_stopped_early", "num_failed"):
        assert on_disk[key] is not None, key
    assert (summary["num_trials"], summary["num_failed"], summary["num_stopped_early"]) == (2, 0, 0)
    assert set(summary["best_config"]) == {"train.learning_rate"}
    assert summary["classes"] == [str(d) for d in range(10)]

    table = pq.read_table(os.path.join(run_dir, "metrics.parquet")).to_pylist()
    assert len(table) == 6  # 2 trials x 3 epochs, each once
    assert {(r["trial_id"], r["epoch"]) for r in table} == {(t["trial_id"], e) for t in summary["trials"] for e in (1, 2, 3)}
    for column in ("loss", "accuracy", "val_loss", "val_accuracy", "config.train.learning_rate"):
        assert all(r[column] is not None for r in table), column

    # The best model loads in plain Keras and scores what the summary says on the test split.
    import keras

    from finetune.data import load_data

    model = keras.models.load_model(summary["model_path"])
    data = load_data(load_job(os.path.join(run_dir, "job.yaml")).dataset, seed=1)
    scores = model.evaluate(data.test.features, data.test.labels, verbose=0, return_dict=True)
    assert scores["accuracy"] == pytest.approx(summary["test_metrics"]["accuracy"], abs=1e-6)
    assert scores["accuracy"] > 0.5  # well above chance (0.1) after 3 epochs

    assert "trial 1/2 started" in printed and "epoch 3/3" in printed
    assert "best val_accuracy" in printed and "summary:" in printed


def test_asha_stops_weak_trials_early(ray_session, tmp_path, tiny_job_text):
    summary, printed = run(tmp_path, tiny_job_text, [
        "search.num_samples=6", "train.epochs=6",
        "search.scheduler={type: asha, grace_period: 1, reduction_factor: 2}",
        "search.space.train.learning_rate={loguniform: [1.0e-5, 1.0e-2]}",
    ])
    assert summary["num_trials"] == 6 and summary["num_failed"] == 0
    assert summary["num_stopped_early"] >= 1
    stopped = [t for t in summary["trials"] if t["status"] == "stopped_early"]
    assert all(t["epochs"] < 6 for t in stopped)
    assert "stopped early by asha" in printed


def test_a_nan_trial_fails_with_its_reason_and_the_sweep_goes_on(ray_session, tmp_path, tiny_job_text):
    summary, printed = run(tmp_path, tiny_job_text, [
        "search.num_samples=1", "train.optimizer=sgd",
        "search.space.train.learning_rate={grid: [3.0e-2, 1.0e+30]}",
    ])
    assert summary["num_trials"] == 2 and summary["num_failed"] == 1
    failed = next(t for t in summary["trials"] if t["status"] == "failed")
    assert failed["config"]["train.learning_rate"] == 1e30
    assert "loss became nan" in failed["error"] or "loss became inf" in failed["error"]
    assert summary["best_config"] == {"train.learning_rate": 3e-2}
    assert "failed: loss became" in printed


def test_a_killed_trial_resumes_from_its_last_checkpoint(ray_session, tmp_path, tiny_job_text):
    summary, printed = run(tmp_path, tiny_job_text, ["search.num_samples=1", "train.epochs=4",
                                                     "search.space={}"], callbacks=[KillOnce.at_epoch(2)])
    assert KillOnce.killed
    assert summary["num_trials"] == 1 and summary["num_failed"] == 0
    assert summary["trials"][0]["status"] == "completed" and summary["trials"][0]["epochs"] == 4
    table = pq.read_table(os.path.join(summary["run_dir"], "metrics.parquet")).to_pylist()
    assert [r["epoch"] for r in table] == [1, 2, 3, 4]
    pids = {r["worker_pid"] for r in table}
    assert len(pids) == 2  # epochs 3 and 4 ran in a new process, from the epoch-2 checkpoint


def test_what_a_killed_driver_leaves_in_the_snapshot_is_mended_before_resume(ray_session, tmp_path, tiny_job_text):
    """The two kinds of damage a SIGKILLed driver can leave (finetune.resume), made by hand in a
    real run folder, read in this Ray's real snapshot format: a searcher state cut to nothing, and
    a snapshot naming a trial checkpoint that a newer one has already replaced."""
    from finetune.resume import KEPT_FOLDER, repair_snapshot
    from finetune.tuner import TUNE_FOLDER

    summary, _ = run(tmp_path, tiny_job_text, ["search.num_samples=1", "train.epochs=2", "search.space={}"])
    tune_dir = os.path.join(summary["run_dir"], TUNE_FOLDER)
    kept = sorted(os.listdir(os.path.join(tune_dir, KEPT_FOLDER)))
    assert [n.partition("state-")[0] for n in kept] == ["basic-variant-", "experiment_"]
    searcher_state = os.path.join(tune_dir, kept[0])
    open(searcher_state, "wb").close()

    trial_dir = os.path.join(tune_dir, summary["trials"][0]["trial_id"])
    named = max(n for n in os.listdir(trial_dir) if n.startswith("checkpoint_"))
    newer = f"checkpoint_{int(named.rpartition('_')[2]) + 1:06d}"
    os.rename(os.path.join(trial_dir, named), os.path.join(trial_dir, newer))

    assert repair_snapshot(tune_dir) == [searcher_state, os.path.join(trial_dir, named)]
    assert open(searcher_state, "rb").read() == open(os.path.join(tune_dir, KEPT_FOLDER, kept[0]), "rb").read() != b""
    assert sorted(os.listdir(os.path.join(trial_dir, named))) == sorted(os.listdir(os.path.join(trial_dir, newer)))
    assert repair_snapshot(tune_dir) == []
