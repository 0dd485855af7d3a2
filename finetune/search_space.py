"""Search-space entries of a job (`search.space`) and their translation to Ray Tune domains.

An entry maps a dotted field path to a domain:

    train.learning_rate: {loguniform: [1.0e-4, 1.0e-1]}
    train.optimizer: {choice: [adam, sgd]}
    model.head.units: {choice: [[32], [64]]}
    train.epochs: 8                      # a fixed value

Domains: choice, grid, uniform, loguniform, randint (both ends included), quniform. Parsing needs no
Ray; `to_tune` imports Ray Tune only when a search actually starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

DOMAIN_KINDS = ("choice", "grid", "uniform", "loguniform", "randint", "quniform")


@dataclass(frozen=True)
class Domain:
    kind: str  # one of DOMAIN_KINDS, or "fixed"
    args: tuple

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


def parse_space(space: dict[str, Any]) -> dict[str, Domain]:
    return {path: parse_domain(spec) for path, spec in space.items()}


def to_tune_space(space: dict[str, Any]) -> dict[str, Any]:
    """`search.space` as a Tune `param_space` fragment, keyed by the same dotted paths."""
    return {path: domain.to_tune() for path, domain in parse_space(space).items()}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
