"""Joining Ray: the cluster a job was submitted to, or a local Ray started on this machine's cores."""

from __future__ import annotations

import logging
import os

from finetune.search import Capacity

# Quiet TensorFlow's start-up chatter in every worker process of a local Ray.
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}


def connect(address: str | None = None, verbose: bool = False, dashboard: bool = True) -> Capacity:
    """Join the cluster at `address`, or at RAY_ADDRESS (set for drivers that `ray job submit`
    starts), or else start a local Ray. Never starts a second Ray beside a cluster it was sent to.

    dashboard: start the dashboard with a local Ray. Trials that drive Ray Train runs need it: its
    placement-group cleaner frees the workers of trials a scheduler stops (field notes). Trials that
    train in their own process do not, and it costs a few seconds and a few hundred MB."""
    import ray

    if ray.is_initialized():
        return capacity(started_here=not os.environ.get("RAY_ADDRESS"))
    address = address or os.environ.get("RAY_ADDRESS")
    common = dict(logging_level=logging.WARNING, log_to_driver=verbose)
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(address="local", include_dashboard=dashboard, runtime_env={"env_vars": WORKER_ENV}, **common)
    return capacity(started_here=not address)


def run_in_worker(function, *args, num_cpus: float = 1):
    """Run `function(*args)` as a Ray task and return its result. A user error raised there is
    raised here as itself, with its own message, not wrapped in Ray's task error."""
    import ray
    from ray.exceptions import RayTaskError

    from finetune.errors import UserError

    try:
        return ray.get(ray.remote(num_cpus=num_cpus, max_retries=0)(function).remote(*args))
    except RayTaskError as error:
        if isinstance(error.cause, UserError):
            raise error.cause from None
        raise


def capacity(started_here: bool = True) -> Capacity:
    import ray

    resources = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return Capacity(
        cpus=float(resources.get("CPU", 0)),
        gpus=float(resources.get("GPU", 0)),
        memory=float(resources.get("memory", 0)),
        nodes=len(nodes),
        started_here=started_here,
    )


def check_storage_reachable(location: str, capacity: Capacity) -> None:
    """On a cluster of several nodes, a local storage path must be a mount that every node
    shares: Train workers on any node write checkpoints there. A marker file written here must be
    visible from a task on every node, or the run stops before it starts."""
    import secrets

    from finetune import storage
    from finetune.errors import UserError

    if capacity.nodes <= 1 or not storage.is_local(location):
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    path = location.removeprefix("file://")
    created = not os.path.exists(path)
    os.makedirs(path, exist_ok=True)
    marker = os.path.join(path, f".finetune-reachable-{secrets.token_hex(4)}")
    with open(marker, "w") as out:
        out.write("written by the finetune driver to check that every node sees this folder\n")
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        probe = ray.remote(num_cpus=0)(_marker_visible)
        seen = ray.get([
            probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(marker)
            for n in nodes
        ])
    finally:
        os.remove(marker)
        if created and not os.listdir(path):
            os.rmdir(path)
    blind = [f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})" for n, ok in zip(nodes, seen) if not ok]
    if blind:
        raise UserError(
            f"storage_path: {location} is a local folder that {len(blind)} of the cluster's {len(nodes)} nodes "
            f"cannot see ({', '.join(blind)}); their Train workers could not write checkpoints there. Use "
            f"object storage (s3://bucket/path, gs://bucket/path) or a mount shared by every node at the same path."
        )


def _marker_visible(marker: str) -> bool:
    return os.path.exists(marker)
