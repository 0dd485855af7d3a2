"""The champion/challenger gate on plain values: every rule, and the words it says them in."""

from __future__ import annotations

from finetune.registry.gate import Rules, Scores, decide

CLASSES = ["cat", "dog"]


def scores(version, accuracy, recall=None, classes=CLASSES, loss=0.3):
    return Scores(version, {"test_accuracy": accuracy, "test_loss": loss}, recall or {"cat": 0.9, "dog": 0.9}, classes)


def test_first_model_is_judged_by_min_value_alone():
    rules = Rules("test_accuracy", min_delta=0.01, min_value=0.9)
    assert decide(rules, scores("v1", 0.95), None, rows=100).promote
    refused = decide(rules, scores("v1", 0.85), None, rows=100)
    assert not refused.promote
    assert "there is no champion yet" in refused.reason and "does not reach min_value 0.9" in refused.reason
    assert decide(Rules("test_accuracy"), scores("v1", 0.1), None, rows=100).promote  # no min_value: promoted


def test_min_delta_decides_and_a_tie_never_promotes():
    rules = Rules("test_accuracy", min_delta=0.002)
    better = decide(rules, scores("v2", 0.9712), scores("v1", 0.9692), rows=360)
    assert better.promote  # exactly 0.002, despite floating point
    assert better.reason.startswith("promoted v2 to champion, replacing v1: test_accuracy 0.9712 is 0.0020 above")
    assert "same 360 held-out rows" in better.reason
    small = decide(rules, scores("v2", 0.9700), scores("v1", 0.9692), rows=360)
    assert not small.promote and small.reason.startswith("kept champion v1; v2 is registered but not promoted")
    assert not decide(Rules("test_accuracy"), scores("v2", 0.9), scores("v1", 0.9), rows=10).promote
    worse = decide(rules, scores("v2", 0.95), scores("v1", 0.97), rows=10)
    assert "0.0200 below champion v1's 0.9700" in worse.reason


def test_lower_is_better_for_losses():
    rules = Rules("test_loss", min_delta=0.01)
    assert rules.direction == "min"
    assert decide(rules, scores("v2", 0.9, loss=0.20), scores("v1", 0.9, loss=0.25), rows=10).promote
    assert not decide(rules, scores("v2", 0.9, loss=0.30), scores("v1", 0.9, loss=0.25), rows=10).promote
    assert Rules("test_accuracy", mode="min").direction == "min"


def test_a_class_whose_recall_drops_too_far_blocks_promotion():
    rules = Rules("test_accuracy", max_class_drop=0.05)
    decision = decide(rules, scores("v2", 0.96, {"cat": 0.99, "dog": 0.80}), scores("v1", 0.95, {"cat": 0.9, "dog": 0.9}),
                      rows=100)
    assert not decision.promote
    assert "recall dropped by more than max_class_drop 0.05 for class dog (0.900 -> 0.800)" in decision.reason
    assert round(decision.class_drops["dog"], 3) == 0.1
    fine = decide(rules, scores("v2", 0.96, {"cat": 0.99, "dog": 0.87}), scores("v1", 0.95, {"cat": 0.9, "dog": 0.9}),
                  rows=100)
    assert fine.promote and "the largest drop: class dog, 0.900 -> 0.870" in fine.reason
    improved = decide(rules, scores("v2", 0.96, {"cat": 0.95, "dog": 0.95}), scores("v1", 0.95), rows=100)
    assert improved.promote and "no class's recall dropped" in improved.reason


def test_a_champion_of_other_classes_is_not_compared():
    decision = decide(Rules("test_accuracy"), scores("v2", 0.99), scores("v1", 0.5, classes=["cat", "dog", "fox"]),
                      rows=100)
    assert not decision.promote
    assert "has other classes (cat, dog, fox) than v2 (cat, dog), so the two were not compared" in decision.reason


def test_a_metric_the_model_does_not_have_is_refused():
    decision = decide(Rules("test_auc"), scores("v2", 0.99), None, rows=10)
    assert not decision.promote and "has no test_auc" in decision.reason
