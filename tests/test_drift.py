"""The drift figures and the teacher-judged comparison, on constructed decisions and score distributions whose
answers are known."""

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from kdpipe.drift import bin_edges, compare, profile, psi, shares, teacher_judged
from kdpipe.task import MULTI, SINGLE, LabelSchema


def test_teacher_judged_mcnemar_counts_only_the_rows_where_exactly_one_agrees():
    """100 rows: both decide as the teacher on 80, only the challenger on 7, only the champion on 2, neither on 11
    (neither's two wrong answers even differ from each other on some rows: still not discordant)."""
    teacher = np.zeros(100, dtype=int)
    challenger, champion = teacher.copy(), teacher.copy()
    champion[80:87] = 1          # only the challenger agrees
    challenger[87:89] = 1        # only the champion agrees
    challenger[89:], champion[89:] = 1, np.r_[np.ones(5, int), 2 * np.ones(6, int)]  # neither
    out = teacher_judged(challenger, champion, teacher, level=0.05)
    assert (out["only_challenger_right"], out["only_champion_right"], out["rows"]) == (7, 2, 100)
    assert out["p_value"] == pytest.approx(binomtest(7, 9, 0.5).pvalue)
    assert out["challenger_agreement"] == 0.87 and out["champion_agreement"] == 0.82
    assert out["significant"] is False  # p = 0.18

    # Multi-label: a row agrees only when every label does.
    teacher = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    challenger = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    champion = np.array([[1, 1], [0, 1], [1, 1], [0, 0]])
    out = teacher_judged(challenger, champion, teacher, level=0.05)
    assert (out["only_challenger_right"], out["only_champion_right"]) == (1, 1) and out["p_value"] == 1.0


def test_psi_of_known_shares():
    assert psi([0.25] * 4, [0.25] * 4) == 0.0
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.4 * math.log(1.8) + 0.4 * math.log(0.5 / 0.1))
    assert math.isfinite(psi([0.5, 0.5], [1.0, 0.0]))  # an empty bin is floored, not infinite


def test_bins_are_equal_count_on_the_reference():
    reference = np.arange(1000) / 1000
    edges = bin_edges(reference, 10)
    assert len(edges) == 9 and shares(reference, edges) == pytest.approx([0.1] * 10)
    assert bin_edges(np.ones(50)) == [1.0]  # repeated quantiles merge


def single_label_scores(rng, n: int, confidence: float) -> np.ndarray:
    """Two-class probabilities whose top score is about `confidence`."""
    top = np.clip(rng.normal(confidence, 0.04, n), 0.5, 0.999)
    first_wins = rng.random(n) < 0.5
    return np.stack([np.where(first_wins, top, 1 - top), np.where(first_wins, 1 - top, top)], axis=1)


def test_drift_on_constructed_score_distributions():
    """Baseline: a confident champion agreeing with its teacher on 95% of rows. Recent rows from the same
    distribution end not drifted (PSI about 0); rows where the champion is unsure and disagrees on 30% drift on
    both figures."""
    schema, rng = LabelSchema(SINGLE, ["neg", "pos"]), np.random.default_rng(0)

    def rows(n, confidence, disagree):
        scores = single_label_scores(rng, n, confidence)
        teacher = scores.copy()
        flip = rng.random(n) < disagree
        teacher[flip] = teacher[flip][:, ::-1]
        return scores, teacher

    baseline = profile(*rows(4000, 0.95, 0.05), schema)
    assert baseline["agreement"] == pytest.approx(0.95, abs=0.01) and sum(baseline["shares"]) == pytest.approx(1)
    same = compare(baseline, profile(*rows(4000, 0.95, 0.05), schema, like=baseline), 0.05, 0.1)
    assert not same["drifted"] and same["psi"] < 0.02 and abs(same["disagreement_increase"]) < 0.02
    moved = compare(baseline, profile(*rows(4000, 0.65, 0.30), schema, like=baseline), 0.05, 0.1)
    assert moved["drifted"] and moved["psi"] > 1 and moved["disagreement_increase"] == pytest.approx(0.25, abs=0.03)
    assert len(moved["reasons"]) == 2 and "disagrees with its teacher on" in moved["reasons"][0]
    with pytest.raises(ValueError, match="like the baseline"):
        compare(baseline, profile(*rows(100, 0.95, 0.05), schema), 0.05)


def test_a_teacher_unsure_of_recent_texts_is_drift_even_where_the_champion_still_agrees():
    """The failure the benchmark found: out of domain, a champion made of its teacher's layers fails with it, so
    agreement stays and the champion's own confidence barely moves. The teacher's top score does move: drift on
    that figure alone, and only when max_teacher_psi is set. A baseline recorded before the teacher's bins were
    gives no teacher PSI (and no error)."""
    schema, rng = LabelSchema(SINGLE, ["neg", "pos"]), np.random.default_rng(1)
    champion = single_label_scores(rng, 4000, 0.90)
    baseline = profile(champion, single_label_scores(rng, 4000, 0.95), schema)
    recent = profile(single_label_scores(rng, 4000, 0.90), single_label_scores(rng, 4000, 0.75), schema,
                     like=baseline)
    assert recent["teacher_edges"] == baseline["teacher_edges"]
    moved = compare(baseline, recent, 0.05, 0.25, 0.2)
    assert moved["psi"] < 0.02 and moved["teacher_psi"] > 1 and moved["drifted"]
    assert len(moved["reasons"]) == 1 and "teacher's top-score distribution moved" in moved["reasons"][0]
    assert not compare(baseline, recent, 0.05, 0.25, None)["drifted"]
    old = {k: v for k, v in baseline.items() if not k.startswith("teacher_")}
    again = compare(old, profile(champion, champion, schema, like=old), 0.05, 0.25, 0.2)
    assert again["teacher_psi"] is None and not again["drifted"]


def test_per_label_agreement():
    single = LabelSchema(SINGLE, ["a", "b", "c"])
    teacher = np.eye(3)[[0, 0, 1, 1, 2, 2]]
    student = np.eye(3)[[0, 1, 1, 1, 2, 0]]
    assert profile(student, teacher, single)["per_label"] == {"a": 0.5, "b": 1.0, "c": 0.5}
    multi = LabelSchema(MULTI, ["x", "y"])
    out = profile(np.array([[0.9, 0.1], [0.9, 0.9]]), np.array([[0.9, 0.9], [0.9, 0.9]]), multi)
    assert out["per_label"] == {"x": 1.0, "y": 0.5} and out["agreement"] == 0.5
