"""Reading a job file: YAML, its `extends:` chain, `--set` overrides, then validation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from finetune.errors import JobError, Problem
from finetune.job.dotted import deep_merge, set_path
from finetune.job.paths import DEFAULT_STORAGE, resolve_paths
from finetune.job.safe_yaml import YamlLimitError, load_yaml, read_yaml_file
from finetune.job.schema import Job
from finetune.job.validation import validate_job_dict


def load_job(path: str | Path, overrides: list[str] = ()) -> Job:
    """Read a job file, resolve `extends:`, apply `--set path=value` overrides and validate. Every
    path in the job comes out absolute (finetune.job.paths)."""
    path = Path(path)
    raw = read_job_dict(path)
    for override in overrides:
        dotted, value = parse_override(override)
        raw = set_path(raw, dotted, resolve_paths(value, os.getcwd(), at=dotted))
    raw.setdefault("storage_path", os.path.abspath(DEFAULT_STORAGE))
    return validate_job_dict(raw, source=str(path))


# How many files an `extends:` chain may hold, the job file included.
MAX_EXTENDS = 16


def read_job_dict(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The job as a plain dict, with its `extends:` chain merged (the child wins)."""
    data = read_job_file(path, _seen)
    parent = data.pop("extends", None)
    data = resolve_paths(data, os.path.abspath(path.parent))
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent.strip() or "\0" in parent:
        raise JobError(str(path), [Problem("extends", parent, "expected the path of another job file")])
    if len(_seen) + 2 > MAX_EXTENDS:
        raise JobError(str(path), [Problem("extends", parent, (
            f"expected a chain of at most {MAX_EXTENDS} job files (the limit on extends:); this one is longer"))])
    parent_path = path.parent / parent
    if not _is_file(parent_path):
        raise JobError(str(path), [Problem("extends", parent, (
            f"expected an existing job file; found none at {parent_path} (a relative path starts from the "
            "folder of the file that names it)"))])
    base = read_job_dict(parent_path, (*_seen, path.resolve()))
    return deep_merge(base, data)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def read_job_file(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """One job file's own mapping, read safely and within the limits of finetune.job.safe_yaml; a
    JobError naming the file for anything else."""
    try:
        resolved = path.resolve()
        if resolved in seen:
            chain = " -> ".join(str(p) for p in (*seen, resolved))
            raise JobError(str(path), [Problem("extends", str(path), f"expected no cycle; found {chain}")])
        if not path.is_file():
            raise JobError(str(path), [Problem("", str(path), "expected an existing job file (YAML)")])
        data = read_yaml_file(path)
    except YamlLimitError as error:
        raise JobError(str(path), [Problem("", error.got, error.expected)]) from None
    except (OSError, ValueError, RuntimeError) as error:  # unreadable, a name the OS refuses, a symlink loop
        raise JobError(str(path), [Problem("", str(path), f"expected a readable job file: {error}")]) from None
    except yaml.YAMLError as error:
        raise JobError(str(path), [Problem("", "invalid YAML", f"expected valid YAML: {error}")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise JobError(str(path), [Problem("", data, "expected a mapping of fields at the top level")])
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """`train.epochs=3` -> ("train.epochs", 3); the value is read as YAML."""
    dotted, sep, value = text.partition("=")
    if not sep or not dotted.strip():
        raise JobError(
            "--set", [Problem("--set", text, "expected PATH=VALUE, for example --set train.epochs=3")]
        )
    try:
        return dotted.strip(), load_yaml(value)
    except YamlLimitError as error:
        raise JobError("--set", [Problem(dotted, error.got, error.expected)]) from None
    except yaml.YAMLError as error:
        raise JobError("--set", [Problem(dotted, value, f"expected a YAML value: {error}")]) from None


def to_yaml(job: Job) -> str:
    """The fully resolved job, as a file that reproduces it."""
    return yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False)
