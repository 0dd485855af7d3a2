"""Validating a job: pydantic's checks, the rules that tie one field to another, the search space
against the fields it varies, and the translation of all of it into `Problem`s, every one at once."""

from __future__ import annotations

import difflib
import math
import re
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from finetune import search_space
from finetune.job.names import name_problem
from finetune.errors import JobError, Problem
from finetune.job.dotted import set_path
from finetune.job.schema import (
    FULL_BATCH_OPTIMIZERS,
    REGRESSION_LOSSES,
    REGRESSION_METRICS,
    Job,
    reported_metrics,
    scheduler_types,
)


def validate_job_dict(raw: dict, source: str = "<job>") -> Job:
    """A validated Job, or a JobError listing every problem with its path, value and expectation."""
    problems = _number_problems(raw)
    try:
        job = Job.model_validate(raw)
    except ValidationError as error:
        job = None
        found = {p.path for p in problems}
        problems.extend(p for p in _problems_from(error, raw) if p.path not in found)
    problems.extend(_space_problems(raw))
    if job is not None:
        problems.extend(_cross_field_problems(job))
        problems.extend(_search_algorithm_problems(job))
        problems.extend(_full_batch_problems(job))
    if problems:
        raise JobError(source, problems)
    return job


def _number_problems(value: Any, path: str = "") -> list[Problem]:
    """NaN, infinities and integers beyond 64 bits, anywhere in the job (the optimizer's own
    arguments and search-space values included): no field takes them, and the libraries the
    values go to would fail on them long after the run started, or train on nonsense."""
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _number_problems(item, f"{path}.{key}" if path else str(key))]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _number_problems(item, f"{path}.{i}" if path else str(i))]
    if isinstance(value, float) and not math.isfinite(value):
        return [Problem(path, value, "expected a finite number (NaN and infinities are refused)")]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        return [Problem(path, f"a number of {len(str(abs(value)))} digits", "expected a number that fits 64 bits")]
    return []
def _search_algorithm_problems(job: Job) -> list[Problem]:
    """What the search algorithm and a population-based scheduler can take from the space."""
    problems = []
    try:
        domains = search_space.parse_space(job.search.space)
    except ValueError:
        return []  # malformed entries are reported with the space
    algorithm = job.search.algorithm
    for path, domain in domains.items():
        where = f"search.space.{path}"
        if algorithm == "tpe" and domain.kind == "grid":
            problems.append(Problem(where, {"grid": list(domain.args[0])}, (
                "expected no grid entries with search.algorithm tpe: TPE proposes each value from how earlier "
                "trials scored and cannot walk a fixed grid; use choice, or search.algorithm random or grid")))
        if algorithm == "grid" and domain.kind not in ("grid", "fixed"):
            problems.append(Problem(where, {domain.kind: list(domain.args)}, (
                "expected grid entries or fixed values with search.algorithm grid; use grid: [values], or "
                "search.algorithm random (which walks grid entries and samples the rest)")))
    scheduler = job.search.scheduler
    if scheduler.type != "pbt":
        return problems
    if algorithm == "tpe":
        problems.append(Problem("search.algorithm", "tpe", (
            "expected random or grid with search.scheduler pbt: PBT changes a trial's configuration while it "
            "runs, which a TPE study cannot record; use tpe with asha, hyperband, median or none")))
    if job.executor == "ray_train":
        problems.append(Problem("search.scheduler.type", "pbt", (
            f"expected one worker per trial (executor in_trial) with pbt, not ray_train with "
            f"{job.resources.num_workers} workers: each exploit restarts a trial from another trial's "
            "checkpoint, but a Ray Train run resumes only from its own checkpoints, and each restart would pay "
            "a Ray Train start-up; use resources.num_workers: 1 with pbt, or asha, hyperband or median with "
            "ray_train")))
    if scheduler.perturbation_interval >= job.train.epochs:
        problems.append(Problem("search.scheduler.perturbation_interval", scheduler.perturbation_interval,
                                f"expected fewer than train.epochs ({job.train.epochs}), so trials can exploit"))
    for path in scheduler.mutate or []:
        why = _not_mutable(path, domains)
        if why:
            problems.append(Problem("search.scheduler.mutate", path, why))
    if scheduler.mutate is None and not search_space.pbt_mutations(job.search.space, None):
        problems.append(Problem("search.scheduler.type", "pbt", (
            "expected at least one uniform, loguniform, quniform or randint entry without `when` in "
            "search.space for PBT to perturb, e.g. train.learning_rate: {loguniform: [1.0e-4, 1.0e-1]}")))
    return problems


def _not_mutable(path: str, domains: dict) -> str | None:
    if path not in domains:
        return f"expected an entry of search.space: {', '.join(domains) or '(the space is empty)'}"
    if path == "train.epochs":
        return "expected a field other than train.epochs: PBT's schedule counts epochs"
    domain = domains[path]
    if domain.kind not in search_space.MUTABLE_KINDS or domain.when:
        return (f"expected a {', '.join(search_space.MUTABLE_KINDS)} entry without `when`: PBT perturbs numbers "
                "by a factor and copies the rest from the trial it exploits")
    return None


def _full_batch_problems(job: Job) -> list[Problem]:
    """cg and lbfgs need the whole training split at every iteration, and take their own arguments."""
    from finetune import full_batch

    problems = []
    if full_batch.may_use_full_batch(job) and job.dataset.in_memory is False:
        problems.append(Problem("train.optimizer", ", ".join(full_batch.full_batch_choices(job)), (
            "expected dataset.in_memory auto or true with cg or lbfgs: a full-batch method computes the loss over "
            "the whole training split at every iteration, which data streamed anew each epoch cannot give; use "
            "a Keras optimizer such as adam for streaming data")))
    if job.train.optimizer in FULL_BATCH_OPTIMIZERS:
        for name, why in full_batch.argument_problems(job.train.optimizer, job.train.optimizer_args):
            problems.append(Problem(f"train.optimizer_args.{name}", job.train.optimizer_args[name], why))
    return problems


def _cross_field_problems(job: Job) -> list[Problem]:
    """Rules that tie one field to another."""
    problems = []
    reported = reported_metrics(job.train.metrics)
    if job.search.metric not in reported:
        problems.append(Problem(
            "search.metric", job.search.metric,
            f"expected a metric the trials report: {', '.join(reported)} (add it to train.metrics)",
        ))
    grace = getattr(job.search.scheduler, "grace_period", None)
    if grace is not None and grace > job.train.epochs:
        problems.append(Problem(
            "search.scheduler.grace_period", grace,
            f"expected at most train.epochs ({job.train.epochs}); lower grace_period or raise epochs",
        ))
    if job.resources.executor == "in_trial" and job.resources.num_workers > 1:
        problems.append(Problem(
            "resources.executor", "in_trial",
            f"expected ray_train or auto with num_workers {job.resources.num_workers}: in_trial runs one worker",
        ))
    fine_tune = job.train.fine_tune
    if fine_tune is not None and fine_tune.after_epoch >= job.train.epochs:
        problems.append(Problem("train.fine_tune.after_epoch", fine_tune.after_epoch,
                                f"expected fewer than train.epochs ({job.train.epochs}), so phase 2 has epochs"))
    if fine_tune is not None and job.model.freeze == "none":
        problems.append(Problem("train.fine_tune", "phase 2 with model.freeze: none",
                                "expected model.freeze: all or {top_trainable: K}: phase 2 unfreezes what phase 1 froze"))
    if job.train.warmup_epochs >= job.train.epochs:
        problems.append(Problem("train.warmup_epochs", job.train.warmup_epochs,
                                f"expected fewer than train.epochs ({job.train.epochs})"))
    for flag in ("mixed_precision", "jit_compile"):
        if getattr(job.train, flag) and not job.resources.use_gpu:
            problems.append(Problem(f"train.{flag}", True, (
                "expected resources.use_gpu: true; on CPUs float16 math is emulated and XLA compilation of "
                "these small steps costs more than it saves, so the run would only be slower")))
    if job.model.task == "regression":
        if job.train.loss not in REGRESSION_LOSSES:
            problems.append(Problem("train.loss", job.train.loss,
                                    f"expected a regression loss with model.task regression: {', '.join(REGRESSION_LOSSES)}"))
        wrong = [m for m in job.train.metrics if m not in REGRESSION_METRICS]
        if wrong:
            problems.append(Problem("train.metrics", wrong,
                                    f"expected regression metrics with model.task regression: {', '.join(REGRESSION_METRICS)}"))
    elif job.train.loss in REGRESSION_LOSSES:
        problems.append(Problem("train.loss", job.train.loss,
                                "expected a classification loss; for a numeric target set model.task: regression"))
    problems.extend(_promotion_problems(job))
    if job.train.batch_size < job.resources.num_workers:
        problems.append(Problem(
            "train.batch_size", job.train.batch_size,
            f"expected at least resources.num_workers ({job.resources.num_workers}): it is the global batch",
        ))
    return problems


def _promotion_problems(job: Job) -> list[Problem]:
    """The gate measures a metric the job's models compute, on rows the search never saw."""
    problems = []
    promote = job.promote
    if promote is not None:
        names = ["loss", *job.train.metrics]
        if promote.metric is not None and promote.metric not in [f"test_{n}" for n in names]:
            problems.append(Problem("promote.metric", promote.metric,
                                    f"expected one of: {', '.join(f'test_{n}' for n in names)} (the job's loss or "
                                    "a train.metrics entry, measured on the held-out rows)"))
        split = job.dataset.split
        no_test = job.dataset.test is None and split.column is None and not split.test
        if promote.holdout is None and no_test:
            problems.append(Problem("promote.holdout", None, (
                "expected held-out rows to judge the models on: a promote.holdout source, dataset.split.test "
                "above 0, or a dataset.test source")))
        if promote.holdout is not None and promote.holdout.startswith("sklearn:"):
            problems.append(Problem("promote.holdout", promote.holdout, (
                "expected a file, folder or URI; for an embedded data set the run's test split is the held-out rows "
                "(leave promote.holdout unset)")))
        if promote.max_class_drop is not None and job.model.task == "regression":
            problems.append(Problem("promote.max_class_drop", promote.max_class_drop,
                                    "expected no per-class rule for model.task regression (there are no classes)"))
        if promote.alias and name_problem(promote.alias):
            problems.append(Problem("promote.alias", promote.alias, name_problem(promote.alias)))
    if job.registers and job.name == "registry" and (job.registry is None or job.registry.path is None):
        problems.append(Problem("name", job.name, (
            "expected another name: runs of a job named 'registry' would share <storage_path>/registry/ with the "
            "default model registry; rename the job or set registry.path")))
    return problems


def _space_problems(raw: dict) -> list[Problem]:
    """Each search-space entry: a known domain with sane bounds, at a field that exists, with every
    value it can take valid for that field."""
    space = (raw.get("search") or {}).get("space") if isinstance(raw.get("search"), dict) else None
    if not isinstance(space, dict):
        return []
    problems = []
    fixed = set_path(raw, "search.space", {})  # copied once: each value's candidate copies only this
    for dotted, spec in space.items():
        where = f"search.space.{dotted}"
        if not isinstance(dotted, str):
            problems.append(Problem(where, dotted, "expected a dotted field path such as train.learning_rate"))
            continue
        try:
            domain = search_space.parse_domain(spec)
        except ValueError as error:
            problems.append(Problem(where, spec, str(error)))
            continue
        for other, _ in domain.when:
            if other not in space and _field_problem(other):
                problems.append(Problem(f"{where}.when", other, f"expected a search-space entry or a field: {_field_problem(other)}"))
        field_problem = _field_problem(dotted)
        if field_problem:
            problems.append(Problem(where, dotted, field_problem))
            continue
        for value in domain.values_to_check():
            candidate = set_path(fixed, dotted, value)
            try:
                Job.model_validate(candidate)
            except ValidationError as error:
                for problem in _problems_from(error, candidate):
                    if problem.path == dotted or problem.path.startswith(dotted + "."):
                        problems.append(Problem(where, value, problem.expected))
                        break
    try:
        for dotted, what in search_space.check_conditions(space):
            problems.append(Problem(f"search.space.{dotted}.when", space[dotted].get("when"), what))
    except ValueError:
        pass  # malformed entries are reported above
    return problems


# Only these sections may vary from trial to trial: the data set is loaded and split once per run,
# and the search and resources sections describe the run itself.
SEARCHABLE_SECTIONS = ("model", "train")


def _field_problem(dotted: str) -> str | None:
    """None if `dotted` names a searchable field of the job, else what is wrong."""
    keys = dotted.split(".")
    if keys[0] not in SEARCHABLE_SECTIONS:
        return f"expected a field under {' or '.join(SEARCHABLE_SECTIONS)}: only those vary between trials"
    model: type[BaseModel] | None = Job
    annotation: Any = Job
    for i, key in enumerate(keys):
        if model is None:
            return None  # inside a free-form mapping: any key is allowed
        fields = model.model_fields
        if key not in fields:
            return _unknown_key_message(key, list(fields), ".".join(keys[:i]) or "the job")
        annotation = fields[key].annotation
        # A section, or a choice of a value and a section (model.freeze: all | {top_trainable: K}).
        model = next((m for m in map(_as_model, (annotation, *get_args(annotation))) if m is not None), None)
        if model is None and i < len(keys) - 1 and get_origin(annotation) is not dict:
            return f"expected a field; {'.'.join(keys[:i + 1])} holds a value, not fields of its own"
    if _as_model(annotation) is not None:
        return "expected a single field, not a whole section; name a field inside it"
    return None


def _as_model(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _unknown_key_message(key: str, known: list[str], parent: str) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown field {key!r} in {parent}; {hint}expected one of: {', '.join(known)}"


def _problems_from(error: ValidationError, raw: dict) -> list[Problem]:
    problems = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        # Discriminated unions add the tag to the location: scheduler.asha.grace_period.
        if len(loc) >= 3 and loc[:2] == ["search", "scheduler"] and loc[2] in scheduler_types():
            loc = loc[:2] + loc[3:]
        path = ".".join(loc)
        kind = item["type"]
        got = item.get("input")
        if kind == "extra_forbidden":
            parent = ".".join(loc[:-1])
            model = _model_at(loc[:-1], raw)
            known = list(model.model_fields) if model else []
            expected = _unknown_key_message(loc[-1], known, parent or "the job")
        elif kind == "missing":
            expected = "expected this required field to be set"
            got = "nothing"
        elif kind == "union_tag_invalid":
            expected = f"expected scheduler type one of: {', '.join(scheduler_types())}"
            got = (got or {}).get("type") if isinstance(got, dict) else got
            path = "search.scheduler.type"
        else:
            message = item["msg"]
            message = re.sub(r"^Value error, ", "", message)
            message = re.sub(r"^Input should be ", "expected ", message)
            message = re.sub(r"^String should match pattern .*", "expected letters, digits, '_', '-' or '.', starting with a letter or digit", message)
            expected = message if message.startswith("expected") else f"expected {message[0].lower()}{message[1:]}"
        if isinstance(got, dict) and path == "":
            got = "the job"
        problems.append(Problem(path, got, expected))
    return problems


def _model_at(loc: list[str], raw: dict) -> type[BaseModel] | None:
    """The schema model at a location of the raw job, for listing the fields it accepts."""
    model: type[BaseModel] | None = Job
    node: Any = raw
    for key in loc:
        node = node.get(key) if isinstance(node, dict) else None
        if model is None or key not in model.model_fields:
            return None
        if key == "scheduler":
            kind = node if isinstance(node, str) else (node or {}).get("type") if isinstance(node, dict) else None
            model = scheduler_types().get(kind)
        else:
            model = _as_model(model.model_fields[key].annotation)
    return model
