"""Paths a job names, made absolute once, when the job is loaded.

A relative path in a job file is relative to the folder of the file that names it (as `extends:`
is), wherever the command runs; a relative path given with `--set` is relative to the working
directory, as any path on a command line. What the run folder's `job.yaml` records, and what
trials, Ray Train workers and a resumed run read, are the absolute paths. Trials run in folders of
their own (Ray Tune changes each trial's working directory), so a path left relative would
name another file there.

URIs (`s3://...`, `file://...`) and the names a field takes that are not paths (`sklearn:digits`,
`builtin:mlp`, `keras:ResNet50`, `registry:NAME@latest`, `weights: imagenet`) stay as written.
"""

from __future__ import annotations

import os
from typing import Any

# Fields whose value may be a local path, with the prefixes (ending in ':') and words that are not paths.
PATH_FIELDS: dict[str, tuple[str, ...]] = {
    "storage_path": (),
    "dataset.source": ("sklearn:",),
    "dataset.train.source": (),
    "dataset.validation.source": (),
    "dataset.test.source": (),
    "model.base": ("builtin:", "keras:", "registry:"),
    "model.weights": ("imagenet", "none"),
    "tracking.mlflow": ("databricks",),  # a path names an SQLite file; URIs (sqlite:///, http://) stay
    "model.fallback_base": ("builtin:", "keras:", "registry:"),
    "registry": (),
    "registry.path": (),
    "promote.holdout": (),
}
SPACE = "search.space"
DEFAULT_STORAGE = "runs"  # under the working directory when a job names no storage_path


def resolve_paths(value: Any, base_dir: str, at: str = "") -> Any:
    """A copy of `value`, the part of a job found at the dotted path `at` (the whole job by
    default), with every relative path in it made absolute against `base_dir`."""
    if at == SPACE and isinstance(value, dict):
        return {entry: _resolve_domain(entry, spec, base_dir) for entry, spec in value.items()}
    if at.startswith(SPACE + "."):
        return _resolve_domain(at[len(SPACE) + 1:], value, base_dir)
    if at in PATH_FIELDS and not isinstance(value, dict):  # `registry:` is a path or a mapping with one
        return absolute_path(value, PATH_FIELDS[at], base_dir)
    if isinstance(value, dict):
        return {key: resolve_paths(item, base_dir, f"{at}.{key}" if at else str(key)) for key, item in value.items()}
    return value


def is_local_path(value: Any, not_paths: tuple[str, ...]) -> bool:
    """Whether a field's value names a local file or folder (not a URI, not a name such as
    `sklearn:digits`). Anything that is not a string is left to pydantic to report."""
    if not isinstance(value, str) or not value.strip() or "://" in value:
        return False
    return value not in not_paths and value.partition(":")[0] + ":" not in not_paths


def absolute_path(value: Any, not_paths: tuple[str, ...], base_dir: str) -> Any:
    """`value` made absolute against `base_dir` if it is a relative local path; anything else as is."""
    if not is_local_path(value, not_paths):
        return value
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))


def _resolve_domain(entry: str, spec: Any, base_dir: str) -> Any:
    """A search-space entry over a path field: each value it can take, resolved."""
    if entry not in PATH_FIELDS:
        return spec
    not_paths = PATH_FIELDS[entry]
    if isinstance(spec, dict):
        return {key: [absolute_path(v, not_paths, base_dir) for v in values]
                if key in ("choice", "grid") and isinstance(values, list) else values
                for key, values in spec.items()}
    return absolute_path(spec, not_paths, base_dir)


def local_inputs(job) -> dict[str, str]:
    """field -> local path, for every file or folder a validated job reads (not where it writes),
    outside URIs and the names that are not paths."""
    found = {}
    candidates = {
        "dataset.source": job.dataset.source,
        **{f"dataset.{name}.source": getattr(job.dataset, name).source
           for name in ("train", "validation", "test") if getattr(job.dataset, name) is not None},
        "model.base": job.model.base,
        "model.weights": job.model.weights,
        "model.fallback_base": job.model.fallback_base,
        "promote.holdout": job.promote.holdout if job.promote else None,
    }
    for field, value in candidates.items():
        path = value.removeprefix("file://") if isinstance(value, str) else value
        if is_local_path(path, PATH_FIELDS[field]):
            found[field] = path
    return found


def check_inputs_exist(job, source: str) -> None:
    """A JobError naming each local model or weights file the job names that does not exist, found
    before anything starts. Data sources are checked, with what they hold, when the data loads
    (finetune.data); files behind URIs when the pre-flight step loads the model."""
    from finetune.errors import JobError, Problem

    missing = [Problem(field, path, "expected an existing file (a relative path in a job file starts "
                                    "from the job file's folder)")
               for field, path in local_inputs(job).items() if field.startswith("model.") and not os.path.exists(path)]
    if missing:
        raise JobError(source, missing)
