"""Trials as Ray Train runs with two data-parallel workers under MultiWorkerMirroredStrategy."""

from __future__ import annotations

import io
import os
import time

import pyarrow.parquet as pq
import pytest
from conftest import write_job

from finetune.job import load_job
from finetune.startup import PHASES
from finetune.runner import run_job

pytestmark = pytest.mark.ray


def test_two_workers_stay_in_sync_asha_stops_nan_fails_and_resources_are_released(ray_session, tmp_path):
    import ray
    from ray.util import placement_group_table

    job = load_job(write_job(tmp_path, f"""
name: two-workers
seed: 3
storage_path: {tmp_path / 'runs'}
model: {{head: {{units: [32]}}}}
train: {{epochs: 4, batch_size: 64, optimizer: adam, augment: {{rotation: 0.02, flip: none}}}}
search:
  num_samples: 1
  scheduler: {{type: asha, grace_period: 2, reduction_factor: 3}}
  space:
    train.learning_rate: {{grid: [1.0e-2, 1.0e-7, 1.0e+30]}}
resources: {{num_workers: 2, cpus_per_worker: 1}}
"""))
    assert job.executor == "ray_train"
    out = io.StringIO()
    summary = run_job(job, out=out)
    by_rate = {t["config"]["train.learning_rate"]: t for t in summary["trials"]}

    # The NaN trial failed with its reason; the others went on. (Adam at 1e12 leaves small_cnn
    # with a huge but finite loss; at 1e30 it overflows to NaN in the first epoch, for any seed.)
    assert by_rate[1e30]["status"] == "failed" and "became" in by_rate[1e30]["error"]
    # The trial that cannot learn was stopped at the first rung (epoch 2); the good one ran to the end.
    assert by_rate[1e-7]["status"] == "stopped_early" and by_rate[1e-7]["epochs"] == 2
    assert by_rate[1e-2]["status"] == "completed" and by_rate[1e-2]["epochs"] == 4
    assert summary["best_config"] == {"train.learning_rate": 1e-2}
    assert os.path.exists(summary["model_path"])

    # After every epoch, both workers held exactly the same weights.
    rows = pq.read_table(os.path.join(summary["run_dir"], "metrics.parquet")).to_pylist()
    assert rows and all(r["replica_weight_spread"] == 0.0 for r in rows)

    # Each trial's first epoch says where its start-up went (finetune.startup), in the order the
    # phases happen, from marks the trial, controller and worker processes wrote themselves.
    # A process may have been started before the trial asked for it (Ray gives an actor an idle
    # worker process it prestarted), so process starts only precede the work they host.
    for row in (r for r in rows if r["epoch"] == 1):
        mark = {phase: row[f"startup.{phase}"] for phase in PHASES}
        assert None not in mark.values(), row
        work = [mark[p] for p in PHASES if not p.endswith("_process")]
        assert work == sorted(work) and mark["fit"] >= 0, row
        assert max(mark["controller_process"], mark["worker_process"]) <= mark["loop"], row
        assert row["startup.first_step"] == pytest.approx(row["startup_seconds"], abs=0.01)

    # Every trial's Train workers and placement groups are gone.
    leftover = [pg for pg in placement_group_table().values() if pg["state"] != "REMOVED"]
    assert leftover == []
    # The test evaluation ran as a Ray task just before the run returned; the cluster's resource
    # view (GCS) learns of freed CPUs a moment after the raylet does.
    deadline = time.monotonic() + 20
    while ray.available_resources().get("CPU", 0) != ray.cluster_resources()["CPU"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]


@pytest.mark.slow
def test_streaming_data_is_sharded_by_ray_train_to_two_workers(ray_session, tmp_path):
    """in_memory: false: Ray Data reads the Parquet file every epoch and Ray Train splits it."""
    from conftest import REPO

    job = load_job(write_job(tmp_path, f"""
name: streaming
seed: 1
storage_path: {tmp_path / 'runs'}
dataset: {{source: {REPO / 'data' / 'digits.parquet'}, in_memory: false}}
model: {{base: builtin:mlp, head: {{units: [64]}}}}
train: {{epochs: 2, batch_size: 64, learning_rate: 3.0e-3}}
search: {{num_samples: 1, scheduler: none}}
resources: {{num_workers: 2, cpus_per_worker: 0.5}}
"""))
    summary = run_job(job, out=io.StringIO())
    assert summary["data_fingerprint"]["in_memory"] is False
    rows = pq.read_table(os.path.join(summary["run_dir"], "metrics.parquet")).to_pylist()
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["replica_weight_spread"] == 0.0 for r in rows)
    # Each worker trained on its half: the global count per epoch is the training split, less
    # at most one row that the equal split leaves out.
    trained = rows[-1]["samples_per_second"] * rows[-1]["train_seconds"]
    assert abs(trained - summary["data_fingerprint"]["split_rows"]["train"]) <= 2
    assert summary["test_metrics"]["accuracy"] > 0.8
