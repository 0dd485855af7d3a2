"""`finetune plan JOB` (and `finetune run JOB --dry-run`): what a search will do before it runs.

The resolved job, every search domain, the number of trials, the resource arithmetic of
`finetune.resources` spelled out (which limit binds), the scheduler's rungs and the most epochs the
search can cost. With no cluster address it plans for this machine without starting Ray, from what
a local Ray would offer (`ray_cluster.local_capacity`); with one, it asks that cluster.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from finetune.job import Job, to_yaml
from finetune.resources import GIB, Capacity, ConcurrencyPlan, concurrency_limits
from finetune.search_space import Domain, count_trials, parse_space


@dataclass(frozen=True)
class Plan:
    job: Job
    domains: dict[str, Domain]
    num_trials: int
    capacity: Capacity
    capacity_source: str  # where the capacity figures come from, as the plan prints it
    concurrency: ConcurrencyPlan
    streaming: bool  # the data streams (dataset.in_memory: false); auto is decided when it loads
    rungs: list[list[float]]  # per bracket: the epochs where the scheduler compares trials
    max_epochs: int  # every trial runs every epoch: the most the search can cost
    expected_epochs: float | None  # ASHA / HyperBand stopping as designed; None for other schedulers


def make_plan(job: Job, address: str | None = None, capacity: Capacity | None = None) -> Plan:
    """The plan of a job's search. address: a cluster to ask (else RAY_ADDRESS, else this machine,
    with no Ray started). capacity: plan for these resources instead (a cluster on paper)."""
    from finetune import ray_cluster

    address = address or os.environ.get("RAY_ADDRESS")
    if capacity is not None:
        source = "the given capacity"
    elif address:
        capacity = ray_cluster.cluster_capacity(address)
        source = f"the cluster at {address}"
    else:
        capacity = ray_cluster.local_capacity()
        source = "this machine, as a local Ray would offer it (no Ray started)"
    num_trials = count_trials(job.search)
    streaming = job.dataset.in_memory is False
    concurrency = concurrency_limits(job, capacity, num_trials, streaming=streaming, local=not address)
    rungs = scheduler_rungs(job)
    return Plan(job, parse_space(job.search.space), num_trials, capacity, source, concurrency, streaming, rungs,
                num_trials * job.train.epochs, _expected_epochs(job, rungs, num_trials))


def scheduler_rungs(job: Job) -> list[list[float]]:
    """For ASHA and HyperBand, each bracket's rungs: the epochs at which Ray's
    AsyncHyperBandScheduler compares a trial with the others that reached the same rung, the same
    arithmetic as its `_Bracket` (ray/tune/schedulers/async_hyperband.py):
    `int(log(max_t / grace_period) / log(reduction_factor) - s + 1)` rungs at
    `grace_period * reduction_factor ** (k + s)` for bracket s. A rung compares a trial at its
    first reported epoch at or past the rung; a rung at train.epochs or later stops nothing (a
    trial that reaches train.epochs is complete). Other schedulers have no rungs: an empty list."""
    spec = job.search.scheduler
    if spec.type not in ("asha", "hyperband"):
        return []
    max_t, grace, factor = job.train.epochs, spec.grace_period, spec.reduction_factor
    brackets = []
    for s in range(spec.brackets):
        count = int(math.log(max_t / grace) / math.log(factor) - s + 1)
        brackets.append([grace * factor ** (k + s) for k in range(count)])
    return brackets


def _expected_epochs(job: Job, rungs: list[list[float]], num_trials: int) -> float | None:
    """Epochs if ASHA stops trials as designed: of the trials that reach a rung, 1 in
    reduction_factor goes on. HyperBand: each bracket weighted as Ray assigns trials to brackets,
    with probability proportional to e^(its number of rungs) (AsyncHyperBandScheduler.on_trial_add)."""
    if not rungs:
        return None
    epochs, factor = job.train.epochs, job.search.scheduler.reduction_factor
    per_bracket = []
    for milestones in rungs:
        stops = sorted({math.ceil(m) for m in milestones if math.ceil(m) < epochs})
        expected, previous, surviving = 0.0, 0, 1.0
        for stop in stops:
            expected += surviving * (stop - previous)
            previous, surviving = stop, surviving / factor
        per_bracket.append(expected + surviving * (epochs - previous))
    weights = [math.exp(len(m) - max(len(r) for r in rungs)) for m in rungs]
    return num_trials * sum(w * e for w, e in zip(weights, per_bracket)) / sum(weights)


# --- as the plan prints -----------------------------------------------------------------------------


def format_plan(plan: Plan, source: str) -> str:
    job, resources, concurrency = plan.job, plan.job.resources, plan.concurrency
    lines = [f"plan for job {job.name!r} ({source}); nothing was started", "", "the resolved job:"]
    lines += ["  " + line for line in to_yaml(job).rstrip().splitlines()]
    lines += ["", f"search space ({len(plan.domains)} entr{'y' if len(plan.domains) == 1 else 'ies'}):"]
    width = max((len(p) for p in plan.domains), default=0)
    lines += [f"  {path.ljust(width)}  {format_domain(domain)}" for path, domain in plan.domains.items()]
    if not plan.domains:
        lines.append("  (none: every trial trains the job as written)")
    grid = plan.num_trials // job.search.num_samples
    lines += ["", f"trials: {plan.num_trials}" + (f" (num_samples {job.search.num_samples} x grid {grid})"
                                                   if grid > 1 else "")]
    workers = f"{resources.num_workers} worker{'s' if resources.num_workers > 1 else ''}"
    gpus = f" and {resources.gpus_per_worker:g} GPU" if resources.use_gpu else ""
    lines.append(f"each trial: {workers} x {resources.cpus_per_worker:g} CPU{gpus} ({job.executor}); needs "
                 f"{concurrency.cpus_per_trial:g} CPUs{' (1 for Ray Data to stream the data)' if plan.streaming else ''}, "
                 f"{concurrency.gpus_per_trial:g} GPUs, about {concurrency.memory_per_trial / GIB:.1f} GiB of memory")
    capacity = plan.capacity
    lines.append(f"cluster: {plan.capacity_source}: {capacity.cpus:g} CPUs, {capacity.gpus:g} GPUs, "
                 f"{capacity.memory / GIB:.1f} GiB of memory for tasks, {capacity.nodes} node(s)")
    lines.append(f"trials at once: {concurrency.trials_at_once}, bound by {describe_binding(plan)}")
    offered = {"CPUs": (capacity.cpus, concurrency.cpus_per_trial, "{:g}"),
               "GPUs": (capacity.gpus, concurrency.gpus_per_trial, "{:g}"),
               "memory": (capacity.memory / GIB, concurrency.memory_per_trial / GIB, "{:.1f} GiB")}
    for name, holds in concurrency.limits.items():
        have, need, form = offered[name]
        mark = "  <- binds" if name == concurrency.binding else ""
        lines.append(f"  {name:<7} {form.format(have)} / {form.format(need)} per trial = {holds} trial(s){mark}")
    lines += ["", *format_scheduler(plan)]
    expected = "" if plan.expected_epochs is None else (
        f"; about {plan.expected_epochs:.0f} if {job.search.scheduler.type} stops trials as designed "
        f"(1 in {job.search.scheduler.reduction_factor:g} goes on at each rung)")
    lines.append(f"epochs: at most {plan.max_epochs} ({plan.num_trials} trials x {job.train.epochs}){expected}")
    return "\n".join(lines)


def describe_binding(plan: Plan) -> str:
    binding = plan.concurrency.binding
    if binding == "max_concurrent_trials":
        return f"resources.max_concurrent_trials ({plan.job.resources.max_concurrent_trials})"
    if binding == "trials":
        return f"the number of trials ({plan.num_trials}; the cluster holds more)"
    if not plan.concurrency.fits:
        return f"{binding}: no trial fits the cluster yet; Tune queues trials until it grows"
    return binding


def format_scheduler(plan: Plan) -> list[str]:
    spec, epochs = plan.job.search.scheduler, plan.job.train.epochs
    if spec.type == "none":
        return ["scheduler: none; every trial runs all its epochs"]
    if spec.type == "median":
        return [f"scheduler: median stopping rule; from epoch {spec.grace_period} on, at every epoch, a trial whose "
                f"best result is below the median of the other trials' running averages at that epoch stops, once "
                f"{spec.min_samples_required} trials have reached it"]
    if spec.type == "pbt":
        exploits = list(range(spec.perturbation_interval, epochs, spec.perturbation_interval))
        return [f"scheduler: population-based training; every {spec.perturbation_interval} epochs (epochs "
                f"{', '.join(map(str, exploits)) or 'none before the last'}) a trial in the bottom "
                f"{spec.quantile_fraction:g} of the population copies the checkpoint and configuration of one in "
                f"the top {spec.quantile_fraction:g} and perturbs the mutated entries; every trial runs {epochs} epochs"]
    lines = [f"scheduler: {spec.type} (grace_period {spec.grace_period}, reduction_factor {spec.reduction_factor:g}, "
             f"{len(plan.rungs)} bracket{'s' if len(plan.rungs) > 1 else ''})"]
    for index, milestones in enumerate(plan.rungs):
        stops = sorted({math.ceil(m) for m in milestones if math.ceil(m) < epochs})
        where = f"compares trials at epoch{'s' if len(stops) > 1 else ''} {', '.join(map(str, stops))}" if stops \
            else "stops no trial (its first rung is at train.epochs or later)"
        label = f"  bracket {index + 1}: " if len(plan.rungs) > 1 else "  "
        lines.append(f"{label}{where}; a trial that passes every rung runs {epochs} epochs")
    return lines


def format_domain(domain: Domain) -> str:
    kind, args = domain.kind, domain.args
    if kind in ("choice", "grid"):
        text = f"{kind} " + " | ".join(_value(v) for v in args[0])
    elif kind == "fixed":
        text = f"fixed {_value(args[0])}"
    elif kind == "quniform":
        text = f"quniform {_value(args[0])} .. {_value(args[1])} step {_value(args[2])}"
    else:
        text = f"{kind} {_value(args[0])} .. {_value(args[1])}" + (" (both included)" if kind == "randint" else "")
    if domain.when:
        text += " when " + ", ".join(f"{path} in {' | '.join(_value(v) for v in values)}"
                                     for path, values in domain.when)
    return text


def _value(value) -> str:
    import json

    return f"{value:g}" if isinstance(value, float) else json.dumps(value) if isinstance(value, (list, dict)) \
        else str(value)
