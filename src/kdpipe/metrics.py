"""Task metrics (scikit-learn), plus latency measurement shared by every model kind.

The same numbers are published as an `evaluate` module (metric_modules/kd_classification, a thin wrapper over
`classification_metrics`) for users who load metrics with `evaluate.load`. The pipeline calls the function
directly: `import evaluate` takes seconds and imports torch, which steps such as the gate do not otherwise need.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from kdpipe.task import LabelSchema

EVALUATE_MODULE = Path(__file__).parent / "metric_modules" / "kd_classification"


def classification_metrics(predictions, references, multi_label: bool, threshold: float = 0.5) -> dict[str, float]:
    """Single-label: predictions are class ids -> accuracy, macro_f1. Multi-label: predictions are per-label scores
    in [0, 1], references 0/1 rows -> micro_f1, macro_f1, subset_accuracy, roc_auc_<k> per label (where the split
    has both classes; AUC is undefined otherwise, not 0.5) and their macro mean."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    preds, refs = np.asarray(predictions), np.asarray(references)
    if not multi_label:
        return {"accuracy": float(accuracy_score(refs, preds)),
                "macro_f1": float(f1_score(refs, preds, average="macro", zero_division=0))}
    hard = (preds >= threshold).astype(int)
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


def compute_metrics(logits: np.ndarray, labels: np.ndarray, schema: LabelSchema, threshold: float = 0.5) -> dict[str, float]:
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
