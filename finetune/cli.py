"""`finetune validate JOB` and `finetune run JOB`: parse the command line and call the runner.

User errors print as one message, without a traceback, and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys

from finetune.errors import UserError


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from finetune.job import load_job

        job = load_job(args.job, args.overrides)
        if args.command == "validate":
            print(f"{args.job}: valid ({job.search.num_samples} samples, executor {job.executor})")
            return 0
        from finetune.runner import run_job

        run_job(job, address=args.address, verbose=args.verbose)
        return 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
