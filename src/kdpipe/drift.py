"""Drift judged by the teacher: on recent texts that have no labels, how often the champion decides as its teacher
(overall and per label), and how far the champion's and the teacher's score distributions have moved since training
(the population stability index of each one's top score: a teacher less sure of recent texts than of the rows the
champion was made for sees a new domain even where the champion, failing with it, still agrees). The same figures
on the gate's rows at registration are the baseline.
And the teacher-judged comparison of two models on such texts: McNemar on the rows where exactly one of them
decides as the teacher. Numbers in, numbers out; the command and the steps load the models."""

from __future__ import annotations

import numpy as np

from kdpipe.significance import mcnemar
from kdpipe.task import LabelSchema

BINS = 10
FLOOR = 1e-4  # an empty bin's share, so that the index stays finite


def top_score(scores: np.ndarray) -> np.ndarray:
    """Each row's highest score: the winning class's probability, or a multi-label row's most confident label."""
    return np.asarray(scores, dtype=np.float64).max(axis=1)


def bin_edges(reference: np.ndarray, bins: int = BINS) -> list[float]:
    """Interior edges of equal-count bins of the reference values (repeated quantiles merged)."""
    inner = np.quantile(np.asarray(reference, dtype=np.float64), np.linspace(0, 1, bins + 1)[1:-1])
    return sorted(set(float(e) for e in inner))


def shares(values: np.ndarray, edges: list[float]) -> list[float]:
    """The fraction of values in each bin (len(edges) + 1 bins; a value on an edge goes to the upper bin)."""
    counts = np.bincount(np.searchsorted(edges, np.asarray(values, dtype=np.float64), side="right"),
                         minlength=len(edges) + 1)
    return (counts / max(len(values), 1)).tolist()


def psi(expected: list[float], actual: list[float]) -> float:
    """Population stability index: sum over bins of (actual - expected) * ln(actual / expected). 0 for the same
    distribution; about 0.1 is a moderate shift, 0.25 a large one by the usual reading."""
    e = np.clip(np.asarray(expected, dtype=np.float64), FLOOR, None)
    a = np.clip(np.asarray(actual, dtype=np.float64), FLOOR, None)
    return float(np.sum((a - e) * np.log(a / e)))


def agrees(decisions: np.ndarray, teacher: np.ndarray) -> np.ndarray:
    """Per row: the whole decision equals the teacher's (the class, or every label of a multi-label row)."""
    same = np.asarray(decisions) == np.asarray(teacher)
    return same.all(axis=1) if same.ndim == 2 else same


def profile(scores: np.ndarray, teacher_scores: np.ndarray, schema: LabelSchema, threshold=0.5,
            teacher_threshold=0.5, like: dict | None = None) -> dict:
    """The model against its teacher on some rows: `agreement` (rows decided as the teacher decides), `per_label`
    (multi-label: each label's agreement; single-label: agreement on the rows the teacher gives that class), and
    the bins (`edges`, `teacher_edges`: those of `like`, a baseline, or equal-count bins of these rows) and
    `shares` of the model's and of the teacher's top score."""
    decided, reference = schema.decide(scores, threshold), schema.decide(teacher_scores, teacher_threshold)
    rows = agrees(decided, reference)
    if schema.multi_label:
        per_label = (decided == reference).mean(axis=0) if len(rows) else np.full(schema.num_labels, np.nan)
        per_label = dict(zip(schema.label_names, per_label.tolist()))
    else:
        per_label = {name: float(rows[reference == k].mean()) for k, name in enumerate(schema.label_names)
                     if (reference == k).any()}
    out = {"rows": int(len(rows)), "agreement": float(rows.mean()) if len(rows) else float("nan"),
           "per_label": per_label}
    for prefix, values in (("", scores), ("teacher_", teacher_scores)):
        top = top_score(values)
        # A baseline recorded before the teacher's bins were: this side gets bins of its own, and no PSI.
        edges = list(like[f"{prefix}edges"]) if like and f"{prefix}edges" in like else bin_edges(top)
        out[f"{prefix}edges"], out[f"{prefix}shares"] = edges, shares(top, edges)
    return out


def compare(baseline: dict, now: dict, max_disagreement_increase: float, max_psi: float | None = None,
            max_teacher_psi: float | None = None) -> dict:
    """Has the world moved? `now` must be profiled like the baseline (profile(..., like=baseline)). Drift when the
    champion disagrees with its teacher more than `max_disagreement_increase` more often than at registration, or
    (when set) when the PSI of its top score exceeds `max_psi`, or that of the teacher's top score
    `max_teacher_psi`."""
    if list(baseline["edges"]) != list(now["edges"]):
        raise ValueError("profile the recent rows like the baseline (profile(..., like=baseline))")
    increase = (1 - now["agreement"]) - (1 - baseline["agreement"])
    index = psi(baseline["shares"], now["shares"])
    teacher_index = psi(baseline["teacher_shares"], now["teacher_shares"]) if "teacher_shares" in baseline else None
    reasons = []
    if increase > max_disagreement_increase:
        reasons.append(f"the champion disagrees with its teacher on {1 - now['agreement']:.1%} of recent texts "
                       f"against {1 - baseline['agreement']:.1%} at registration (+{increase:.1%} > "
                       f"{max_disagreement_increase:.1%})")
    if max_psi is not None and index > max_psi:
        reasons.append(f"the champion's top-score distribution moved: PSI {index:.3f} > {max_psi}")
    if max_teacher_psi is not None and teacher_index is not None and teacher_index > max_teacher_psi:
        reasons.append(f"the teacher's top-score distribution moved (recent texts unlike the champion's): PSI "
                       f"{teacher_index:.3f} > {max_teacher_psi}")
    return {"agreement_then": baseline["agreement"], "agreement_now": now["agreement"],
            "disagreement_increase": float(increase), "psi": index, "teacher_psi": teacher_index,
            "drifted": bool(reasons), "reasons": reasons,
            "per_label_then": baseline["per_label"], "per_label_now": now["per_label"], "rows": now["rows"]}


def teacher_judged(challenger: np.ndarray, champion: np.ndarray, teacher: np.ndarray, level: float) -> dict:
    """Challenger against champion with the teacher's decisions as the reference (no labels needed): McNemar on
    the rows where exactly one of them decides as the teacher, and each one's agreement."""
    challenger_right, champion_right = agrees(challenger, teacher), agrees(champion, teacher)
    return {**mcnemar(challenger_right, champion_right, level), "rows": int(len(challenger_right)),
            "challenger_agreement": float(challenger_right.mean()) if len(challenger_right) else float("nan"),
            "champion_agreement": float(champion_right.mean()) if len(champion_right) else float("nan")}
