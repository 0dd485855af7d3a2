"""The live view as a user sees it: `finetune run` on a real pseudo-terminal (pexpect), refreshing
in place, with the workers' noise in the run folder's ray.log instead of on the screen. The plain
lines through a pipe and `-q` are checked in tests/test_cli.py."""

from __future__ import annotations

import os
import re
import sys

import pexpect
import pytest
from conftest import write_job

pytestmark = pytest.mark.ray

NOISE = ("Token authentication", "cuda", "absl", "oneDNN", "pid=", "WARNING", "Traceback")


@pytest.mark.slow
def test_on_a_terminal_the_live_view_refreshes_in_place_and_the_noise_goes_to_ray_log(tmp_path, tiny_job_text):
    write_job(tmp_path, tiny_job_text)
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "110", "LINES": "30"}
    env.pop("RAY_ADDRESS", None)
    child = pexpect.spawn(sys.executable, ["-m", "finetune", "run", "job.yaml"], cwd=str(tmp_path), env=env,
                          dimensions=(30, 110), encoding="utf-8", timeout=600)
    child.expect(pexpect.EOF)
    child.close()
    screen = child.before
    assert child.exitstatus == 0, screen[-3000:]
    assert re.search(r"\x1b\[\d*A", screen)  # the cursor goes back up: the view is redrawn in place
    assert screen.count("trials done") >= 2 and "2/2 trials done" in screen
    assert "best val_accuracy" in screen and "elapsed" in screen and "left ~" in screen
    assert "] trial 1/2 started" not in screen  # not the plain lines
    assert "summary: " in screen and "report: " in screen
    for noise in NOISE:
        assert noise not in screen, noise
    run_dir = next((tmp_path / "runs" / "tiny").iterdir())
    log = (run_dir / "ray.log").read_text()
    assert "Started a local Ray instance" in log and "pid=" in log
    assert (run_dir / "report.html").exists()
