"""Evaluation gate: absolute thresholds, retention vs the teacher, latency, fidelity to the teacher, calibration,
and the current champion re-scored on the same rows (kdpipe.champion). Pure: numbers in, decision out."""

from __future__ import annotations

# What export-register needs of the gate's result: the champion it judged (the alias moves by compare-and-set)
# and what the model card says.
DECISION_KEYS = ("passed", "promote_to_champion", "metric", "value", "champion_version", "champion", "checks",
                 "metrics", "teacher_metrics", "fidelity", "split", "rows", "notes", "thresholds")


def evaluate_gate(gate, metric: str, student_metrics: dict, teacher_metrics: dict,
                  student_latency_ms: float | None = None, champion: dict | None = None,
                  fidelity: dict | None = None) -> dict:
    """Returns {"passed", "reasons", "checks", "promote_to_champion", ...}. `champion` is judge_champion's verdict
    (None: there is none); `fidelity` has `teacher_agreement` and `calibration_error` (when measured)."""
    checks = []
    value = student_metrics.get(metric)
    if value is None:
        return {"passed": False, "reasons": [f"student metrics have no {metric!r} (have {sorted(student_metrics)}); "
                                             f"fix gate.metric"], "checks": [], "promote_to_champion": False}

    def check(name, ok, observed, limit, text):
        checks.append({"check": name, "passed": bool(ok), "observed": observed, "limit": limit, "reason": text})

    def rel(ok, good, bad):
        return good if ok else bad

    check("min_metric", value >= gate.min_metric, value, gate.min_metric,
          f"student {metric} {value:.4f} {rel(value >= gate.min_metric, '>=', '<')} gate.min_metric {gate.min_metric}")
    teacher_value = teacher_metrics.get(metric)
    if teacher_value:
        retention = value / teacher_value
        check("min_retention", retention >= gate.min_retention, retention, gate.min_retention,
              f"retention {retention:.3f} (student/teacher {metric}) "
              f"{rel(retention >= gate.min_retention, '>=', '<')} gate.min_retention {gate.min_retention}")
    if gate.max_latency_ms is not None:
        ok = student_latency_ms is not None and student_latency_ms <= gate.max_latency_ms
        check("max_latency_ms", ok, student_latency_ms, gate.max_latency_ms,
              f"student latency {student_latency_ms if student_latency_ms is None else round(student_latency_ms, 2)} ms "
              f"{rel(ok, '<=', '>')} gate.max_latency_ms {gate.max_latency_ms}")
    fidelity = fidelity or {}
    if gate.min_teacher_agreement is not None:
        agreement = fidelity.get("teacher_agreement")
        ok = agreement is not None and agreement >= gate.min_teacher_agreement
        check("min_teacher_agreement", ok, agreement, gate.min_teacher_agreement,
              f"student decides as the teacher on {agreement if agreement is None else f'{agreement:.3f}'} of rows "
              f"{rel(ok, '>=', '<')} gate.min_teacher_agreement {gate.min_teacher_agreement}")
    if gate.max_calibration_error is not None:
        ece = fidelity.get("calibration_error")
        ok = ece is not None and ece <= gate.max_calibration_error
        check("max_calibration_error", ok, ece, gate.max_calibration_error,
              f"expected calibration error {ece if ece is None else f'{ece:.4f}'} {rel(ok, '<=', '>')} "
              f"gate.max_calibration_error {gate.max_calibration_error}")
    passed = all(c["passed"] for c in checks)
    promote = passed and (champion is None or bool(champion["promote"]))
    if champion is not None:
        checks.append({"check": "champion", "passed": promote, "observed": champion.get("challenger_value"),
                       "limit": champion.get("champion_value"), "reason": champion["reason"]})
    return {"passed": passed, "reasons": [c["reason"] for c in checks if not c["passed"] and c["check"] != "champion"]
            or [c["reason"] for c in checks], "checks": checks, "promote_to_champion": promote, "metric": metric,
            "value": value}
