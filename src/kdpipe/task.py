"""The task type, decided once (like `problem_type` in HF run_classification.py), and everything that follows
from it: activation, decision rule, primary metric, default loss. Imports nothing else from kdpipe."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SINGLE = "single_label_classification"
MULTI = "multi_label_classification"


@dataclass
class LabelSchema:
    problem_type: str
    label_names: list[str]

    def __post_init__(self):
        if self.problem_type not in (SINGLE, MULTI):
            raise ValueError(f"problem_type must be {SINGLE!r} or {MULTI!r}, got {self.problem_type!r}")

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def multi_label(self) -> bool:
        return self.problem_type == MULTI

    @property
    def activation(self) -> str:
        """Scores from logits: independent sigmoids per label, or one softmax over the classes."""
        return "sigmoid" if self.multi_label else "softmax"

    def _configured_or(self, configured: str, multi: str, single: str) -> str:
        return configured if configured != "auto" else multi if self.multi_label else single

    def loss(self, configured: str = "auto") -> str:
        """The distillation loss (distillation.loss when set): per-label sigmoid BCE, or the blog's softmax KL."""
        return self._configured_or(configured, "sigmoid_bce", "softmax_kl")

    @property
    def metric_names(self) -> list[str]:
        """The metrics kdpipe reports for this task (a per-label ROC-AUC only where the split has both classes)."""
        if not self.multi_label:
            return ["accuracy", "macro_f1"]
        return ["micro_f1", "macro_f1", "subset_accuracy", "roc_auc_macro"] + [f"roc_auc_{n}" for n in self.label_names]

    def primary_metric(self, configured: str = "auto") -> str:
        """The metric the gate compares (gate.metric when set): micro-F1 (multi-label) or accuracy."""
        return self._configured_or(configured, "micro_f1", "accuracy")

    def scores(self, logits) -> np.ndarray:
        logits = np.asarray(logits, dtype=np.float64)
        if self.multi_label:
            return 1.0 / (1.0 + np.exp(-logits))
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def torch_scores(self, logits):
        import torch

        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)

    def decide(self, scores, threshold: float = 0.5) -> np.ndarray:
        """Predicted labels: a 0/1 row per text (each label at its threshold) or one class id per text."""
        scores = np.asarray(scores)
        return (scores >= np.asarray(threshold)).astype(np.int64) if self.multi_label else scores.argmax(-1)

    def predicted_names(self, scores, threshold: float = 0.5) -> list[list[str]]:
        decided = self.decide(scores, threshold)
        if self.multi_label:
            return [[n for n, on in zip(self.label_names, row) if on] for row in decided]
        return [[self.label_names[k]] for k in decided]

    def to_json(self) -> dict:
        return asdict(self)
