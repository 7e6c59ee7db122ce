import numpy as np
import pytest

from kdpipe.config import GateConfig
from kdpipe.gate import evaluate_gate
from kdpipe.metrics import compute_metrics
from kdpipe.task import LabelSchema

SINGLE = LabelSchema("single_label_classification", ["neg", "pos", "mixed"])
MULTI = LabelSchema("multi_label_classification", ["toxic", "insult", "threat"])


def test_single_label_metrics():
    logits = np.array([[3, 0, 0], [0, 2, 0], [0, 0, 1], [1, 2, 0], [0, 0, 5]], dtype=float)
    labels = np.array([0, 1, 2, 0, 1])
    m = compute_metrics(logits, labels, SINGLE)
    assert m["accuracy"] == pytest.approx(3 / 5)
    # per class F1: neg 2/3, pos 1/2, mixed 2/3
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert SINGLE.primary_metric() == "accuracy" and SINGLE.primary_metric("macro_f1") == "macro_f1"


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
    assert MULTI.primary_metric() == "micro_f1" and MULTI.primary_metric("roc_auc_macro") == "roc_auc_macro"


def test_task_type_owns_activation_decision_and_loss():
    logits = np.array([[2.0, -1.0, 0.0], [-3.0, 0.5, 0.2]])
    soft = SINGLE.scores(logits)
    assert np.allclose(soft.sum(-1), 1.0) and SINGLE.decide(soft).tolist() == [0, 1]
    sig = MULTI.scores(logits)
    assert np.allclose(sig, 1 / (1 + np.exp(-logits))) and not np.allclose(sig.sum(-1), 1.0)
    assert MULTI.decide(sig, 0.5).tolist() == [[1, 0, 1], [0, 1, 1]]
    assert MULTI.decide(sig, 0.6).tolist() == [[1, 0, 0], [0, 1, 0]]
    assert MULTI.predicted_names(sig, 0.6) == [["toxic"], ["insult"]]
    assert SINGLE.predicted_names(soft) == [["neg"], ["pos"]]
    assert (SINGLE.loss(), MULTI.loss(), MULTI.loss("softmax_kl")) == ("softmax_kl", "sigmoid_bce", "softmax_kl")
    import torch
    assert torch.allclose(MULTI.torch_scores(torch.tensor(logits)), torch.tensor(sig))
    assert torch.allclose(SINGLE.torch_scores(torch.tensor(logits)), torch.tensor(soft))
    with pytest.raises(ValueError, match="problem_type"):
        LabelSchema("regression", ["y"])


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


@pytest.mark.parametrize("schema", [SINGLE, MULTI], ids=["single", "multi"])
def test_the_evaluate_module_gives_the_pipelines_numbers(schema):
    """Users may load kdpipe's metrics with evaluate.load; the pipeline computes the same numbers without it."""
    import evaluate

    from kdpipe.metrics import EVALUATE_MODULE, classification_metrics

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(40, 3))
    if schema.multi_label:
        labels = (rng.random((40, 3)) > 0.6).astype(np.int32)
        preds = schema.scores(logits).astype(np.float32)
    else:
        labels, preds = rng.integers(0, 3, 40), schema.decide(logits)
    metric = evaluate.load(str(EVALUATE_MODULE), config_name=schema.metric_config)
    assert metric.compute(predictions=preds, references=labels, **({"threshold": 0.4} if schema.multi_label else {})) \
        == pytest.approx(classification_metrics(preds, labels, schema.multi_label, 0.4))
