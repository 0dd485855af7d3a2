"""The resource arithmetic on plain `Capacity` values, without a cluster."""

import pytest

from finetune.errors import UserError
from finetune.job import validate_job_dict
from finetune.resources import GIB, Capacity, plan_concurrency, trial_resources

LAPTOP = Capacity(cpus=2, gpus=0, memory=16 * GIB, nodes=1)


def job(**resources):
    return validate_job_dict({"name": "t", "search": {"num_samples": 12}, "resources": resources})


def test_two_workers_on_two_cores_run_one_trial_at_a_time_and_the_driver_takes_no_cpu():
    two = job(num_workers=2)
    assert plan_concurrency(two, LAPTOP, 12) == 1
    assert "CPU" not in trial_resources(two)  # else the two 1-CPU workers could never be placed


def test_one_worker_trials_fill_the_cores():
    one = job(num_workers=1)
    assert plan_concurrency(one, LAPTOP, 12) == 2
    assert trial_resources(one) == {"CPU": 1}
    assert plan_concurrency(one, LAPTOP, 1) == 1


def test_memory_caps_concurrency():
    small_memory = Capacity(cpus=64, gpus=0, memory=3.5 * GIB, nodes=1)
    assert plan_concurrency(job(num_workers=1), small_memory, 100) == 3


def test_gpus_cap_concurrency():
    cluster = Capacity(cpus=128, gpus=8, memory=512 * GIB, nodes=4)
    assert plan_concurrency(job(num_workers=4, use_gpu=True), cluster, 12) == 2


def test_a_trial_larger_than_the_cluster_is_a_clear_error():
    with pytest.raises(UserError, match="needs 4 workers"):
        plan_concurrency(job(num_workers=4), LAPTOP, 12)


def test_explicit_concurrency_is_respected():
    assert plan_concurrency(job(num_workers=1, max_concurrent_trials=1), LAPTOP, 12) == 1


def test_streaming_leaves_a_cpu_for_ray_data():
    # Two 1-CPU workers would hold both cores while Ray Data's read tasks wait for one: a deadlock.
    with pytest.raises(UserError, match="Ray Data"):
        plan_concurrency(job(num_workers=2), LAPTOP, 4, streaming=True)
    assert plan_concurrency(job(num_workers=2, cpus_per_worker=0.5), LAPTOP, 4, streaming=True) == 1
    assert plan_concurrency(job(num_workers=1), LAPTOP, 4, streaming=True) == 1
    assert plan_concurrency(job(num_workers=1, data_cpus=0), LAPTOP, 4, streaming=True) == 2


def test_a_joined_cluster_may_grow_so_a_trial_that_does_not_fit_yet_waits():
    scaled_down = Capacity(cpus=0, gpus=0, memory=8 * GIB, nodes=1, started_here=False)
    assert plan_concurrency(job(num_workers=4, use_gpu=True), scaled_down, 12, local=False) == 1
    assert plan_concurrency(job(num_workers=4, max_concurrent_trials=3), scaled_down, 12, local=False) == 3


def test_every_limit_is_given_with_the_one_that_binds():
    from finetune.resources import concurrency_limits

    limits = concurrency_limits(job(num_workers=1), Capacity(cpus=64, gpus=0, memory=3.5 * GIB, nodes=1), 100)
    assert limits.limits == {"CPUs": 64, "memory": 3} and limits.binding == "memory" and limits.trials_at_once == 3
    assert (limits.cpus_per_trial, limits.gpus_per_trial, limits.memory_per_trial) == (1, 0, 1 * GIB)
    gpus = concurrency_limits(job(num_workers=4, use_gpu=True), Capacity(cpus=128, gpus=8, memory=512 * GIB, nodes=4), 12)
    assert gpus.limits["GPUs"] == 2 and gpus.binding == "GPUs"
    assert concurrency_limits(job(num_workers=1), LAPTOP, 1).binding == "trials"
    assert concurrency_limits(job(num_workers=1), LAPTOP, 12).binding == "CPUs"
    waiting = concurrency_limits(job(num_workers=4), Capacity(cpus=0, gpus=0, memory=8 * GIB, nodes=1), 12, local=False)
    assert not waiting.fits and waiting.trials_at_once == 1
