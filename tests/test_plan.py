"""`finetune plan`: the numbers of a search before it runs, against known jobs, with no Ray started."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest
from conftest import JOBS, REPO, write_job

from finetune import _compat
from finetune.job import load_job, validate_job_dict
from finetune.plan import format_plan, make_plan, scheduler_rungs
from finetune.resources import GIB, Capacity

LAPTOP = Capacity(cpus=2, gpus=0, memory=16 * GIB, nodes=1)


def job(**fields):
    return validate_job_dict({"name": "t", **fields})


def test_the_default_job_runs_one_trial_at_a_time_bound_by_cpus():
    plan = make_plan(load_job(JOBS / "digits.yaml"), capacity=LAPTOP)
    assert plan.num_trials == 12
    assert plan.concurrency.trials_at_once == 1 and plan.concurrency.binding == "CPUs"
    assert plan.concurrency.limits == {"CPUs": 1, "memory": 4}
    assert plan.rungs == [[2, 6]]
    assert plan.max_epochs == 12 * 12
    text = format_plan(plan, "jobs/digits.yaml")
    assert "trials at once: 1, bound by CPUs" in text
    assert "compares trials at epochs 2, 6; a trial that passes every rung runs 12 epochs" in text
    assert "epochs: at most 144 (12 trials x 12)" in text
    assert "train.optimizer      choice adam | sgd | rmsprop" in text


@pytest.mark.parametrize("name", sorted(p.name for p in JOBS.glob("*.yaml")))
def test_every_shipped_job_plans(name):
    """finetune plan on each job in jobs/ (PBT's once crashed the plan: it has no rungs)."""
    loaded = load_job(JOBS / name)
    text = format_plan(make_plan(loaded, capacity=LAPTOP), f"jobs/{name}")
    assert f"plan for job '{loaded.name}'" in text and "\nscheduler: " in text and "\nepochs: at most " in text


def test_pbt_plans_its_exploit_epochs():
    plan = make_plan(load_job(JOBS / "digits-pbt.yaml"), capacity=LAPTOP)
    assert plan.rungs == []
    text = format_plan(plan, "jobs/digits-pbt.yaml")
    assert "scheduler: population-based training; every 2 epochs (epochs 2, 4, 6, 8)" in text
    assert "every trial runs 10 epochs" in text and "epochs: at most 40 (4 trials x 10)" in text


def test_grid_entries_multiply_the_samples():
    plan = make_plan(job(search={"num_samples": 2, "space": {
        "train.optimizer": {"grid": ["adam", "sgd", "rmsprop"]}, "model.head.units": {"grid": [[32], [64]]},
        "train.learning_rate": {"loguniform": [1e-4, 1e-1]}}}), capacity=LAPTOP)
    assert plan.num_trials == 12 and plan.max_epochs == 12 * 10
    assert "trials: 12 (num_samples 2 x grid 6)" in format_plan(plan, "job")


@pytest.mark.parametrize("resources, capacity, at_once, binding", [
    ({"num_workers": 1}, Capacity(cpus=64, gpus=0, memory=3.5 * GIB, nodes=1), 3, "memory"),
    ({"num_workers": 4, "use_gpu": True}, Capacity(cpus=128, gpus=8, memory=512 * GIB, nodes=4), 2, "GPUs"),
    ({"num_workers": 1}, Capacity(cpus=64, gpus=0, memory=512 * GIB, nodes=1), 4, "trials"),
    ({"num_workers": 1, "max_concurrent_trials": 1}, LAPTOP, 1, "max_concurrent_trials"),
])
def test_the_binding_limit_is_named(resources, capacity, at_once, binding):
    plan = make_plan(job(search={"num_samples": 4}, resources=resources), capacity=capacity)
    assert (plan.concurrency.trials_at_once, plan.concurrency.binding) == (at_once, binding)
    text = format_plan(plan, "job")
    if binding in plan.concurrency.limits:
        assert f"{binding:<7} " in text and "<- binds" in text
    else:
        assert "<- binds" not in text and f"trials at once: {at_once}, bound by " in text


@pytest.mark.parametrize("epochs, grace, factor, brackets", [
    (12, 2, 3, 1), (9, 1, 3, 1), (10, 1, 2, 1), (30, 10, 3, 1), (12, 1, 3, 3), (27, 1, 3, 3), (20, 3, 2.5, 2),
    (6, 1, 2, 4), (5, 5, 3, 1),
])
def test_rungs_are_those_of_rays_async_hyperband(epochs, grace, factor, brackets):
    from ray.tune.schedulers import ASHAScheduler

    kind = "asha" if brackets == 1 else "hyperband"
    spec = job(train={"epochs": epochs}, search={"scheduler": {"type": kind, "grace_period": grace,
                                                               "reduction_factor": factor, "brackets": brackets}})
    ray_scheduler = ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=grace, reduction_factor=factor,
                                  brackets=brackets)
    assert scheduler_rungs(spec) == _compat.asha_rungs(ray_scheduler)


def test_median_and_none_have_no_rungs_and_cost_every_epoch():
    for scheduler in ("none", {"type": "median", "grace_period": 3}):
        plan = make_plan(job(train={"epochs": 5}, search={"num_samples": 3, "scheduler": scheduler}), capacity=LAPTOP)
        assert plan.rungs == [] and plan.expected_epochs is None and plan.max_epochs == 15
    assert "every trial runs all its epochs" in format_plan(make_plan(job(search={"scheduler": "none"}),
                                                                      capacity=LAPTOP), "job")


def test_a_trial_larger_than_this_machine_is_the_same_error_as_run():
    from finetune.errors import UserError

    with pytest.raises(UserError, match="needs 4 workers"):
        make_plan(job(resources={"num_workers": 4}), capacity=LAPTOP)


def test_the_estimate_of_a_local_ray_agrees_with_rays_own_start_up_code():
    """finetune.local_resources computes without Ray what Ray's node start-up computes."""
    from finetune import local_resources

    ray_figures = _compat.local_ray_resources()
    assert local_resources.cpus() == ray_figures["CPU"]
    assert local_resources.gpus() == ray_figures["GPU"]
    # Memory in use moves between the two readings (other processes run): within 5%.
    assert local_resources.memory() == pytest.approx(ray_figures["memory"], rel=0.05)


def test_plan_and_dry_run_start_no_ray_and_take_well_under_two_seconds(tmp_path):
    """Run as a user would: from another folder, with a relative job path. CPU time, not wall time,
    is measured: the machine is shared."""
    job_file = write_job(tmp_path, (JOBS / "digits.yaml").read_text().replace("name: digits", "name: planned"),
                         "planned.yaml")
    for command in (["plan", "planned.yaml"], ["run", "planned.yaml", "--dry-run", "--set", "train.epochs=4"]):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        code = ("import sys; from finetune.cli import main; rc = main(sys.argv[1:]); "
                "print('ray loaded:', 'ray' in sys.modules); sys.exit(rc)")
        result = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True,
                                cwd=tmp_path, timeout=60)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        assert result.returncode == 0, result.stderr
        assert "ray loaded: False" in result.stdout
        assert "trials at once: 1, bound by CPUs" in result.stdout or "bound by" in result.stdout
        assert (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime) < 2.0
    assert "epochs: at most 48 (12 trials x 4)" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [job_file.name]  # no run folder


def test_plan_of_a_bad_job_exits_2():
    result = subprocess.run([sys.executable, "-m", "finetune", "plan", "jobs/digits.yaml", "--set",
                             "resources.num_workers=64"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2 and "needs 64 workers" in result.stderr and "Traceback" not in result.stderr
