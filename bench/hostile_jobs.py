"""How fast are hostile job files refused? (issue: hostile and broken inputs)

    python bench/hostile_jobs.py [--repeat 5] [--limit 60]

Writes each file below to a temporary folder and times `finetune validate` on it in this process
(finetune.cli.main, the median of REPEAT runs), side by side with what main did before the limits:
PyYAML's `yaml.safe_load` of the same text followed by today's validation and its message, in a
process of its own stopped after LIMIT seconds ("error" when it fails outright). No Ray starts. Prints a Markdown table for docs/benchmarks.md;
the target is "refused in well under a second".
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from finetune.cli import main
from finetune.errors import JobError
from finetune.job import validate_job_dict

REPO = Path(__file__).resolve().parent.parent


def alias_bomb(width: int = 9, levels: int = 9) -> str:
    lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nname: bomb\nsearch:\n  space:\n    train.learning_rate: {{choice: *a{levels - 1}}}\n"


CASES = {
    "jobs/digits.yaml (a sound job)": lambda: (REPO / "jobs" / "digits.yaml").read_text(),
    "alias bomb, 9 levels of 9": alias_bomb,
    "nesting 5,000 deep": lambda: "name: x\nmodel: {head: {units: " + "[" * 5000 + "]" * 5000 + "}}\n",
    "64 MiB of comments": lambda: "name: x\n" + "#" * (64 << 20) + "\n",
    "a grid of 4,900 values": lambda: "name: x\nsearch:\n  space:\n    train.learning_rate: {grid: [" +
                              ", ".join(f"{1e-4 * (i + 1):.6f}" for i in range(4_900)) + "]}\n",
    "a grid of 20,000 values": lambda: "name: x\nsearch:\n  space:\n    train.learning_rate: {grid: [" +
                               ", ".join(f"{1e-4 * (i + 1):.6f}" for i in range(20_000)) + "]}\n",
}


def time_new(path: Path, repeat: int) -> tuple[float, int]:
    times, code = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            code = main(["validate", str(path)])
        times.append(time.perf_counter() - started)
    return statistics.median(times), code


def time_old(path: Path, repeat: int, limit: float) -> str:
    """The old path's median time, each run in a process of its own, stopped after `limit` s."""
    import subprocess

    times = []
    for _ in range(repeat):
        try:
            done = subprocess.run([sys.executable, __file__, "--old", str(path)], capture_output=True, text=True,
                                  timeout=limit)
        except subprocess.TimeoutExpired:
            return f"> {limit:.0f} (stopped)"
        if done.returncode != 0:
            return f"error ({done.stderr.strip().splitlines()[-1].split(':')[0]})"
        times.append(float(done.stdout.split()[-1]))
    return f"{statistics.median(times):.3f}"


def old_path(path: Path) -> None:
    """What main did: PyYAML's safe_load, then validation and its message."""
    started = time.perf_counter()
    raw = yaml.safe_load(path.read_text())
    try:
        validate_job_dict(raw if isinstance(raw, dict) else {}, source=str(path))
    except JobError as error:
        str(error)
    print(time.perf_counter() - started)


def run(repeat: int, limit: float) -> None:
    print(f"Machine: {platform.machine()}, Python {platform.python_version()}; median of {repeat} runs; the old "
          f"path in a process of its own, stopped after {limit:.0f} s.\n")
    print("| file | validate now (s) | exit | yaml.safe_load + validation, no limits (s) |")
    print("| --- | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as folder:
        for name, make in CASES.items():
            path = Path(folder) / "job.yaml"
            path.write_text(make())
            new, code = time_new(path, repeat)
            old = time_old(path, repeat, limit)
            print(f"| {name} | {new:.3f} | {code} | {old} |", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--limit", type=float, default=60.0, help="seconds before the old path is stopped")
    parser.add_argument("--old", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.old:
        old_path(arguments.old)
    else:
        run(arguments.repeat, arguments.limit)
