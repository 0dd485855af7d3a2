"""The champion/challenger gate, on plain values: both models' scores on the same held-out rows in,
a decision and its reasons, in words, out.

The challenger becomes champion only if it reaches `min_value`, beats the champion by at least
`min_delta` (a tie never promotes), and no class's recall falls by more than `max_class_drop`.
A first model (no champion) is judged by `min_value` alone, as TFX's Evaluator blesses a model
with no baseline. A champion with other classes is not compared: promotion is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Metric names (after test_) where lower is better.
LOWER_IS_BETTER = ("loss", "mean_absolute_error", "mae", "mean_squared_error", "mse",
                   "mean_absolute_percentage_error", "mape", "mean_squared_logarithmic_error", "msle")
TOLERANCE = 1e-9  # 0.9712 - 0.9692 must count as the 0.002 it is


@dataclass
class Scores:
    """One model on the held-out rows."""

    version: str | None  # "v4"; None for a model not registered
    metrics: dict[str, float]  # test_loss, test_accuracy, ...
    recall: dict[str, float] | None = None  # class name -> recall (classification)
    classes: list[str] | None = None


@dataclass
class Rules:
    metric: str
    mode: str = "auto"
    min_delta: float = 0.0
    min_value: float | None = None
    max_class_drop: float | None = None

    @property
    def direction(self) -> str:
        if self.mode != "auto":
            return self.mode
        return "min" if self.metric.removeprefix("test_") in LOWER_IS_BETTER else "max"


@dataclass
class Decision:
    promote: bool
    reason: str  # one paragraph a person reads at 9 am
    checks: list[dict] = field(default_factory=list)  # each: check, passed, detail
    class_drops: dict[str, float] = field(default_factory=dict)  # class -> champion recall - challenger recall


def decide(rules: Rules, challenger: Scores, champion: Scores | None, rows: int, alias: str = "champion") -> Decision:
    metric, better = rules.metric, rules.direction
    value = challenger.metrics.get(metric)
    name = challenger.version or "the new model"
    if value is None:
        return Decision(False, f"not promoted: {name} has no {metric} on the held-out rows "
                               f"(it has {', '.join(sorted(challenger.metrics))}).")
    checks = []
    if rules.min_value is not None:
        ok = value >= rules.min_value - TOLERANCE if better == "max" else value <= rules.min_value + TOLERANCE
        checks.append({"check": "min_value", "passed": ok, "detail": (
            f"{metric} {value:.4f} {'reaches' if ok else 'does not reach'} min_value {rules.min_value:g}")})
    if champion is None:
        passed = all(c["passed"] for c in checks)
        first = f"there is no {alias} yet, so {name} is judged by min_value alone"
        text = ": ".join([first, *(c["detail"] for c in checks)]) if checks else f"{first}, and none is set"
        verdict = f"promoted {name} to {alias}" if passed else f"not promoted: {name} stays a version only"
        return Decision(passed, f"{verdict}: {text} (on {rows} held-out rows).", checks)

    if challenger.classes is not None and champion.classes is not None and challenger.classes != champion.classes:
        return Decision(False, (
            f"not promoted: {alias} {champion.version} has other classes ({', '.join(champion.classes)}) than "
            f"{name} ({', '.join(challenger.classes)}), so the two were not compared. Promote {name} by hand "
            f"(`finetune models promote NAME {challenger.version} --reason ...`) if the new classes are meant."), checks)

    old = champion.metrics.get(metric)
    if old is None:
        return Decision(False, f"not promoted: {alias} {champion.version} has no {metric} on the held-out rows.", checks)
    gain = value - old if better == "max" else old - value
    enough = gain > TOLERANCE and gain >= rules.min_delta - TOLERANCE
    relation = (f"{value - old:.4f} above" if value > old else f"{old - value:.4f} below" if value < old
                else "equal to")
    checks.append({"check": "min_delta", "passed": enough, "detail": (
        f"{metric} {value:.4f} is {relation} {alias} {champion.version}'s {old:.4f} (promotion needs "
        + (f"{rules.min_delta:g} {'lower' if better == 'min' else 'higher'}" if rules.min_delta > 0
           else ("lower" if better == "min" else "higher")) + ")")})

    drops = {}
    if rules.max_class_drop is not None and challenger.recall and champion.recall:
        drops = {c: champion.recall[c] - challenger.recall.get(c, 0.0) for c in champion.recall}
        over = {c: d for c, d in drops.items() if d > rules.max_class_drop + TOLERANCE}
        worst = max(drops, key=drops.get) if drops else None
        if over:
            detail = "recall dropped by more than max_class_drop {:g} for class{} {}".format(
                rules.max_class_drop, "es" if len(over) > 1 else "",
                ", ".join(f"{c} ({champion.recall[c]:.3f} -> {challenger.recall.get(c, 0.0):.3f})" for c in over))
        elif worst is not None and drops[worst] > TOLERANCE:
            detail = (f"no class's recall dropped by more than max_class_drop {rules.max_class_drop:g} "
                      f"(the largest drop: class {worst}, {champion.recall[worst]:.3f} -> "
                      f"{challenger.recall.get(worst, 0.0):.3f})")
        else:
            detail = "no class's recall dropped"
        checks.append({"check": "max_class_drop", "passed": not over, "detail": detail})

    passed = all(c["passed"] for c in checks)
    failed = [c["detail"] for c in checks if not c["passed"]]
    held = [c["detail"] for c in checks if c["passed"]]
    if passed:
        reason = f"promoted {name} to {alias}, replacing {champion.version}: " + "; ".join(held)
    else:
        reason = f"kept {alias} {champion.version}; {name} is registered but not promoted: " + "; ".join(failed)
    return Decision(passed, f"{reason} (both on the same {rows} held-out rows).", checks, drops)
