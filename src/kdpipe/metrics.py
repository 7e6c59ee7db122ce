"""Task metrics (scikit-learn), plus latency measurement shared by every model kind.

Not through Hugging Face `evaluate`: its Hub metric scripts do not load offline, and `import evaluate` takes
seconds and imports torch, which steps such as the gate do not otherwise need. The numbers reach users in MLflow.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from kdpipe.task import LabelSchema

def classification_metrics(predictions, references, multi_label: bool, threshold: float = 0.5) -> dict[str, float]:
    """Single-label: predictions are class ids -> accuracy, macro_f1. Multi-label: predictions are per-label scores
    in [0, 1], references 0/1 rows -> micro_f1, macro_f1, subset_accuracy, roc_auc_<k> per label (where the split
    has both classes; AUC is undefined otherwise, not 0.5) and their macro mean."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    preds, refs = np.asarray(predictions), np.asarray(references)
    if not multi_label:
        return {"accuracy": float(accuracy_score(refs, preds)),
                "macro_f1": float(f1_score(refs, preds, average="macro", zero_division=0))}
    hard = (preds >= np.asarray(threshold)).astype(int)
    out = {"micro_f1": float(f1_score(refs, hard, average="micro", zero_division=0)),
           "macro_f1": float(f1_score(refs, hard, average="macro", zero_division=0)),
           "subset_accuracy": float(accuracy_score(refs, hard))}
    aucs = []
    for k in range(refs.shape[1]):
        if len(np.unique(refs[:, k])) == 2:
            out[f"roc_auc_{k}"] = float(roc_auc_score(refs[:, k], preds[:, k]))
            aucs.append(out[f"roc_auc_{k}"])
    out["roc_auc_macro"] = float(np.mean(aucs)) if aucs else float("nan")
    return out


def compute_metrics(logits: np.ndarray, labels: np.ndarray, schema: LabelSchema, threshold=0.5) -> dict[str, float]:
    """`threshold`: multi-label decision threshold, one for all labels or one per label."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if not schema.multi_label:
        return classification_metrics(schema.decide(logits), labels, multi_label=False)
    result = classification_metrics(schema.scores(logits), labels.astype(np.int32), multi_label=True,
                                    threshold=threshold)
    # Per-label AUCs under their names, for people reading MLflow.
    for k, name in enumerate(schema.label_names):
        if f"roc_auc_{k}" in result:
            result[f"roc_auc_{name}"] = result.pop(f"roc_auc_{k}")
    return result


def measure_latency(run, runs: int = 20, warmup: int = 3) -> float:
    """Median wall time of run() in milliseconds."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1000.0)
    return statistics.median(times)


def tune_thresholds(logits: np.ndarray, labels: np.ndarray, schema: LabelSchema, default: float,
                    grid: np.ndarray = np.round(np.arange(0.05, 0.96, 0.05), 2)) -> list[float] | None:
    """Multi-label: per label, the threshold on its sigmoid score that maximizes that label's F1 on these rows
    (validation); `default` for a label with no positive row. None for single-label (argmax needs none)."""
    if not schema.multi_label:
        return None
    scores, labels = schema.scores(logits), np.asarray(labels) >= 0.5
    out = []
    for k in range(schema.num_labels):
        positives = labels[:, k]
        if not positives.any():
            out.append(float(default))
            continue
        hits = scores[:, k][None, :] >= grid[:, None]  # (thresholds, rows)
        tp = (hits & positives).sum(1)
        f1 = 2 * tp / np.maximum(hits.sum(1) + positives.sum(), 1)
        out.append(float(grid[int(np.argmax(f1))]))  # the lowest threshold among ties
    return out


def decision_agreement(logits_a, logits_b, schema: LabelSchema, thresholds_a=0.5, thresholds_b=0.5) -> dict:
    """How often two models decide the same: `rows` (the whole decision: the top-1 class, or every label of a
    multi-label row) and, multi-label, `per_label`."""
    a = schema.decide(schema.scores(logits_a), thresholds_a)
    b = schema.decide(schema.scores(logits_b), thresholds_b)
    same = a == b
    if not schema.multi_label:
        return {"rows": float(same.mean()) if same.size else float("nan")}
    return {"rows": float(same.all(axis=1).mean()), "per_label": dict(zip(schema.label_names, same.mean(0).tolist()))}


def fidelity_to_teacher(logits, teacher_logits, labels, schema: LabelSchema, thresholds, teacher_threshold) -> dict:
    """How often the student decides as its teacher (per label too, multi-label), and its calibration."""
    agreement = decision_agreement(logits, teacher_logits, schema, thresholds, teacher_threshold)
    out = {"teacher_agreement": agreement["rows"], "calibration_error": expected_calibration_error(logits, labels, schema)}
    if "per_label" in agreement:
        out["teacher_agreement_per_label"] = agreement["per_label"]
    return out


def expected_calibration_error(logits, labels, schema: LabelSchema, bins: int = 15) -> float:
    """ECE over equal-width confidence bins: single-label on the top class's probability (right or wrong);
    multi-label the mean over labels of each label's sigmoid score against its 0/1 truth."""
    scores, labels = schema.scores(logits), np.asarray(labels)
    if schema.multi_label:
        return float(np.mean([_ece(scores[:, k], labels[:, k] >= 0.5, bins) for k in range(schema.num_labels)]))
    return _ece(scores.max(1), scores.argmax(1) == labels, bins)


def _ece(confidence: np.ndarray, outcome: np.ndarray, bins: int) -> float:
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        rows = which == b
        if rows.any():
            total += rows.mean() * abs(confidence[rows].mean() - outcome[rows].mean())
    return float(total)
