"""A Ray Train run's reports to the Tune trial that started it, every one of them.

Ray Train v2's own `TuneReportCallback` (ray/tune/integration/ray_train.py) hands each report to
the Tune trial's main thread through a one-slot queue, while the trial's function thread announces
its end through another one-slot queue. When a run's last report is still waiting as the function
returns, Tune either loses that epoch (seen in CI: "no checkpoint of trial ... is left", Ray Train
having kept the checkpoint of an epoch Tune never heard of) or deadlocks, its main thread blocked
putting that report in the slot the end announcement already holds (a hung test, every process
idle). Here the Train controller puts every report in an unbounded queue, and the trial's own
thread reports each to Tune, all of them before it returns.

The queues live in one small actor per run (`ReportMailbox`, one queue per trial), which the
driver starts once: a queue actor per trial was one more process to start for every trial.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict

from ray.train import UserCallback

from finetune.startup import process_started_at

CHECKPOINT_PATH_KEY = "checkpoint_path"  # the key TuneReportCallback uses; runner.py reads it


class ReportMailbox:
    """An actor holding one unbounded queue per trial (keyed by trial id). Asynchronous, so the
    waits of several trials at once do not block each other."""

    def __init__(self):
        self._boxes: dict[str, asyncio.Queue] = defaultdict(asyncio.Queue)

    async def put(self, key: str, item: dict) -> None:
        self._boxes[key].put_nowait(item)

    async def get(self, key: str, timeout: float) -> dict | None:
        try:
            return await asyncio.wait_for(self._boxes[key].get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def close(self, key: str) -> None:
        self._boxes.pop(key, None)


def open_mailbox():
    """The run's mailbox, on the driver's node: it lives as long as the driver that opened it, and
    no worker node that a cluster loses takes it along."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0, scheduling_strategy=here)(ReportMailbox).remote()


class ReportsToMailbox(UserCallback):
    """Runs in the Train controller: each report (rank 0's metrics and the checkpoint's path)
    goes into the trial's queue, and is there before the report returns. The first also says when
    the controller's process started (finetune.startup)."""

    def __init__(self, mailbox, key: str, trial_started_at: float):
        self.mailbox, self.key = mailbox, key
        self.trial_started_at = trial_started_at
        self.reported = False

    def after_report(self, run_context, metrics, checkpoint) -> None:
        item = dict(metrics[0])
        if checkpoint:
            item[CHECKPOINT_PATH_KEY] = checkpoint.path
        if not self.reported:
            started = process_started_at()
            if started is not None:
                item["startup.controller_process"] = round(started - self.trial_started_at, 3)
            self.reported = True
        import ray

        ray.get(self.mailbox.put.remote(self.key, item))


def fit_reporting_to_tune(trainer, mailbox, key: str) -> None:
    """`trainer.fit()` in a helper thread while this thread, the trial's, reports to Tune what
    the controller posted, until the run has ended and the trial's queue is empty."""
    import ray
    import ray.tune

    ray.get(mailbox.close.remote(key))  # what an earlier attempt of this trial posted and never took
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as error:  # re-raised in the trial's thread below
            failure.append(error)

    runner = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    runner.start()
    while True:
        ended = not runner.is_alive()  # fit() returns after its controller posted every report
        item = ray.get(mailbox.get.remote(key, 0.2))
        if item is None:
            if ended:
                break
            continue
        ray.tune.report(item)
    mailbox.close.remote(key)
    if failure:
        raise failure[0]
