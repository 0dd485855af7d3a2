"""How many trials run at once, and what each asks of the cluster: the resource arithmetic.

Plain functions of a job and a `Capacity` (what the cluster offers), so they are tested without a
cluster. The runner asks `ray_cluster.capacity()` for the real one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from finetune.errors import UserError
from finetune.job import Job

# Memory one trial takes: a process with TensorFlow imported is about 0.8 GB (measured on the
# project's 2-core machine; docs/benchmarks.md, figure 4).
GIB = 1024**3
TRIAL_PROCESS_MEMORY = 1.0 * GIB
TRAIN_CONTROLLER_MEMORY = 0.8 * GIB
# The trial that drives a Ray Train run asks for memory only: a CPU share would be taken from the
# Train workers, and on a 2-core machine two 1-CPU workers would then never be placed.
TRAIN_DRIVER_BUNDLE = {"memory": 256 * 1024**2}


@dataclass(frozen=True)
class Capacity:
    """What the Ray cluster offers, as `ray.cluster_resources()` reports it."""

    cpus: float
    gpus: float
    memory: float
    nodes: int
    started_here: bool = True  # a local Ray this process started, not a cluster it joined


def trial_resources(job: Job) -> dict[str, float]:
    """What Tune reserves for one trial process."""
    if job.executor == "ray_train":
        return dict(TRAIN_DRIVER_BUNDLE)
    resources = {"CPU": job.resources.cpus_per_worker}
    if job.resources.use_gpu:
        resources["GPU"] = job.resources.gpus_per_worker
    return resources


@dataclass(frozen=True)
class ConcurrencyPlan:
    """The resource arithmetic of one run, spelled out: what one trial needs, how many trials each
    resource holds, which limit binds, and the result."""

    cpus_per_trial: float  # the workers' CPUs, plus those left to Ray Data when the data streams
    gpus_per_trial: float
    memory_per_trial: float  # bytes, estimated (estimated_trial_memory)
    limits: dict[str, int]  # "CPUs" | "GPUs" | "memory" -> trials that resource holds at once
    binding: str  # "CPUs" | "GPUs" | "memory" | "trials" (fewer trials than room) | "max_concurrent_trials"
    trials_at_once: int
    fits: bool  # one trial fits the cluster as it is now


def concurrency_limits(job: Job, capacity: Capacity, num_trials: int, streaming: bool = False,
                       local: bool = True) -> ConcurrencyPlan:
    """Every limit on how many trials run at once, and the one that binds: as many as the CPUs,
    GPUs and memory hold, so that no trial's workers wait forever for CPUs another trial's driver
    holds, memory never runs out, and streaming data keeps CPUs free for Ray Data's read tasks
    (else those wait behind the workers that wait for their data).

    On a cluster Ray was asked to join (`local` false), one trial that does not fit yet is not an
    error: the autoscaler may add nodes, and Tune queues the trials until it has.
    """
    resources = job.resources
    cpus_needed = resources.num_workers * resources.cpus_per_worker + data_cpus(job, streaming)
    gpus_needed = resources.num_workers * resources.gpus_per_worker if resources.use_gpu else 0.0
    limits = {"CPUs": math.floor(capacity.cpus / cpus_needed + 1e-9)}
    if resources.use_gpu:
        limits["GPUs"] = math.floor(capacity.gpus / gpus_needed + 1e-9)
    limits["memory"] = math.floor(capacity.memory / estimated_trial_memory(job))
    fitting = min(limits.values())
    if fitting < 1 and local:
        short = min(limits, key=limits.get)
        data = f" plus {data_cpus(job, streaming):g} CPU for Ray Data to stream the data" if streaming else ""
        raise UserError(
            f"resources: one trial needs {resources.num_workers} workers x {resources.cpus_per_worker:g} "
            f"CPUs{' and GPUs' if resources.use_gpu else ''}{data}, but this Ray has {capacity.cpus:g} CPUs, "
            f"{capacity.gpus:g} GPUs and {capacity.memory / GIB:.1f} GiB of memory ({short} too few). Lower "
            f"resources.num_workers or cpus_per_worker, or run on a larger cluster."
        )
    if resources.max_concurrent_trials != "auto":
        at_once, binding = max(1, min(resources.max_concurrent_trials, num_trials)), "max_concurrent_trials"
    else:
        binding = min(limits, key=limits.get)  # ties: CPUs, then GPUs, then memory
        if num_trials < limits[binding]:
            binding = "trials"
        at_once = max(1, min(fitting, num_trials))
    return ConcurrencyPlan(cpus_needed, gpus_needed, estimated_trial_memory(job), limits, binding, at_once,
                           fitting >= 1)


def plan_concurrency(job: Job, capacity: Capacity, num_trials: int, streaming: bool = False,
                     local: bool = True) -> int:
    """How many trials may run at once (`concurrency_limits`, its result alone)."""
    return concurrency_limits(job, capacity, num_trials, streaming, local).trials_at_once


def data_cpus(job: Job, streaming: bool) -> float:
    if job.resources.data_cpus != "auto":
        return float(job.resources.data_cpus)
    return 1.0 if streaming else 0.0


def estimated_trial_memory(job: Job) -> float:
    if job.executor == "ray_train":
        return TRIAL_PROCESS_MEMORY + TRAIN_CONTROLLER_MEMORY + job.resources.num_workers * TRIAL_PROCESS_MEMORY
    return TRIAL_PROCESS_MEMORY
