"""Joining Ray: the cluster a job was submitted to, or a local Ray started on this machine's cores."""

from __future__ import annotations

import logging
import os
import secrets

from finetune import _compat
from finetune.resources import Capacity


def connect(address: str | None = None, verbose: bool = False, dashboard: bool = True) -> Capacity:
    """Join the cluster at `address`, or at RAY_ADDRESS (set for drivers that `ray job submit`
    starts), or else start a local Ray. Never starts a second Ray beside a cluster it was sent to.

    The driver's process-wide settings are made first, and every worker of the run gets
    `_compat.WORKER_ENVIRONMENT` through the job's runtime environment. Without `verbose`, what
    the workers print and what Ray logs goes to the run's ray.log (finetune.ray_logs).

    dashboard: start the dashboard with a local Ray. Trials that drive Ray Train runs need it: its
    placement-group cleaner frees the workers of trials a scheduler stops (without it, stopped
    trials' placement groups stayed and later trials timed out starting their workers, seen on Ray
    2.60). Trials that train in their own process do not, and it costs a few seconds and a few
    hundred MB."""
    import ray

    from finetune import ray_logs

    _compat.configure_driver()
    if ray.is_initialized():
        return capacity(started_here=not os.environ.get("RAY_ADDRESS"))
    address = address or os.environ.get("RAY_ADDRESS")
    if not verbose:
        ray_logs.keep_off_screen()  # the workers' output and Ray's warnings go to the run's ray.log
    common = dict(logging_level=logging.INFO if not verbose else logging.WARNING, log_to_driver=True,
                  runtime_env=_compat.worker_runtime_env())
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(address="local", include_dashboard=dashboard, **common)
    if not verbose:
        _compat.send_worker_output_to(ray_logs.worker_output)
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


def local_capacity() -> Capacity:
    """What a local Ray would offer on this machine (`connect` with no address), estimated without
    importing Ray (finetune.local_resources): for `finetune plan`."""
    from finetune import local_resources

    return Capacity(cpus=float(local_resources.cpus()), gpus=float(local_resources.gpus()),
                    memory=local_resources.memory(), nodes=1)


def cluster_capacity(address: str) -> Capacity:
    """What the running cluster at `address` offers now; this process joins it as a driver and
    leaves again (it starts no Ray of its own)."""
    import ray

    from finetune import ray_logs

    _compat.configure_driver()
    joined_here = not ray.is_initialized()
    if joined_here:
        ray_logs.keep_off_screen()  # Ray's connection messages are not the plan
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        return capacity(started_here=False)
    finally:
        if joined_here:
            ray.shutdown()


def check_reachable(storage_location: str, inputs: dict[str, str], capacity: Capacity,
                    field: str = "storage_path") -> None:
    """On a cluster of several nodes, every local path a run uses must be one that every node sees
    at the same path: Train workers on any node write checkpoints under the storage path, and Ray
    Data tasks and trials on any node read the data and model files. The storage path is checked
    with a marker file written here, each input by looking for it, from a task on every node; the
    run stops before it starts if a node is blind to any of them. Files under `ray job submit
    --working-dir` pass: Ray unpacks the working directory at the same path on every node.

    field: the job field that names `storage_location` (storage_path, or registry for the model
    registry, which the driver writes and trials read)."""
    from finetune import storage
    from finetune.errors import UserError

    if capacity.nodes <= 1:
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    marker = None
    if storage.is_local(storage_location):
        path = storage_location.removeprefix("file://")
        created = path  # the outermost folder made here, removed again below
        while not os.path.exists(os.path.dirname(created)):
            created = os.path.dirname(created)
        created = created if not os.path.exists(created) else None
        os.makedirs(path, exist_ok=True)
        marker = os.path.join(path, f".finetune-reachable-{secrets.token_hex(4)}")
        with open(marker, "w") as out:
            out.write("written by the finetune driver to check that every node sees this folder\n")
    looked_for = {**({field: marker} if marker else {}), **inputs}
    if not looked_for:
        return
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        probe = ray.remote(num_cpus=0)(_paths_visible)
        seen = ray.get([
            probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                list(looked_for.values()))
            for n in nodes
        ])
    finally:
        if marker:
            os.remove(marker)
            folder = os.path.dirname(marker)
            while created and not os.listdir(folder):  # the folders made for the marker, if still empty
                os.rmdir(folder)
                if folder == created:
                    break
                folder = os.path.dirname(folder)
    problems = []
    for i, named_by in enumerate(looked_for):
        blind = [f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})" for n, visible in zip(nodes, seen) if not visible[i]]
        if not blind:
            continue
        if named_by == "storage_path":
            what = f"{storage_location} is a local folder"
            why = "their Train workers could not write checkpoints there"
        elif named_by == "registry":
            what = f"{storage_location} is a local folder"
            why = "trials there could not read a registry base, nor the gate its champion"
        else:
            what, why = f"{looked_for[named_by]} is a local path", "trials and data tasks there could not read it"
        problems.append(f"{named_by}: {what} that {len(blind)} of the cluster's {len(nodes)} nodes cannot see "
                        f"({', '.join(blind)}); {why}.")
    if problems:
        raise UserError("\n".join(problems) + "\nUse object storage (s3://bucket/path, gs://bucket/path), a mount "
                        "shared by every node at the same path, or, for inputs, files under the job's --working-dir.")


def _paths_visible(paths: list[str]) -> list[bool]:
    import glob

    return [os.path.exists(path) or bool(glob.glob(path)) for path in paths]
