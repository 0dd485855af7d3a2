"""`finetune submit JOB --address http://HEAD:8265`: the `ray job submit` a user would type, in
one command: validate the job here, upload the working directory, start `python -m finetune run
JOB` (or, with `--nightly`, `python -m finetune nightly JOB --date D` under the night's submission
id) as the job's driver on the cluster, and follow its logs."""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time

import yaml

from finetune.errors import UserError
from finetune.job import load_job

DEFAULT_ADDRESS = "http://127.0.0.1:8265"


def submit(job_file: str, overrides: list[str], address: str | None = None, submission_id: str | None = None,
           runtime_env_file: str | None = None, working_dir: str = ".", follow: bool = True, out=None,
           nightly: bool = False, date: str | None = None, force: bool = False) -> int:
    """Submit the job; with `follow`, stream its logs and return 0 if it succeeded, 1 if not.

    nightly: the driver runs `finetune nightly JOB --date D` (D: `date`, else today in UTC, fixed
    here so that a job queued past midnight still runs its own night), under the submission id
    `nightly-<name>-<D>` unless one is given. The cluster refuses a second job of that id, so a
    second submission that night (a retried submitter pod) follows the first job instead, and
    returns its outcome."""
    out = out or sys.stdout
    entrypoint, submission_id = plan_submission(job_file, overrides, working_dir, submission_id, nightly, date, force)
    runtime_env = _runtime_env(runtime_env_file)
    runtime_env["working_dir"] = os.path.abspath(working_dir)

    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise UserError(f"--address: cannot reach a Ray cluster's job server at {address}: {error}. Check the "
                        "address (the dashboard's, port 8265 by default) and that the cluster runs.") from None
    try:
        client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=submission_id)
    except RuntimeError as error:
        if "already exists" in str(error) and nightly:
            # A retried submitter (its pod restarted) on the same night: follow the night's job.
            print(f"{submission_id} was already submitted to {address} tonight; not submitting it again",
                  file=out, flush=True)
            return _follow(client, submission_id, out) if follow else 0
        if "already exists" in str(error):
            raise UserError(f"--submission-id: {submission_id} already exists on {address}; the cluster refuses a "
                            "duplicate id (which keeps a nightly run from starting twice). Pick another id.") from None
        raise
    print(f"submitted {submission_id} to {address}: {entrypoint}", file=out, flush=True)
    return _follow(client, submission_id, out) if follow else 0


def plan_submission(job_file: str, overrides: list[str], working_dir: str = ".", submission_id: str | None = None,
                    nightly: bool = False, date: str | None = None, force: bool = False) -> tuple[str, str]:
    """The entrypoint and submission id of a job, checked here, not on the cluster."""
    job = load_job(job_file, overrides)  # a bad job fails here, not on the cluster
    working_dir = os.path.abspath(working_dir)
    relative = os.path.relpath(os.path.abspath(job_file), working_dir)
    if relative.startswith(".."):
        raise UserError(f"submit: {job_file} is outside the working directory {working_dir}, which is what gets "
                        "uploaded; move the job file under it or pass --working-dir.")
    command = ["python -m finetune run", shlex.quote(relative)]
    if nightly:
        from finetune.registry.nightly import Night, night_date

        night = Night(night_date(date), force)
        command = ["python -m finetune nightly", shlex.quote(relative), "--date", night.date,
                   *(["--force"] if force else [])]
        submission_id = submission_id or night.submission_id(job.name)
    elif date is not None or force:
        raise UserError("submit: --date and --force are for nightly jobs; add --nightly.")
    entrypoint = " ".join([*command, *(f"--set {shlex.quote(o)}" for o in overrides)])
    return entrypoint, submission_id or f"finetune-{job.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _follow(client, submission_id: str, out) -> int:
    from ray.job_submission import JobStatus

    async def stream() -> None:
        async for lines in client.tail_job_logs(submission_id):
            print(lines, end="", file=out, flush=True)

    asyncio.run(stream())
    status = client.get_job_status(submission_id)
    print(f"{submission_id}: {status.value}", file=out, flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1


def _runtime_env(path: str | None) -> dict:
    if path is None:
        return {}
    try:
        with open(path) as handle:
            loaded = yaml.safe_load(handle) or {}
    except OSError as error:
        raise UserError(f"--runtime-env: cannot read {path}: {error}") from None
    except yaml.YAMLError as error:
        raise UserError(f"--runtime-env: {path} is not valid YAML: {error}") from None
    if not isinstance(loaded, dict):
        raise UserError(f"--runtime-env: {path} must hold a mapping (env_vars, excludes, pip...).")
    return loaded
