"""A Ray Train run's reports to the Tune trial that started it, every one of them.

Ray Train v2's own `TuneReportCallback` (ray/tune/integration/ray_train.py) hands each report to
the Tune trial's main thread through a one-slot queue, while the trial's function thread announces
its end through another one-slot queue. When a run's last report is still waiting as the function
returns, Tune either loses that epoch (seen in CI: "no checkpoint of trial ... is left", Ray Train
having kept the checkpoint of an epoch Tune never heard of) or deadlocks, its main thread blocked
putting that report in the slot the end announcement already holds (a hung test, every process
idle). Here the Train controller puts every report in an unbounded queue, and the trial's own
thread reports each to Tune, all of them before it returns.
"""

from __future__ import annotations

import threading

from ray.train import UserCallback

CHECKPOINT_PATH_KEY = "checkpoint_path"  # the key TuneReportCallback uses; runner.py reads it


class ReportsToQueue(UserCallback):
    """Runs in the Train controller: each report (rank 0's metrics and the checkpoint's path)
    goes into the trial's queue."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint) -> None:
        item = dict(metrics[0])
        if checkpoint:
            item[CHECKPOINT_PATH_KEY] = checkpoint.path
        self.queue.put(item)


def fit_reporting_to_tune(trainer, reports) -> None:
    """`trainer.fit()` in a helper thread while this thread, the trial's, reports to Tune what
    the controller queued, until the run has ended and the queue is empty."""
    import ray.tune
    from ray.util.queue import Empty

    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as error:  # re-raised in the trial's thread below
            failure.append(error)

    runner = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    runner.start()
    while True:
        ended = not runner.is_alive()  # fit() returns after its controller queued every report
        try:
            item = reports.get(timeout=0.2)
        except Empty:
            if ended:
                break
            continue
        ray.tune.report(item)
    if failure:
        raise failure[0]
