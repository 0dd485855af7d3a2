"""Shared fixtures. A test module that needs Ray starts one real local Ray for its tests
(`ray_session`) and stops it at its end, so that a module which runs the CLI in a subprocess never
has two Rays on the host at once. Tests run in one process, with no parallel workers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
JOBS = REPO / "jobs"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def write_job(directory: Path, text: str, name: str = "job.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def ray_session():
    """A real local Ray on this machine's cores, shared by the tests that need one."""
    import ray

    from finetune import ray_cluster

    os.environ.pop("RAY_ADDRESS", None)
    capacity = ray_cluster.connect()
    yield capacity
    ray.shutdown()


@pytest.fixture
def tiny_job_text(tmp_path) -> str:
    """A digits job small enough for CI: few samples, few epochs, runs under tmp_path."""
    return f"""
name: tiny
seed: 1
storage_path: {tmp_path / 'runs'}
dataset: {{source: sklearn:digits, split: {{validation: 0.2, test: 0.2}}}}
model: {{base: builtin:small_cnn, head: {{units: [32], dropout: 0.1}}}}
train: {{epochs: 3, batch_size: 64, optimizer: adam, learning_rate: 3.0e-3}}
search:
  metric: val_accuracy
  mode: max
  num_samples: 2
  scheduler: none
  space:
    train.learning_rate: {{choice: [3.0e-3, 1.0e-2]}}
resources: {{num_workers: 1}}
"""
