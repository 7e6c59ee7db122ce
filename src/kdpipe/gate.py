"""Evaluation gate: absolute thresholds, retention vs the teacher, latency, fidelity to the teacher, calibration,
and the current champion re-scored on the same rows (kdpipe.champion). Pure: numbers in, decision out."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields


@dataclass
class GateDecision:
    """The gate's decision, as export-register, the registry, the model card, the summary and compare read it:
    travels from the gate to export-register as the output parameter `decision_json`, and is the gate step's
    result (with the confusion matrix and label names beside it)."""

    passed: bool = False
    promote_to_champion: bool = False
    metric: str | None = None
    value: float | None = None  # the student's `metric` on `split`
    reasons: list[str] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    split: str | None = None  # the rows judged: test when labelled, else validation
    rows: int | None = None
    metrics: dict = field(default_factory=dict)  # the student's, on `split`
    teacher_metrics: dict = field(default_factory=dict)
    fidelity: dict | None = None
    latency_ms_b1: float | None = None  # the PyTorch student's, on the CPU
    champion_version: str | None = None  # the champion judged (the alias moves by compare-and-set)
    champion: dict | None = None  # kdpipe.champion.judge_champion's verdict
    notes: list[str] = field(default_factory=list)
    thresholds: dict | None = None  # multi-label: the tuned threshold of each label

    @classmethod
    def from_result(cls, result: dict) -> "GateDecision":
        """From the gate step's result (extra keys ignored)."""
        return cls(**{f.name: result[f.name] for f in fields(cls) if f.name in result})

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "GateDecision":
        return cls.from_result(json.loads(text))

    @property
    def teacher_value(self) -> float | None:
        return self.teacher_metrics.get(self.metric) if self.metric else None

    @property
    def champion_value(self) -> float | None:
        return (self.champion or {}).get("champion_value")


def evaluate_gate(gate, metric: str, student_metrics: dict, teacher_metrics: dict,
                  student_latency_ms: float | None = None, champion: dict | None = None,
                  fidelity: dict | None = None) -> GateDecision:
    """`champion` is judge_champion's verdict (None: there is none); `fidelity` has `teacher_agreement` and
    `calibration_error` (when measured)."""
    checks = []
    value = student_metrics.get(metric)
    if value is None:
        return GateDecision(passed=False, metric=metric, reasons=[f"student metrics have no {metric!r} (have "
                                                                  f"{sorted(student_metrics)}); fix gate.metric"])

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
    failed = [c["reason"] for c in checks if not c["passed"] and c["check"] != "champion"]
    reasons = failed or [c["reason"] for c in checks]
    return GateDecision(passed=passed, promote_to_champion=promote, metric=metric, value=value, reasons=reasons,
                        checks=checks, metrics=student_metrics, teacher_metrics=teacher_metrics,
                        fidelity=fidelity or None,
                        latency_ms_b1=student_latency_ms, champion=champion)
