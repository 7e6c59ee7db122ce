"""Evaluation gate: absolute thresholds, retention vs the teacher, latency, and the current champion."""

from __future__ import annotations

# What export-register needs of the gate's result (the champion it judged: the alias moves by compare-and-set).
DECISION_KEYS = ("passed", "promote_to_champion", "metric", "value", "champion_version")


def evaluate_gate(gate, metric: str, student_metrics: dict, teacher_metrics: dict,
                  student_latency_ms: float | None = None, champion_metrics: dict | None = None) -> dict:
    """Returns {"passed", "reasons", "checks", "promote_to_champion"}: all data, no side effects."""
    checks = []
    value = student_metrics.get(metric)
    if value is None:
        return {"passed": False, "reasons": [f"student metrics have no {metric!r} (have {sorted(student_metrics)}); "
                                             f"fix gate.metric"], "checks": [], "promote_to_champion": False}

    def check(name, ok, observed, limit, text):
        checks.append({"check": name, "passed": bool(ok), "observed": observed, "limit": limit, "reason": text})

    check("min_metric", value >= gate.min_metric, value, gate.min_metric,
          f"student {metric} {value:.4f} {'>=' if value >= gate.min_metric else '<'} gate.min_metric {gate.min_metric}")
    teacher_value = teacher_metrics.get(metric)
    if teacher_value:
        retention = value / teacher_value
        check("min_retention", retention >= gate.min_retention, retention, gate.min_retention,
              f"retention {retention:.3f} (student/teacher {metric}) "
              f"{'>=' if retention >= gate.min_retention else '<'} gate.min_retention {gate.min_retention}")
    if gate.max_latency_ms is not None:
        ok = student_latency_ms is not None and student_latency_ms <= gate.max_latency_ms
        check("max_latency_ms", ok, student_latency_ms, gate.max_latency_ms,
              f"student latency {student_latency_ms if student_latency_ms is None else round(student_latency_ms, 2)} ms "
              f"{'<=' if ok else '>'} gate.max_latency_ms {gate.max_latency_ms}")
    passed = all(c["passed"] for c in checks)
    champion_value = (champion_metrics or {}).get(metric)
    promote = passed and beats_champion(value, champion_value, gate.min_improvement_over_champion)
    if champion_value is not None:
        checks.append({"check": "champion", "passed": promote, "observed": value, "limit": champion_value,
                       "reason": f"challenger {metric} {value:.4f} vs champion {champion_value:.4f} "
                                 f"(needs +{gate.min_improvement_over_champion}): "
                                 f"{'takes the champion alias' if promote else 'stays challenger'}"})
    return {"passed": passed, "reasons": [c["reason"] for c in checks if not c["passed"] and c["check"] != "champion"]
            or [c["reason"] for c in checks], "checks": checks, "promote_to_champion": promote, "metric": metric,
            "value": value}


def beats_champion(value: float, champion_value: float | None, min_improvement: float) -> bool:
    """The one champion rule (the gate's, and again when another run moved the alias meanwhile)."""
    return champion_value is None or value >= champion_value + min_improvement
