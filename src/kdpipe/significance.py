"""Paired comparison of two models scored on the same rows: McNemar's exact test for accuracy (only the rows where
exactly one of them is right count), a paired bootstrap confidence interval of the difference for any other
metric (F1, ROC-AUC: no closed form). Pure numpy/scipy: numbers in, numbers out."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def mcnemar(challenger_right: np.ndarray, champion_right: np.ndarray, level: float) -> dict:
    """Exact (binomial) two-sided McNemar test. `significant`: the challenger is better and p < level."""
    from scipy.stats import binomtest

    a, b = np.asarray(challenger_right, bool), np.asarray(champion_right, bool)
    only_challenger, only_champion = int((a & ~b).sum()), int((b & ~a).sum())
    discordant = only_challenger + only_champion
    p = float(binomtest(only_challenger, discordant, 0.5).pvalue) if discordant else 1.0
    return {"test": "mcnemar", "only_challenger_right": only_challenger, "only_champion_right": only_champion,
            "p_value": p, "level": level, "significant": bool(p < level and only_challenger > only_champion)}


def paired_bootstrap(metric: Callable[[np.ndarray], float], n_rows: int, level: float, samples: int,
                     seed: int = 0) -> dict:
    """`metric(rows)` is the challenger's metric minus the champion's on those rows (indices, with repeats). The
    percentile interval of that difference over `samples` resamples of the rows; `significant` when it lies
    above 0. Resamples where the metric is undefined (an AUC on a resample with one class) are left out."""
    rng = np.random.default_rng(seed)
    diffs = np.array([metric(rng.integers(0, n_rows, n_rows)) for _ in range(samples)], dtype=np.float64)
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size == 0:
        return {"test": "paired_bootstrap", "interval": None, "samples": 0, "level": level, "significant": False}
    low, high = np.percentile(diffs, [100 * level / 2, 100 * (1 - level / 2)])
    return {"test": "paired_bootstrap", "interval": [float(low), float(high)], "samples": int(diffs.size),
            "level": level, "significant": bool(low > 0)}
