import numpy as np
import pytest

from kdpipe.config import GateConfig
from kdpipe.data import LabelSchema
from kdpipe.gate import evaluate_gate
from kdpipe.metrics import compute_metrics, primary_metric

SINGLE = LabelSchema("single_label_classification", ["neg", "pos", "mixed"])
MULTI = LabelSchema("multi_label_classification", ["toxic", "insult", "threat"])


def test_single_label_metrics():
    logits = np.array([[3, 0, 0], [0, 2, 0], [0, 0, 1], [1, 2, 0], [0, 0, 5]], dtype=float)
    labels = np.array([0, 1, 2, 0, 1])
    m = compute_metrics(logits, labels, SINGLE)
    assert m["accuracy"] == pytest.approx(3 / 5)
    # per class F1: neg 2/3, pos 1/2, mixed 2/3
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert primary_metric(SINGLE) == "accuracy"


def test_multi_label_metrics_threshold_and_auc_names():
    logits = np.array([[2.0, -1, -3], [-2, 1, -3], [1, 1, 2], [-1, -2, -0.5]])
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    m = compute_metrics(logits, labels, MULTI)
    # predictions at 0.5: [1,0,0] [0,1,0] [1,1,1] [0,0,0] -> TP 3, FP 2, FN 0
    assert m["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 2))
    assert m["roc_auc_toxic"] == pytest.approx(1.0) and "roc_auc_threat" not in m  # threat: no positives
    assert m["subset_accuracy"] == pytest.approx(3 / 4)
    strict = compute_metrics(logits, labels, MULTI, threshold=0.9)
    assert strict["micro_f1"] < m["micro_f1"]
    assert primary_metric(MULTI) == "micro_f1"


def test_gate_pass_and_reasons():
    gate = GateConfig(min_metric=0.8, min_retention=0.95, max_latency_ms=10)
    ok = evaluate_gate(gate, "accuracy", {"accuracy": 0.86}, {"accuracy": 0.88}, 4.0)
    assert ok["passed"] and ok["promote_to_champion"]
    bad = evaluate_gate(gate, "accuracy", {"accuracy": 0.79}, {"accuracy": 0.90}, 12.0)
    assert not bad["passed"]
    text = " ".join(bad["reasons"])
    assert "0.7900 < gate.min_metric 0.8" in text and "retention 0.878" in text and "> gate.max_latency_ms" in text


def test_gate_champion_rule_and_unknown_metric():
    gate = GateConfig(min_metric=0.5, min_improvement_over_champion=0.01)
    kept = evaluate_gate(gate, "accuracy", {"accuracy": 0.85}, {"accuracy": 0.9}, None, {"accuracy": 0.845})
    assert kept["passed"] and not kept["promote_to_champion"]
    taken = evaluate_gate(gate, "accuracy", {"accuracy": 0.86}, {"accuracy": 0.9}, None, {"accuracy": 0.845})
    assert taken["promote_to_champion"]
    unknown = evaluate_gate(gate, "f2", {"accuracy": 0.9}, {}, None)
    assert not unknown["passed"] and "fix gate.metric" in unknown["reasons"][0]
