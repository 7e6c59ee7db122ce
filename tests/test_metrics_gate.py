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
    assert ok.passed and ok.promote_to_champion
    bad = evaluate_gate(gate, "accuracy", {"accuracy": 0.79}, {"accuracy": 0.90}, 12.0)
    assert not bad.passed
    text = " ".join(bad.reasons)
    assert "0.7900 < gate.min_metric 0.8" in text and "retention 0.878" in text and "> gate.max_latency_ms" in text


def test_gate_champion_verdict_fidelity_checks_and_unknown_metric():
    gate = GateConfig(min_metric=0.5, min_teacher_agreement=0.9, max_calibration_error=0.1)
    keep = {"promote": False, "reason": "challenger accuracy 0.85 vs champion v1 0.845 ...: stays challenger",
            "challenger_value": 0.85, "champion_value": 0.845}
    kept = evaluate_gate(gate, "accuracy", {"accuracy": 0.85}, {"accuracy": 0.9}, None, keep,
                         {"teacher_agreement": 0.95, "calibration_error": 0.05})
    assert kept.passed and not kept.promote_to_champion and keep["reason"] in kept.reasons
    taken = evaluate_gate(gate, "accuracy", {"accuracy": 0.86}, {"accuracy": 0.9}, None, {**keep, "promote": True},
                          {"teacher_agreement": 0.95, "calibration_error": 0.05})
    assert taken.promote_to_champion
    unfaithful = evaluate_gate(gate, "accuracy", {"accuracy": 0.86}, {"accuracy": 0.9}, None, None,
                               {"teacher_agreement": 0.8, "calibration_error": 0.2})
    assert not unfaithful.passed and not unfaithful.promote_to_champion
    assert any("0.800 of rows < gate.min_teacher_agreement 0.9" in r for r in unfaithful.reasons)
    assert any("calibration error 0.2000 > gate.max_calibration_error 0.1" in r for r in unfaithful.reasons)
    unknown = evaluate_gate(gate, "f2", {"accuracy": 0.9}, {}, None)
    assert not unknown.passed and "fix gate.metric" in unknown.reasons[0]


def test_mcnemar_counts_only_the_rows_where_the_two_disagree():
    from kdpipe.significance import mcnemar

    both = np.ones(800, bool)
    # 30 rows only the challenger gets right, 10 only the champion: exact binomial p = 0.0022 (two-sided).
    a, b = both.copy(), both.copy()
    b[:30], a[30:40] = False, False
    clear = mcnemar(a, b, 0.05)
    assert (clear["only_challenger_right"], clear["only_champion_right"]) == (30, 10)
    assert clear["p_value"] == pytest.approx(0.00222, abs=5e-5) and clear["significant"]
    # 12 vs 8: the same direction, not significant (p = 0.503); the reverse is never significant for the challenger.
    a, b = both.copy(), both.copy()
    b[:12], a[12:20] = False, False
    assert mcnemar(a, b, 0.05)["p_value"] == pytest.approx(0.5034, abs=1e-3) and not mcnemar(a, b, 0.05)["significant"]
    assert not mcnemar(b, a, 0.5)["significant"] and mcnemar(both, both, 0.05)["p_value"] == 1.0


def test_paired_bootstrap_interval_excludes_zero_only_for_a_real_difference():
    from sklearn.metrics import f1_score

    from kdpipe.significance import paired_bootstrap

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 600)
    champion = np.where(rng.random(600) < 0.75, truth, 1 - truth)
    better = np.where(rng.random(600) < 0.88, truth, 1 - truth)
    same = np.where(rng.random(600) < 0.75, truth, 1 - truth)

    def diff(pred):
        return lambda rows: f1_score(truth[rows], pred[rows]) - f1_score(truth[rows], champion[rows])

    up = paired_bootstrap(diff(better), 600, 0.05, 500, seed=1)
    assert up["significant"] and 0 < up["interval"][0] < up["interval"][1] and up["samples"] == 500
    flat = paired_bootstrap(diff(same), 600, 0.05, 500, seed=1)
    assert not flat["significant"] and flat["interval"][0] < 0 < flat["interval"][1]


def test_thresholds_agreement_and_calibration_against_their_formulas():
    from kdpipe.metrics import decision_agreement, expected_calibration_error, tune_thresholds

    # Label 0: positives score 0.3 and 0.9, negatives 0.2 and 0.35 -> F1 is best (0.8) for thresholds in (0.2, 0.3]:
    # the lowest grid point there, 0.25.
    # Label 1 has no positive row: the default. Label 2: every row positive -> the lowest threshold (0.05).
    scores = np.array([[0.3, 0.1, 0.6], [0.9, 0.2, 0.7], [0.2, 0.8, 0.9], [0.35, 0.4, 0.95]])
    labels = np.array([[1, 0, 1], [1, 0, 1], [0, 0, 1], [0, 0, 1]])
    logits = np.log(scores / (1 - scores))
    assert tune_thresholds(logits, labels, MULTI, 0.5) == [0.25, 0.5, 0.05]
    assert tune_thresholds(logits, labels, SINGLE, 0.5) is None
    other = logits.copy()
    other[0, 0] = -5.0  # one row differs, in one label
    agree = decision_agreement(logits, other, MULTI, [0.25, 0.5, 0.05], [0.25, 0.5, 0.05])
    assert agree["rows"] == 0.75 and agree["per_label"] == {"toxic": 0.75, "insult": 1.0, "threat": 1.0}
    two = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
    assert decision_agreement(two, two[:, ::-1], SINGLE)["rows"] == 0.0
    # Single-label ECE: confidences 0.9 (right) and 0.6 (wrong) in bins of their own: (|0.9-1| + |0.6-0|) / 2.
    conf = np.log(np.array([[0.9, 0.1], [0.6, 0.4]]))
    assert expected_calibration_error(conf, np.array([0, 1]), SINGLE) == pytest.approx(0.35)
    # Multi-label: per label |mean score - mean truth| within each bin, averaged over labels.
    one = np.log(np.array([[0.8], [0.8]]) / 0.2)
    from kdpipe.task import LabelSchema
    assert expected_calibration_error(one, np.array([[1], [0]]), LabelSchema(MULTI.problem_type, ["a"])) == pytest.approx(0.3)


class _Champion:
    """What judge_champion reads of a registered champion: its labels, thresholds and logits on given texts."""

    def __init__(self, logits, schema):
        self.logits, self.labels, self.problem_type, self.threshold = logits, schema.label_names, schema.problem_type, 0.5

    def run(self, texts):
        return self.logits[: len(texts)], None


@pytest.mark.parametrize("require", [False, True])
def test_judge_champion_needs_the_margin_and_with_require_significance_the_paired_test(monkeypatch, require):
    from kdpipe.champion import judge_champion
    from kdpipe.config import load_config

    two = LabelSchema("single_label_classification", ["neg", "pos"])
    labels = np.array([0, 1] * 200)
    right, wrong = np.eye(2)[labels] * 4.0, np.eye(2)[1 - labels] * 4.0
    champion = right.copy()
    champion[:60] = wrong[:60]  # the champion is wrong on the first 60 rows
    slightly = right.copy()
    slightly[:56] = wrong[:56]  # 4 rows better: not significant
    clearly = right.copy()  # 60 rows better: significant
    worse = right.copy()
    worse[:64] = wrong[:64]
    monkeypatch.setattr("kdpipe.pyfunc.load_registered", lambda uri, variant=None: _Champion(champion, two))
    cfg = load_config(raw={"teacher": {"model": "org/t"}, "student": {"layers": [0]},
                           "data": {"dataset": "x", "train": "train", "validation": "validation"},
                           "gate": {"require_significance": require}})

    def judge(logits):
        return judge_champion(cfg, "3", two, "accuracy", ["t"] * 400, labels, logits, 0.5)

    small, large, down = judge(slightly), judge(clearly), judge(worse)
    assert small["champion_value"] == pytest.approx(340 / 400) and small["challenger_value"] == pytest.approx(344 / 400)
    assert small["test"] == "mcnemar" and not small["significant"] and large["significant"]
    assert small["promote"] is (not require) and large["promote"] and not down["promote"]
    assert "champion v3 0.8500 on the same 400 rows" in small["reason"]
    if require:
        assert "gate.require_significance needs the paired test" in small["reason"]
    # A champion over other labels is never replaced automatically.
    monkeypatch.setattr("kdpipe.pyfunc.load_registered", lambda uri, variant=None: _Champion(champion, SINGLE))
    assert not judge(clearly)["promote"] and "not comparable" in judge(clearly)["reason"]
