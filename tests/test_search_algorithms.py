"""TPE, PBT and full-batch L-BFGS on a real local Ray: real trials train real Keras models."""

from __future__ import annotations

import io
import json
import math
import os

import pyarrow.parquet as pq
import pytest
from conftest import write_job

from finetune import _compat
from finetune.job import load_job
from finetune.runner import run_job

pytestmark = pytest.mark.ray


class RunningTrials:
    """A Tune callback counting the trials running at once; class attributes, since Tune pickles
    its callbacks with the experiment."""

    running: set = set()
    most: list = [0]

    @classmethod
    def make(cls):
        from ray.tune import Callback

        cls.running.clear()
        cls.most[0] = 0

        class _Count(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                cls.running.add(trial.trial_id)
                cls.most[0] = max(cls.most[0], sum(t.status == "RUNNING" for t in trials))

        return _Count()


def run(tmp_path, text: str, overrides=(), callbacks=()):
    job = load_job(write_job(tmp_path, text), list(overrides))
    out = io.StringIO()
    return run_job(job, out=out, callbacks=callbacks), out.getvalue(), job


def metrics_of(summary: dict) -> list[dict]:
    return pq.read_table(os.path.join(summary["run_dir"], "metrics.parquet")).to_pylist()


TPE_SPACE = """
    train.learning_rate: {loguniform: [1.0e-4, 3.0e-2]}
    model.head.units: {choice: [[16], [32]]}
"""


def test_tpe_runs_two_trials_at_once_from_its_seed_and_tells_optuna_each_end(ray_session, tmp_path, tiny_job_text):
    from optuna.trial import TrialState

    from finetune.tpe import TpeSearch

    text = tiny_job_text.replace("  scheduler: none\n", "  algorithm: tpe\n  scheduler: {type: asha, grace_period: 1, reduction_factor: 2}\n")
    text = text.replace("    train.learning_rate: {choice: [3.0e-3, 1.0e-2]}\n", TPE_SPACE)
    summary, printed, job = run(tmp_path, text, ["search.num_samples=12", "train.epochs=2",
                                                 "resources.max_concurrent_trials=2"], [RunningTrials.make()])
    assert summary["algorithm"] == "tpe" and "search: tpe with asha" in printed
    assert summary["num_trials"] == 12 and summary["num_failed"] == 0
    assert RunningTrials.most[0] == 2  # side by side, not one at a time (ray-project/ray#63770)
    # The first proposals are the seeded sampler's: a fresh searcher for the same job proposes them.
    # (Tune names a searcher's trials with random ids; the study numbers them in order.)
    study, number_of = _compat.saved_optuna_search(os.path.join(summary["run_dir"], "tune"))
    ran = sorted(summary["trials"], key=lambda t: number_of[t["trial_id"]])
    fresh = TpeSearch(job, str(tmp_path))
    for index in range(4):  # the random start-up trials (startup_trials: 12 // 3)
        assert fresh.suggest(f"again_{index}")["space"] == ran[index]["config"]
    states = [t.state for t in study.trials]
    assert len(states) == 12
    assert states.count(TrialState.PRUNED) == summary["num_stopped_early"] >= 1
    assert states.count(TrialState.COMPLETE) == summary["num_completed"]
    best = max(t.value for t in study.trials if t.state == TrialState.COMPLETE)
    assert best == pytest.approx(summary["best_metrics"]["val_accuracy"])


PBT_JOB = """
name: pbt
seed: 3
storage_path: {runs}
dataset: {{source: sklearn:digits}}
model: {{base: builtin:small_cnn, head: {{units: [32], dropout: 0.1}}}}
train: {{epochs: 10, batch_size: 64, optimizer: adam}}
search:
  metric: val_accuracy
  mode: max
  num_samples: 1
  scheduler: {{type: pbt, perturbation_interval: 2, quantile_fraction: 0.5, resample_probability: 0.0}}
  space:
    train.learning_rate: {{grid: [1.0e-5, 3.0e-3]}}
    model.head.dropout: {{uniform: [0.0, 0.4]}}
resources: {{num_workers: 1, max_concurrent_trials: 2}}
"""


def test_pbt_exploits_from_a_real_checkpoint(ray_session, tmp_path):
    """Two trials, one that cannot learn (learning rate 1e-5) and one that can: at a perturbation
    epoch (2, 4, 6 or 8) the weak one copies the strong one's checkpoint and configuration, with
    its dropout perturbed. Ray's asynchronous PBT gives a trial a checkpoint to copy only once that
    trial passed a perturbation epoch in the top quantile, so when one trial's process starts late
    the first chances are skipped ("no checkpoint for trial ..."; CI saw both chances of a 6-epoch
    run go): 10 epochs leave four."""
    summary, printed, _ = run(tmp_path, PBT_JOB.format(runs=tmp_path / "runs"))
    assert summary["scheduler"] == "pbt" and summary["num_failed"] == 0
    rows = metrics_of(summary)
    by_trial = {}
    for row in rows:
        by_trial.setdefault(row["trial_id"], {})[row["epoch"]] = row
    exploits = [r for r in rows if r.get("resumed_from_trial") not in (None, r["trial_id"])]
    assert exploits, rows
    exploited = exploits[0]
    donor, epoch = by_trial[exploited["resumed_from_trial"]], int(exploited["resumed_from_epoch"])
    assert exploited["epoch"] == epoch + 1  # it goes on from the donor's epoch
    own = by_trial[exploited["trial_id"]]
    earlier = [e for e in own if e < exploited["epoch"]]
    # Its own last loss before the exploit. Tune's history of a trial that PBT restored sometimes
    # starts at the restore (seen in a full run on a loaded machine): then the loss of a model that
    # cannot learn, chance on 10 classes, ln 10, stands for it.
    before = own[max(earlier)]["loss"] if earlier else math.log(10)
    # Its next epoch starts from the donor's weights: its loss is the donor's, not its own.
    assert abs(exploited["loss"] - donor[epoch]["loss"]) < abs(exploited["loss"] - before) / 4, (
        exploited["loss"], donor[epoch]["loss"], before)
    # And it now trains with the donor's learning rate and a perturbed dropout.
    final = next(t for t in summary["trials"] if t["trial_id"] == exploited["trial_id"])["config"]
    assert final["train.learning_rate"] == 3e-3
    assert 0.0 <= final["model.head.dropout"] <= 0.4
    assert any(n.startswith("pbt_policy_") for n in os.listdir(os.path.join(summary["run_dir"], "tune")))


LBFGS_JOB = """
name: lbfgs
seed: 0
storage_path: {runs}
dataset: {{source: sklearn:breast_cancer}}
model: {{base: builtin:mlp}}
train: {{epochs: 3, optimizer: lbfgs, optimizer_args: {{iterations: 5}}}}
search: {{metric: val_loss, mode: min, num_samples: 1, scheduler: none}}
resources: {{num_workers: 2}}
"""


@pytest.mark.slow
def test_lbfgs_on_two_ray_train_workers_equals_one_worker(ray_session, tmp_path):
    from finetune.data import load_data
    from finetune.train_loop import EpochTrainer

    summary, printed, job = run(tmp_path, LBFGS_JOB.format(runs=tmp_path / "runs"))
    assert summary["num_completed"] == 1
    rows = metrics_of(summary)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(r["replica_weight_spread"] == 0.0 for r in rows)
    params = json.load(open(os.path.join(summary["run_dir"], "tune", rows[0]["trial_id"], "params.json")))
    one = EpochTrainer(job, load_data(job.dataset, job.seed), seed=params["seed"], rank=0, world_size=1)
    for row in rows:
        alone = one.train_epoch(row["epoch"])
        assert abs(row["loss"] - alone["loss"]) < 1e-5, (row["epoch"], row["loss"], alone["loss"])
        assert abs(row["val_loss"] - alone["val_loss"]) < 1e-5
