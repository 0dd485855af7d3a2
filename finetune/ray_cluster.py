"""Joining Ray: the cluster a job was submitted to, or a local Ray started on this machine's cores."""

from __future__ import annotations

import logging
import os

from finetune.search import Capacity

# Quiet TensorFlow's start-up chatter in every worker process of a local Ray.
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}


def connect(address: str | None = None, verbose: bool = False) -> Capacity:
    """Join the cluster at `address`, or at RAY_ADDRESS (set for drivers that `ray job submit`
    starts), or else start a local Ray. Never starts a second Ray beside a cluster it was sent to."""
    import ray

    if ray.is_initialized():
        return capacity(started_here=not os.environ.get("RAY_ADDRESS"))
    address = address or os.environ.get("RAY_ADDRESS")
    common = dict(logging_level=logging.WARNING, log_to_driver=verbose)
    if address:
        ray.init(address=address, **common)
    else:
        # The dashboard must run: its placement-group cleaner frees stopped trials' workers.
        ray.init(address="local", include_dashboard=True, runtime_env={"env_vars": WORKER_ENV}, **common)
    return capacity(started_here=not address)


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
