"""Distillation losses, registered by name (torchdistill-style); the task's default is LabelSchema.default_loss."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LOSSES: dict[str, Callable] = {}


def register(name: str):
    def wrap(fn):
        LOSSES[name] = fn
        return fn
    return wrap


@register("softmax_kl")
def softmax_kl(student_logits, teacher_logits, labels, alpha: float, temperature: float):
    """alpha*CE(labels) + (1-alpha)*T^2*KL(softmax(t/T) || softmax(s/T)), batchmean (Hinton et al.; the blog's loss)."""
    hard = F.cross_entropy(student_logits, labels.long())
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1),
                    F.softmax(teacher_logits / temperature, dim=-1), reduction="batchmean")
    return alpha * hard + (1.0 - alpha) * temperature**2 * soft


@register("sigmoid_bce")
def sigmoid_bce(student_logits, teacher_logits, labels, alpha: float, temperature: float):
    """alpha*BCE(labels) + (1-alpha)*T^2*BCE(sigmoid(s/T), sigmoid(t/T)): each label is its own binary teacher."""
    hard = F.binary_cross_entropy_with_logits(student_logits, labels.float())
    soft = F.binary_cross_entropy_with_logits(student_logits / temperature, torch.sigmoid(teacher_logits / temperature))
    return alpha * hard + (1.0 - alpha) * temperature**2 * soft


def distillation_loss(student_logits, teacher_logits, labels, alpha: float, temperature: float, name: str):
    if name not in LOSSES:
        raise KeyError(f"unknown distillation loss {name!r}; registered: {sorted(LOSSES)}")
    if teacher_logits is None:
        if alpha != 1.0:
            raise ValueError("teacher logits are required when alpha < 1")
        teacher_logits = student_logits.detach()  # unused: the soft term is weighted 0
    return LOSSES[name](student_logits, teacher_logits.to(student_logits.dtype), labels, alpha, temperature)
