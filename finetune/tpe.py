"""search.algorithm tpe: Optuna's TPE sampler through Ray Tune's `OptunaSearch`, seeded by the job.

Optuna asks for one trial at a time through a define-by-run function (`ProposeTrial`) that walks
the job's space, its conditional (`when:`) entries included, so TPE models each entry only over
the trials that sampled it. Ray's `OptunaSearch` tells Optuna a trial that a scheduler stopped as
COMPLETE with its last value (ray/tune/search/optuna/optuna_search.py, on_trial_complete), and a
trial that failed for good (it ends without raising and reports no value: finetune.failures) as
PRUNED; `TpeSearch` tells each as what it was: COMPLETE with its best epoch's value (the value the
run picks models by), PRUNED with the epochs it reported, or FAIL.

Its state (the study, every trial's bookkeeping) is pickled with Tune's experiment snapshot, so a
resumed run's study goes on where it stopped (ray-project/ray#30893).
"""

from __future__ import annotations

import json
from typing import Any

from optuna.samplers import TPESampler
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from finetune import _compat, storage
from finetune.errors import UserError
from finetune.failures import read_failure
from finetune.job import Job
from finetune.search_space import Domain, parse_space


def startup_trials(job: Job) -> int:
    """Trials TPE proposes at random before it models the results."""
    if job.search.startup_trials is not None:
        return job.search.startup_trials
    return max(3, min(10, job.search.num_samples // 3))


def trial_seed(experiment_seed: int, number: int) -> int:
    """A TPE trial's own seed, from the experiment seed and the trial's number in the study."""
    import numpy as np

    return int(np.random.default_rng([experiment_seed, number]).integers(0, 2**31 - 1))


class ProposeTrial:
    """Optuna's define-by-run function: one trial's configuration, as the trial function takes it
    ({"space": {dotted path: value}, "seed": int}). Unconditional entries are suggested first,
    then each `when:` entry whose condition holds (None otherwise: the field keeps its value).
    Optuna's categorical choices must be None, bool, int, float or str: a list option such as
    [64] is suggested as its JSON text and decoded."""

    def __init__(self, space: dict[str, Any], fixed: dict, experiment_seed: int):
        self.domains = parse_space(space)
        self.fixed, self.experiment_seed = fixed, experiment_seed

    def __call__(self, trial) -> dict:
        sampled: dict[str, Any] = {}
        for path, domain in sorted(self.domains.items(), key=lambda item: bool(item[1].when)):
            if domain.when and not self._condition_holds(domain, sampled):
                sampled[path] = None
            else:
                sampled[path] = suggest(trial, path, domain)
        # Keys as Ray's OptunaSearch unflattens them ("/"), over the raw values it captured.
        config = {f"space/{path}": value for path, value in sampled.items()} if sampled else {"space": {}}
        return {**config, "seed": trial_seed(self.experiment_seed, trial.number)}

    def _condition_holds(self, domain: Domain, sampled: dict) -> bool:
        for other, allowed in domain.when:
            value = sampled[other] if other in sampled else _lookup(self.fixed, other)
            if value not in allowed:
                return False
        return True


def suggest(trial, path: str, domain: Domain) -> Any:
    name = f"space/{path}"
    if domain.kind == "fixed":
        return domain.args[0]
    if domain.kind == "choice":
        options = list(domain.args[0])
        if all(o is None or isinstance(o, (bool, int, float, str)) for o in options):
            return trial.suggest_categorical(name, options)
        return json.loads(trial.suggest_categorical(name, [json.dumps(o) for o in options]))
    if domain.kind == "uniform":
        return trial.suggest_float(name, *domain.args)
    if domain.kind == "loguniform":
        return trial.suggest_float(name, *domain.args, log=True)
    if domain.kind == "randint":
        return trial.suggest_int(name, *domain.args)  # both ends included, as in the job
    if domain.kind == "quniform":
        low, high, step = domain.args
        return trial.suggest_float(name, low, high, step=step)
    raise UserError(f"search.space.{path}: search.algorithm tpe cannot propose a {domain.kind} entry; use choice.")


def _lookup(data: dict, dotted: str) -> Any:
    node: Any = data
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


class TpeSearch(OptunaSearch):
    def __init__(self, job: Job, run_dir: str):
        # constant_liar: trials running side by side count as running for TPE, so that it does not
        # propose the same point twice (optuna.samplers.TPESampler).
        sampler = TPESampler(seed=job.seed, n_startup_trials=startup_trials(job), constant_liar=True)
        super().__init__(space=ProposeTrial(job.search.space, job.model_dump(mode="json"), job.seed),
                         metric=job.search.metric, mode=job.search.mode, sampler=sampler)
        self._run_dir, self._epochs, self._maximize = run_dir, job.train.epochs, job.search.mode == "max"
        self._best: dict[str, float] = {}  # trial id -> best value reported
        self._last_epoch: dict[str, int] = {}

    @property
    def study(self):
        """The Optuna study: every trial proposed, with its state and values."""
        return _compat.optuna_study_of(self)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        value, epoch = result.get(self.metric), result.get("epoch")
        if not isinstance(value, (int, float)) or epoch is None or int(epoch) <= self._last_epoch.get(trial_id, 0):
            return  # no value, or an epoch told already (a restarted trial repeats its last)
        best = self._best.get(trial_id)
        if best is None or (value > best if self._maximize else value < best):
            self._best[trial_id] = value
        self._last_epoch[trial_id] = max(int(epoch), self._last_epoch.get(trial_id, 0))
        _compat.optuna_trial_of(self, trial_id).report(value, int(epoch))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if _compat.optuna_was_told(self, trial_id):
            return
        # Tune hands a trial's last result to on_trial_result only when the scheduler lets the trial
        # go on (ray/tune/execution/tune_controller.py, _process_trial_result): the result a
        # scheduler stops it at, or its final epoch's, arrives here only.
        if result:
            self.on_trial_result(trial_id, result)
        failed = error or read_failure(storage.join(self._run_dir, "trials", trial_id)) is not None
        if failed or trial_id not in self._best:
            state, value = TrialState.FAIL, None
        elif self._last_epoch[trial_id] < self._epochs:
            state, value = TrialState.PRUNED, None  # Optuna keeps its last reported value
        else:
            state, value = TrialState.COMPLETE, self._best[trial_id]
        self.study.tell(_compat.optuna_trial_of(self, trial_id), value, state=state)
        _compat.mark_optuna_told(self, trial_id)
