"""The search algorithm of a run (`search.algorithm`): what proposes each trial's configuration.

- random, grid: Ray Tune's `BasicVariantGenerator`, seeded by the job; grid entries are walked,
  the rest sampled (`finetune.search_space` translates the space).
- tpe: Optuna's TPE sampler through Ray Tune's `OptunaSearch` (`finetune.tpe`, imported only for
  it; Optuna is a core dependency, which the report's parameter importance uses too).

Either way the searcher runs at most `plan_concurrency`'s number of trials at once (a
`ConcurrencyLimiter` for TPE). Ray 2.60 carries ray-project/ray#63770, which sizes Tune's pending
trials from that limiter (before it, searchers ran one trial at a time); `tests/test_compat.py`
checks it.
"""

from __future__ import annotations

from finetune.job import Job

def create_search_alg(job: Job, run_dir: str, concurrency: int):
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if job.search.algorithm == "tpe":
        from finetune.tpe import TpeSearch

        return ConcurrencyLimiter(TpeSearch(job, run_dir), max_concurrent=concurrency)
    # Given a searcher instance, Tune wraps it in a ConcurrencyLimiter only when it is not a
    # BasicVariantGenerator, and a generator instance ignores TuneConfig.max_concurrent_trials
    # (ray/tune/tune.py, run; seen on Ray 2.60): the generator's own cap is the one that holds.
    return BasicVariantGenerator(random_state=job.seed, max_concurrent=concurrency)


