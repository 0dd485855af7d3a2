"""`finetune validate|run|resume|submit`: parse the command line and call the runner.

User errors print as one message, without a traceback, and exit with code 2.
"""

from __future__ import annotations

import argparse
import signal
import sys

from finetune.errors import Interrupted, RunFailedError, StopNow, StorageError, UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finetune", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_job_arguments(command: argparse.ArgumentParser) -> None:
        command.add_argument("job", metavar="JOB", help="a job file, such as jobs/digits.yaml")
        command.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                             help="override a field, e.g. --set train.epochs=3 (repeatable)")

    validate = commands.add_parser("validate", help="check a job file without starting Ray")
    add_job_arguments(validate)

    run = commands.add_parser("run", help="run a job's search")
    add_job_arguments(run)
    run.add_argument("--address", default=None,
                     help="Ray cluster to join (default: RAY_ADDRESS if set, else a local Ray)")
    run.add_argument("--verbose", action="store_true", help="show the Ray workers' own logs")
    run.add_argument("--resume", action="store_true",
                     help="continue the newest unfinished run of this job (after its driver was killed)")

    resume = commands.add_parser("resume", help="continue an unfinished run folder")
    resume.add_argument("run_dir", metavar="RUN", help="a run folder, such as runs/digits/20261124-101500-ab12")
    resume.add_argument("--address", default=None, help="Ray cluster to join (as for run)")
    resume.add_argument("--verbose", action="store_true", help="show the Ray workers' own logs")

    submit = commands.add_parser("submit", help="submit a job to a Ray cluster (ray job submit, in one command)")
    add_job_arguments(submit)
    submit.add_argument("--address", default=None,
                        help="the cluster's job server, e.g. http://HEAD:8265 (default: RAY_ADDRESS)")
    submit.add_argument("--submission-id", default=None, help="a unique id; a duplicate is refused")
    submit.add_argument("--runtime-env", default=None, metavar="FILE",
                        help="runtime environment YAML, such as cluster/runtime_env.yaml")
    submit.add_argument("--working-dir", default=".", help="folder uploaded with the job (default: .)")
    submit.add_argument("--no-follow", dest="follow", action="store_false",
                        help="return once submitted instead of streaming the logs")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "resume":
            from finetune.runner import resume_run

            resume_run(args.run_dir, address=args.address, verbose=args.verbose)
            return 0
        if args.command == "submit":
            from finetune.submit import submit

            return submit(args.job, args.overrides, args.address, args.submission_id, args.runtime_env,
                          args.working_dir, args.follow)
        from finetune.job import load_job

        job = load_job(args.job, args.overrides)
        if args.command == "validate":
            from finetune.job import check_inputs_exist

            check_inputs_exist(job, args.job)
            print(f"{args.job}: valid ({job.search.num_samples} samples, executor {job.executor})")
            return 0
        from finetune.runner import run_job

        run_job(job, address=args.address, verbose=args.verbose, resume=args.resume)
        return 0
    except (UserError, RunFailedError, StorageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except (Interrupted, StopNow) as error:
        # Stopped on a signal: what was kept and how to resume. A further signal while Ray shuts
        # down ends the process at once.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        print(str(error) if isinstance(error, Interrupted) else "stopped at once", file=sys.stderr, flush=True)
        return 128 + error.signum


if __name__ == "__main__":
    sys.exit(main())
