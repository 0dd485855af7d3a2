"""Shared fixtures. A test module that needs Ray starts one real local Ray for its tests
(`ray_session`) and stops it at its end, so that a module which runs the CLI in a subprocess never
has two Rays on the host at once. Tests run in one process, with no parallel workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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


class KillOnce:
    """A Tune callback that SIGKILLs the process where a trial trains (rank 0's), once, at the
    first result of `epoch`: a lost worker. `killed` records (trial id, pid); a class attribute,
    since Tune pickles its callbacks with the experiment."""

    killed: list = []

    @classmethod
    def at_epoch(cls, epoch: int):
        from ray.tune import Callback

        cls.killed.clear()

        class _Kill(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                if result["epoch"] == epoch and not cls.killed:
                    cls.killed.append((trial.trial_id, result["worker_pid"]))
                    os.kill(result["worker_pid"], signal.SIGKILL)

        return _Kill()


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@dataclass
class RayHead:
    gcs_address: str  # for ray.init / RAY_ADDRESS of drivers on the head
    dashboard: str  # http://127.0.0.1:PORT, for ray job submit and finetune submit
    env: dict  # what a client process needs (auth mode, PATH with this venv's python first)
    process: subprocess.Popen


@pytest.fixture(scope="module")
def ray_head():
    """A real Ray head on loopback, as `ray start --head --block` in a child process with its own
    ports and temp folder, so it collides with no other Ray on the host; stopped by its PID."""
    gcs, dashboard, agent_listen, agent_grpc, metrics, runtime_env, client, node_manager, object_manager = free_ports(9)
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "disabled",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus=2",
               f"--port={gcs}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
               f"--dashboard-agent-listen-port={agent_listen}", f"--dashboard-agent-grpc-port={agent_grpc}",
               f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
               f"--ray-client-server-port={client}", f"--node-manager-port={node_manager}",
               f"--object-manager-port={object_manager}", f"--temp-dir={temp_dir}", "--include-dashboard=true"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    head = RayHead(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", env, process)
    from ray.job_submission import JobSubmissionClient

    deadline = time.time() + 120
    while True:
        try:
            os.environ["RAY_AUTH_MODE"] = "disabled"
            JobSubmissionClient(head.dashboard).list_jobs()
            break
        except Exception:
            if time.time() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the test Ray head did not come up within 120 s")
            time.sleep(1)
    yield head
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
