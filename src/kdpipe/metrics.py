"""Task metrics through a local `evaluate` module, plus latency measurement shared by every model kind."""

from __future__ import annotations

import statistics
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from kdpipe.data import MULTI

_MODULE = Path(__file__).parent / "metric_modules" / "kd_classification"


@lru_cache(maxsize=2)
def _metric(problem_type: str):
    import evaluate

    return evaluate.load(str(_MODULE), config_name="multi_label" if problem_type == MULTI else "single_label")


def scores_from_logits(logits: np.ndarray, problem_type: str) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    if problem_type == MULTI:
        return 1.0 / (1.0 + np.exp(-logits))
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def compute_metrics(logits: np.ndarray, labels: np.ndarray, schema, threshold: float = 0.5) -> dict[str, float]:
    logits, labels = np.asarray(logits), np.asarray(labels)
    if schema.problem_type == MULTI:
        scores = scores_from_logits(logits, MULTI)
        result = _metric(MULTI).compute(predictions=scores.astype(np.float32), references=labels.astype(np.int32),
                                        threshold=threshold)
        # Per-label AUCs under their names, for people reading MLflow.
        for k, name in enumerate(schema.label_names):
            if f"roc_auc_{k}" in result:
                result[f"roc_auc_{name}"] = result.pop(f"roc_auc_{k}")
        return result
    return _metric(schema.problem_type).compute(predictions=logits.argmax(-1), references=labels)


def primary_metric(schema, configured: str = "auto") -> str:
    if configured != "auto":
        return configured
    return "micro_f1" if schema.problem_type == MULTI else "accuracy"


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
