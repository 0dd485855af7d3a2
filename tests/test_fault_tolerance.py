"""Runs that survive lost workers, lost nodes and a killed driver, on a real multi-node Ray:
`ray.cluster_utils.Cluster` runs a head and two worker nodes as separate raylets on this machine."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import JOBS, REPO, KillOnce, write_job

from finetune.job import load_job
from finetune.runner import run_job

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster():
    """A head with no CPUs (trials land on workers) and two worker nodes of one CPU each."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ.pop("RAY_ADDRESS", None)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 0, "include_dashboard": True, "dashboard_port": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def metrics_of(summary: dict) -> list[dict]:
    return pq.read_table(os.path.join(summary["run_dir"], "metrics.parquet")).to_pylist()


@pytest.mark.slow
def test_trials_spread_over_nodes_and_a_killed_trial_process_resumes(cluster, tmp_path):
    job = load_job(JOBS / "iris-csv.yaml", [f"storage_path={tmp_path}", "search.num_samples=4", "train.epochs=12",
                                            "search.scheduler=none"])
    summary = run_job(job, address=cluster.address, out=io.StringIO(), callbacks=[KillOnce.at_epoch(3)])
    assert summary["cluster"]["nodes"] == 3 and summary["num_failed"] == 0
    rows = metrics_of(summary)
    # Every trial's every epoch is in the table once.
    assert sorted((r["trial_id"], r["epoch"]) for r in rows) == sorted(
        (t["trial_id"], e) for t in summary["trials"] for e in range(1, 13))
    # Two trials at a time on two 1-CPU nodes: the trials ran on both.
    assert len({r["node_id"] for r in rows}) == 2
    killed_trial, killed_pid = KillOnce.killed[0]
    after = [r for r in rows if r["trial_id"] == killed_trial and r["epoch"] > 3]
    assert after and all(r["worker_pid"] != killed_pid for r in after)


class RemoveNodeOnce:
    """A Tune callback that removes the node where a trial's rank 0 trains, once, early in epoch 3.
    Defined here and holding the cluster in a class attribute: Tune pickles its callbacks with the
    experiment, and the cluster object cannot be pickled."""

    cluster: list = []
    removed: list = []

    @classmethod
    def make(cls):
        from ray.tune import Callback

        class _Callback(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                if result["epoch"] == 2 and not cls.removed:
                    live = cls.cluster[0]
                    node = next(n for n in live.worker_nodes if n.node_id == result["node_id"])
                    time.sleep(0.1)  # into epoch 3
                    live.remove_node(node, allow_graceful=False)
                    cls.removed.append(result["node_id"])

        return _Callback()


@pytest.mark.slow
def test_a_lost_node_costs_at_most_the_epoch_in_progress(cluster, tmp_path):
    """A Ray Train trial whose rank-0 node dies mid-epoch: the workers restart on the surviving
    node from the last checkpoint, and the trial ends as an undisturbed one does."""
    import ray

    text = f"""
name: node-loss
seed: 2
storage_path: {tmp_path}
model: {{head: {{units: [32]}}}}
train: {{epochs: 10, batch_size: 64, learning_rate: 5.0e-3}}
search: {{num_samples: 1, scheduler: none}}
resources: {{num_workers: 2, cpus_per_worker: 0.5, max_failures: 3}}
"""
    undisturbed = run_job(load_job(write_job(tmp_path, text, "a.yaml")), address=cluster.address, out=io.StringIO())

    RemoveNodeOnce.cluster.append(cluster)
    disturbed = run_job(load_job(write_job(tmp_path, text.replace("node-loss", "node-loss-2"), "b.yaml")),
                        address=cluster.address, out=io.StringIO(), callbacks=[RemoveNodeOnce.make()])
    cluster.add_node(num_cpus=1)  # back to two worker nodes for the next test
    cluster.wait_for_nodes()
    assert RemoveNodeOnce.removed and disturbed["num_failed"] == 0
    rows = metrics_of(disturbed)
    assert [r["epoch"] for r in rows] == list(range(1, 11))
    assert {r["node_id"] for r in rows if r["epoch"] > 2} != {RemoveNodeOnce.removed[0]}
    assert all(r["replica_weight_spread"] == 0.0 for r in rows)
    # Both runs converge; the resumed one repeated epoch 3 with another shuffle, nothing more.
    final, reference = rows[-1]["val_accuracy"], metrics_of(undisturbed)[-1]["val_accuracy"]
    assert reference > 0.9 and abs(final - reference) < 0.03, (final, reference)
    assert ray.is_initialized()


@pytest.mark.slow
def test_a_killed_driver_resumes_and_nothing_is_lost_or_run_twice(cluster, tmp_path):
    job_file = write_job(tmp_path, (JOBS / "iris-csv.yaml").read_text().replace("name: iris-csv", "name: killed")
                         .replace("../data/", f"{REPO / 'data'}/"))  # copied out of jobs/: its data path made absolute
    arguments = ["--set", f"storage_path={tmp_path / 'runs'}", "--set", "search.num_samples=4",
                 "--set", "train.epochs=40", "--set", "search.scheduler=none", "--address", cluster.address]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    driver = subprocess.Popen([sys.executable, "-m", "finetune", "run", str(job_file), *arguments], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    finished_before = None
    for line in driver.stdout:
        if "completed after" in line:
            finished_before = line.split("trial ")[1].split()[0]
            break
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert finished_before, "no trial finished before the driver was killed"
    run_dir = next((tmp_path / "runs" / "killed").iterdir())
    assert not (run_dir / "summary.json").exists()

    resumed = subprocess.run([sys.executable, "-m", "finetune", "run", str(job_file), "--resume", *arguments], cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming {run_dir}" in resumed.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_trials"] == 4 and summary["num_completed"] == 4, (summary["trials"], resumed.stdout[-3000:])
    rows = metrics_of(summary)
    assert sorted((r["trial_id"], r["epoch"]) for r in rows) == sorted(
        (t["trial_id"], e) for t in summary["trials"] for e in range(1, 41))
    # The trial that had finished was not run again: its Tune results hold each epoch once.
    finished_id = next(t["trial_id"] for t in summary["trials"] if t["trial_id"].endswith(f"_{int(finished_before) - 1:05d}"))
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "tune" / finished_id / "result.json").read_text().splitlines()]
    assert epochs == list(range(1, 41))


def test_a_local_storage_path_that_a_node_cannot_see_is_refused(cluster, tmp_path):
    """A third worker node in its own mount namespace, where the storage folder is an empty tmpfs:
    a node without the shared mount. The run stops before it starts, and leaves nothing behind."""
    import ray
    from conftest import free_ports

    from finetune import ray_cluster
    from finetune.errors import UserError

    ray_cluster.connect(cluster.address)
    hidden = tmp_path / "storage"
    hidden.mkdir()
    listen, grpc, metrics, runtime_env, node_manager, object_manager = free_ports(6)
    ray_cli = Path(sys.executable).parent / "ray"
    start = (f"mount -t tmpfs tmpfs {hidden} && exec {ray_cli} start --address={cluster.address} --num-cpus=1 --block "
             f"--dashboard-agent-listen-port={listen} --dashboard-agent-grpc-port={grpc} "
             f"--metrics-export-port={metrics} --runtime-env-agent-port={runtime_env} "
             f"--node-manager-port={node_manager} --object-manager-port={object_manager}")
    node = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", start],
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while len([n for n in ray.nodes() if n["Alive"]]) < 4:
            assert time.time() < deadline and node.poll() is None, "the extra node did not join"
            time.sleep(1)
        job = load_job(JOBS / "iris-csv.yaml", [f"storage_path={hidden}", "search.num_samples=1"])
        with pytest.raises(UserError, match=r"storage_path: .* is a local folder that 1 of the cluster's 4 nodes cannot see"):
            run_job(job, address=cluster.address, out=io.StringIO())
        assert list(hidden.iterdir()) == []
        # An input file the job names is looked for from every node the same way.
        hidden_data = hidden / "iris.csv"
        hidden_data.write_bytes((REPO / "data" / "iris.csv").read_bytes())
        job = load_job(JOBS / "iris-csv.yaml", [f"storage_path={tmp_path / 'runs'}", f"dataset.source={hidden_data}"])
        with pytest.raises(UserError, match=r"dataset.source: .*iris.csv is a local path that 1 of the cluster's "
                                            r"4 nodes cannot see"):
            run_job(job, address=cluster.address, out=io.StringIO())
        hidden_data.unlink()
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(timeout=60)
