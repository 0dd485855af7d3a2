"""`finetune validate|plan|run|nightly|resume|submit|models|report|runs|show|schema`: parse the
command line and call the module that does the work.

User errors print as one message, without a traceback, and exit with code 2.
"""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import sys
import threading

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

    plan = commands.add_parser("plan", help="what a run would do: trials, trials at once and why, rungs, epochs")
    add_job_arguments(plan)
    plan.add_argument("--address", default=None,
                      help="Ray cluster to ask (default: RAY_ADDRESS if set, else this machine, starting no Ray)")

    def add_view_arguments(command: argparse.ArgumentParser) -> None:
        command.add_argument("--verbose", action="store_true",
                             help="show the Ray workers' own logs (else they go to the run folder's worker.log)")
        command.add_argument("-q", "--quiet", action="store_true", help="print only the final result")

    run = commands.add_parser("run", help="run a job's search")
    add_job_arguments(run)
    run.add_argument("--address", default=None,
                     help="Ray cluster to join (default: RAY_ADDRESS if set, else a local Ray)")
    add_view_arguments(run)
    run.add_argument("--dry-run", action="store_true", help="print the plan (as `finetune plan`) and start nothing")
    run.add_argument("--resume", action="store_true",
                     help="continue the newest unfinished run of this job (after its driver was killed)")

    nightly = commands.add_parser("nightly", help="one retraining a night: register, judge against the champion, "
                                                  "promote; a repeated night does nothing")
    add_job_arguments(nightly)
    add_night_arguments(nightly)
    nightly.add_argument("--address", default=None, help="Ray cluster to join (as for run)")
    add_view_arguments(nightly)
    nightly.add_argument("--print-submission-id", action="store_true",
                         help="print this night's submission id (for ray job submit --submission-id) and exit")

    resume = commands.add_parser("resume", help="continue an unfinished run folder")
    resume.add_argument("run_dir", metavar="RUN", help="a run folder, such as runs/digits/20261124-101500-ab12")
    resume.add_argument("--address", default=None, help="Ray cluster to join (as for run)")
    add_view_arguments(resume)

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
    submit.add_argument("--nightly", action="store_true",
                        help="submit `finetune nightly JOB`, under this night's submission id unless one is given")
    add_night_arguments(submit)

    models = commands.add_parser("models", help="the model registry: versions, aliases, promotion, verification")
    add_models_commands(models)

    report = commands.add_parser("report", help="(re)write a run's report.html, finished or not")
    report.add_argument("run_dir", metavar="RUN", help="a run folder")
    runs = commands.add_parser("runs", help="list runs with their state, best metric and wall time")
    runs.add_argument("name", nargs="?", default=None, metavar="NAME", help="only the runs of this job")
    runs.add_argument("--storage-path", default="runs", help="where the runs are (default: runs)")
    show = commands.add_parser("show", help="a run's summary, as people read it")
    show.add_argument("run_dir", metavar="RUN", help="a run folder")
    commands.add_parser("schema", help="print the JSON Schema of job files")
    return parser


def progress_mode(args: argparse.Namespace) -> str:
    """quiet with -q; a live view on a terminal; else one plain line per event."""
    if args.quiet:
        return "quiet"
    return "live" if sys.stdout.isatty() and os.environ.get("TERM", "") != "dumb" else "plain"


def add_night_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--date", default=None, metavar="YYYY-MM-DD",
                         help="the night to run (default: today, UTC); an earlier date backfills")
    command.add_argument("--force", action="store_true",
                         help="run even when this night already ran, or the data is the champion's")


def add_models_commands(models: argparse.ArgumentParser) -> None:
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help: str) -> argparse.ArgumentParser:
        command = actions.add_parser(name, help=help)
        command.add_argument("--registry", default=None,
                             help="the registry folder or URI (default: FINETUNE_REGISTRY, else runs/registry)")
        return command

    action("list", help="models and their versions, with their aliases").add_argument("name", nargs="?", metavar="NAME")
    action("show", help="one version's metadata").add_argument("ref", metavar="NAME[@VERSION|ALIAS]")
    action("history", help="the audit log of a model's alias changes").add_argument("name", metavar="NAME")
    promote = action("promote", help="point an alias (champion by default) at a version")
    promote.add_argument("name", metavar="NAME")
    promote.add_argument("version", metavar="VERSION", help="such as v3")
    promote.add_argument("--alias", default="champion")
    promote.add_argument("--reason", required=True, help="why; kept in the audit log")
    rollback = action("rollback", help="give the alias back to the version that held it before")
    rollback.add_argument("name", metavar="NAME")
    rollback.add_argument("--alias", default="champion")
    rollback.add_argument("--reason", default=None, help="why; kept in the audit log")
    for name, help in (("verify", "check every file of a version (or every version) against its manifest"),
                       ("export", "write a verified, decrypted model.keras and classes.json to DIR, for serving")):
        command = action(name, help=help)
        command.add_argument("ref", metavar="NAME[@VERSION|ALIAS]")
        if name == "export":
            command.add_argument("directory", metavar="DIR")
        command.add_argument("--require-signature", action="store_true",
                             help="refuse versions whose manifest is not signed with FINETUNE_SIGNING_KEY")


def run_models_command(args) -> int:
    from finetune.registry import commands

    store = commands.open_store(args.registry)
    if args.action == "list":
        return commands.list_models(store, args.name)
    if args.action == "show":
        return commands.show(store, args.ref)
    if args.action == "history":
        return commands.history(store, args.name)
    if args.action == "promote":
        return commands.promote(store, args.name, args.version, args.alias, args.reason)
    if args.action == "rollback":
        return commands.rollback(store, args.name, args.alias, args.reason)
    if args.action == "verify":
        return commands.verify(store, args.ref, args.require_signature)
    return commands.export(store, args.ref, args.directory, args.require_signature)


def run_nightly(args) -> int:
    from finetune.job import load_job
    from finetune.registry.nightly import Night, night_date, nightly_job

    job = nightly_job(load_job(args.job, args.overrides))
    night = Night(night_date(args.date), args.force)
    if args.print_submission_id:
        print(night.submission_id(job.name))
        return 0
    print(f"night {night.date} of {job.name} (submission id {night.submission_id(job.name)})", flush=True)
    from finetune.runner import run_job

    run_job(job, address=args.address, verbose=args.verbose, night=night, progress=progress_mode(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "resume":
            from finetune.runner import resume_run

            resume_run(args.run_dir, address=args.address, verbose=args.verbose, progress=progress_mode(args))
            return 0
        if args.command in ("report", "runs", "show", "schema"):
            return browse(args)
        if args.command == "submit":
            from finetune.submit import submit

            return submit(args.job, args.overrides, args.address, args.submission_id, args.runtime_env,
                          args.working_dir, args.follow, nightly=args.nightly, date=args.date, force=args.force)
        if args.command == "models":
            return run_models_command(args)
        if args.command == "nightly":
            return run_nightly(args)
        from finetune.job import load_job

        job = load_job(args.job, args.overrides)
        if args.command == "validate":
            from finetune.job import check_inputs_exist

            check_inputs_exist(job, args.job)
            print(f"{args.job}: valid ({job.search.num_samples} samples, executor {job.executor})")
            return 0
        if args.command == "plan" or args.dry_run:
            from finetune.plan import format_plan, make_plan

            print(format_plan(make_plan(job, args.address), args.job))
            return 0
        from finetune.runner import run_job

        run_job(job, address=args.address, verbose=args.verbose, resume=args.resume, progress=progress_mode(args))
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


def browse(args: argparse.Namespace) -> int:
    """The commands that read runs and write no run: report, runs, show, schema."""
    if args.command == "schema":
        from finetune.job.json_schema import schema_text

        print(schema_text(), end="")
        return 0
    from finetune import run_folders

    if args.command == "runs":
        print(run_folders.format_runs(run_folders.list_runs(args.storage_path, args.name)))
        return 0
    if args.command == "show":
        print(run_folders.format_show(run_folders.read_run(args.run_dir)))
        return 0
    from finetune.report import write_report

    print(f"report: {write_report(args.run_dir)}")
    return 0


def entry() -> None:
    """The `finetune` command (and `python -m finetune`): run it, then end the process without
    the C++ teardown that pyarrow's thread pools can abort in."""
    end_process(main())


def end_process(code: int) -> None:
    """Exit with `code` as Python's own exit would, minus native library teardown.

    pyarrow's reader threads outlive the read; at interpreter finalisation a C++ thread destructor
    can meet one still joinable and abort the process ("terminate called without an active
    exception", SIGABRT) after all of our work was done and printed: apache/arrow#34314,
    apache/arrow#39862, open as of pyarrow 26.0.1. On this 2-core machine `finetune runs` aborted in
    about one run in five under load (CI saw it). So do what finalisation does that matters to
    us, in its order: wait for non-daemon threads, run the atexit handlers (Ray's shutdown,
    logging's flush), flush stdout and stderr; then `os._exit`, which skips only the destructors.
    """
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
