"""Search-space entries of a job (`search.space`) and their translation to Ray Tune domains.

An entry maps a dotted field path to a domain:

    train.learning_rate: {loguniform: [1.0e-4, 1.0e-1]}
    train.optimizer: {choice: [adam, sgd]}
    model.head.units: {choice: [[32], [64]]}
    train.epochs: 8                      # a fixed value

Domains: choice, grid, uniform, loguniform, randint (both ends included), quniform. Parsing needs no
Ray; `to_tune` imports Ray Tune only when a search actually starts.

An entry may depend on others with `when`; it is sampled only in trials that meet the condition,
and absent (the field keeps its value) in the others:

    train.optimizer: {choice: [adam, sgd]}
    train.optimizer_args.momentum: {uniform: [0.5, 0.99], when: {train.optimizer: sgd}}
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

DOMAIN_KINDS = ("choice", "grid", "uniform", "loguniform", "randint", "quniform")


@dataclass(frozen=True)
class Domain:
    kind: str  # one of DOMAIN_KINDS, or "fixed"
    args: tuple
    when: tuple = ()  # ((path, (allowed values...)), ...): sampled only when every path holds one

    def sample(self, rng):
        """A value drawn with a numpy Generator (for conditional entries, drawn per trial)."""
        if self.kind in ("choice", "grid"):
            return self.args[0][int(rng.integers(len(self.args[0])))]
        if self.kind == "uniform":
            return float(rng.uniform(*self.args))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(self.args[0]), math.log(self.args[1]))))
        if self.kind == "randint":
            return int(rng.integers(self.args[0], self.args[1] + 1))
        if self.kind == "quniform":
            low, high, step = self.args
            return float(round(rng.uniform(low, high) / step) * step)
        return self.args[0]

    def values_to_check(self) -> list[Any]:
        """Values worth validating against the field: every option, or both ends of a range."""
        if self.kind in ("choice", "grid"):
            return list(self.args[0])
        if self.kind == "fixed":
            return [self.args[0]]
        low, high = self.args[0], self.args[1]
        return [low, high]

    def to_tune(self):
        from ray import tune

        if self.kind == "fixed":
            return self.args[0]
        if self.kind == "choice":
            return tune.choice(list(self.args[0]))
        if self.kind == "grid":
            return tune.grid_search(list(self.args[0]))
        if self.kind == "uniform":
            return tune.uniform(*self.args)
        if self.kind == "loguniform":
            return tune.loguniform(*self.args)
        if self.kind == "randint":
            low, high = self.args
            return tune.randint(low, high + 1)  # Tune excludes the upper end; the job includes it
        if self.kind == "quniform":
            return tune.quniform(*self.args)
        raise AssertionError(f"unhandled domain kind {self.kind}")


def parse_domain(spec: Any) -> Domain:
    """A Domain from a job's entry, or ValueError saying what was expected."""
    if isinstance(spec, dict) and "when" in spec:
        rest = {k: v for k, v in spec.items() if k != "when"}
        domain = parse_domain(rest)
        if domain.kind in ("fixed", "grid"):
            raise ValueError("expected `when` beside one of choice, uniform, loguniform, randint, quniform "
                             "(a grid cannot depend on other entries)")
        condition = spec["when"]
        if not (isinstance(condition, dict) and condition):
            raise ValueError("expected when: {field.path: value or [values], ...}")
        when = tuple((path, tuple(v) if isinstance(v, list) else (v,)) for path, v in condition.items())
        return Domain(domain.kind, domain.args, when)
    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DOMAIN_KINDS):
        if isinstance(spec, dict) and any(key in DOMAIN_KINDS for key in spec):
            raise ValueError(f"expected exactly one domain key, one of: {', '.join(DOMAIN_KINDS)}")
        return Domain("fixed", (spec,))
    kind, args = next(iter(spec.items()))
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise ValueError(f"expected {kind}: a non-empty list of values")
        return Domain(kind, (tuple(args),))
    arity = 3 if kind == "quniform" else 2
    shape = "[low, high, step]" if kind == "quniform" else "[low, high]"
    if not (isinstance(args, list) and len(args) == arity and all(_is_number(a) for a in args)):
        raise ValueError(f"expected {kind}: {shape} of finite numbers")
    low, high = args[0], args[1]
    if not low < high:
        raise ValueError(f"expected {kind}: low < high (got {low} >= {high})")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"expected loguniform: low > 0 (got {low}); use uniform for ranges that include 0")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ValueError("expected randint: [low, high] of integers (both included)")
    if kind == "quniform" and args[2] <= 0:
        raise ValueError(f"expected quniform: step > 0 (got {args[2]})")
    return Domain(kind, tuple(args))


def count_trials(search) -> int:
    """Tune runs num_samples trials, each over the full grid when the space has grid entries.
    search: a job's SearchSpec."""
    grid = 1
    for domain in parse_space(search.space).values():
        if domain.kind == "grid":
            grid *= len(domain.args[0])
    return search.num_samples * grid


def parse_space(space: dict[str, Any]) -> dict[str, Domain]:
    return {path: parse_domain(spec) for path, spec in space.items()}


def to_tune_space(space: dict[str, Any], fixed: dict | None = None) -> dict[str, Any]:
    """`search.space` as a Tune `param_space` fragment, keyed by the same dotted paths.

    fixed: the job as a dict, for conditions on fields that the search does not vary."""
    domains = parse_space(space)
    result = {}
    for path, domain in domains.items():
        if domain.when:
            result[path] = _conditional(path, domain, fixed or {})
        else:
            result[path] = domain.to_tune()
    return result


def check_conditions(space: dict[str, Any]) -> list[tuple[str, str]]:
    """(path, what is wrong) for conditions that name a conditional entry (not supported: the order
    of sampling would decide) or ask for a value the entry can never take."""
    domains = {path: parse_domain(spec) for path, spec in space.items()}
    problems = []
    for path, domain in domains.items():
        for other, values in domain.when:
            if other == path:
                problems.append((path, "expected a condition on another entry, not on itself"))
            elif other in domains and domains[other].when:
                problems.append((path, f"expected a condition on an unconditional entry; {other} has its own `when`"))
            elif other in domains and domains[other].kind in ("choice", "grid"):
                options = domains[other].args[0]
                if not any(v in options for v in values):
                    problems.append((path, f"expected `when` values among {other}'s options {list(options)}"))
    return problems


def _conditional(path: str, domain: Domain, fixed: dict):
    from ray import tune

    return tune.sample_from(ConditionalSample(path, domain, fixed))


class ConditionalSample:
    """Tune's sample_from function for an entry with `when`: draws from the entry's domain with a
    generator seeded by the trial's seed and the path, so the experiment seed fixes it; None (the
    field keeps its value) in trials that do not meet the condition."""

    def __init__(self, path: str, domain: Domain, fixed: dict):
        self.path, self.domain, self.fixed = path, domain, fixed

    def __call__(self, spec) -> Any:
        import numpy as np

        config = spec.config
        sampled = config["space"]
        for other, allowed in self.domain.when:
            value = sampled[other] if other in sampled else _lookup(self.fixed, other)
            if value not in allowed:
                return None
        return self.domain.sample(np.random.default_rng([int(config["seed"]), path_seed(self.path)]))


def path_seed(path: str) -> int:
    """A conditional entry's own part of its random stream's seed: a digest of its whole path, so
    entries that share a prefix (train.optimizer_args.momentum, train.optimizer_args.beta_1) draw
    independently."""
    return int.from_bytes(hashlib.sha256(path.encode()).digest(), "little")


def _lookup(data: dict, dotted: str) -> Any:
    node: Any = data
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- population-based training ---------------------------------------------------------------------

# Domains PBT can perturb: numbers, multiplied by a factor or drawn anew.
MUTABLE_KINDS = ("uniform", "loguniform", "quniform", "randint")


def pbt_mutations(space: dict[str, Any], mutate: list[str] | None) -> dict[str, Domain]:
    """The entries PBT perturbs: those `mutate` names, or by default every numeric entry without
    `when` (except train.epochs, which PBT's schedule counts)."""
    domains = parse_space(space)
    if mutate is not None:
        return {path: domains[path] for path in mutate}
    return {path: d for path, d in domains.items()
            if d.kind in MUTABLE_KINDS and not d.when and path != "train.epochs"}


class ClampToSpace:
    """PBT's custom_explore_fn: a value perturbed by a factor can leave its range (a dropout of 0.45
    times 1.2 is 0.54, out of uniform: [0, 0.5]); bring each back inside its domain, on its step."""

    def __init__(self, mutations: dict[str, Domain]):
        self.mutations = mutations

    def __call__(self, config: dict) -> dict:
        for path, domain in self.mutations.items():
            config["space"][path] = clamp(domain, config["space"][path])
        return config


def clamp(domain: Domain, value: float) -> float | int:
    low, high = domain.args[0], domain.args[1]
    value = min(max(value, low), high)
    if domain.kind == "randint":
        return int(round(value))
    if domain.kind == "quniform":
        step = domain.args[2]
        return float(min(max(round(value / step) * step, low), high))
    return float(value)
