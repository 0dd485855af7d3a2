"""The live view's board on plain values, and drawn by rich as a terminal shows it. The view
under a real pseudo-terminal and the plain lines through a pipe are in tests/test_cli_views.py."""

from __future__ import annotations

import io

from rich.console import Console

from finetune.live_view import SearchBoard, render


def board() -> SearchBoard:
    b = SearchBoard("val_accuracy", "max", epochs=4, num_trials=4, trials_at_once=2, started=0.0)
    b.start("a_00000", {"train.learning_rate": 0.01})
    b.start("a_00001", {"train.learning_rate": 0.001})
    b.result("a_00000", 1, 0.5, 0.3, now=10.0)
    b.result("a_00001", 1, 0.7, 0.3, now=10.0)
    b.result("a_00001", 2, 0.9, 0.3, now=20.0)
    return b


def test_the_board_counts_trials_and_keeps_the_best_and_its_config():
    b = board()
    assert b.best == 0.9 and b.best_config == {"train.learning_rate": 0.001}
    b.end("a_00000", "stopped_early")
    b.start("a_00002", {"train.learning_rate": 0.1})
    b.result("a_00002", 1, float("nan"), 0.3, now=25.0)
    b.end("a_00002", "failed")
    assert (b.count("running"), b.count("stopped_early"), b.count("failed")) == (1, 1, 1)
    assert b.best == 0.9  # a NaN never becomes the best


def test_the_estimate_of_time_left_counts_pending_trials_at_the_length_of_ended_ones():
    b = board()
    # 3 epochs in 20 s; running: 3 + 2 epochs left; pending: 2 trials x 4 epochs (none ended yet).
    assert b.seconds_left(now=20.0) == (5 + 8) / (3 / 20)
    b.end("a_00000", "stopped_early")  # ended after 1 epoch: pending trials now count 1 epoch each
    assert b.seconds_left(now=20.0) == (2 + 2) / (3 / 20)
    assert SearchBoard("loss", "min", 3, 2, 1).seconds_left() is None  # nothing reported yet


def test_the_view_fits_the_screen_and_shows_what_the_issue_lists():
    b = board()
    for index in range(2, 30):
        b.start(f"a_{index:05d}", {"train.learning_rate": 0.1})
    console = Console(file=io.StringIO(), width=110, height=16, record=True, force_terminal=True)
    console.print(render(b, height=16, now=20.0))
    text = console.export_text()
    assert len(text.splitlines()) <= 16
    assert "0/4 trials done" in text and "running 30 (at most 2 at once)" in text
    assert "best val_accuracy 0.9000  learning_rate=0.001" in text
    assert "elapsed 20s" in text and "left ~" in text
    assert "2/4" in text and "0.9000" in text  # trial 2: epoch 2 of 4 and its metric
    assert "more running" in text
