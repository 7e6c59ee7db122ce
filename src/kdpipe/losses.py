"""Distillation losses, registered by name (torchdistill-style), combined as `distillation.losses` says. This
registry is the one list of losses: the config accepts any name registered here, so a new loss is one function
(or class) with its decorator, in this file.

Logit losses (LOSSES) compare the student's logits with the teacher's and with the labels; feature losses
(FEATURES) compare intermediate layers and need the teacher's hidden states or attentions, so the teacher runs
online beside the student. The default, the logit loss alone, is the blog's loss exactly."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kdpipe.layer_map import resolve_layer_map

LOSSES: dict[str, Callable] = {}
FEATURES: dict[str, type] = {}


def register(name: str):
    def wrap(fn):
        LOSSES[name] = fn
        return fn
    return wrap


def register_feature(name: str):
    def wrap(cls):
        FEATURES[name] = cls
        return cls
    return wrap


def _labelled_mean(per_row: torch.Tensor, labelled: torch.Tensor | None) -> torch.Tensor:
    """The hard-label loss averages over rows with labels only (transfer-set rows have none)."""
    if labelled is None:
        return per_row.mean()
    mask = labelled.to(per_row.dtype)
    return (per_row * mask).sum() / mask.sum().clamp_min(1.0)


@register("softmax_kl")
def softmax_kl(student_logits, teacher_logits, labels, alpha: float, temperature: float, labelled=None):
    """alpha*CE(labels) + (1-alpha)*T^2*KL(softmax(t/T) || softmax(s/T)), batchmean (Hinton et al.; the blog's loss)."""
    hard = _labelled_mean(F.cross_entropy(student_logits, labels.long(), reduction="none"), labelled)
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1),
                    F.softmax(teacher_logits / temperature, dim=-1), reduction="batchmean")
    return alpha * hard + (1.0 - alpha) * temperature**2 * soft


@register("sigmoid_bce")
def sigmoid_bce(student_logits, teacher_logits, labels, alpha: float, temperature: float, labelled=None):
    """alpha*BCE(labels) + (1-alpha)*T^2*BCE(sigmoid(s/T), sigmoid(t/T)): each label is its own binary teacher."""
    hard = _labelled_mean(F.binary_cross_entropy_with_logits(student_logits, labels.float(), reduction="none")
                          .mean(-1), labelled)
    soft = F.binary_cross_entropy_with_logits(student_logits / temperature, torch.sigmoid(teacher_logits / temperature))
    return alpha * hard + (1.0 - alpha) * temperature**2 * soft


def distillation_loss(student_logits, teacher_logits, labels, alpha: float, temperature: float, name: str,
                      labelled=None):
    if name not in LOSSES:
        raise KeyError(f"unknown distillation loss {name!r}; registered: {sorted(LOSSES)}")
    if teacher_logits is None:
        if alpha != 1.0:
            raise ValueError("teacher logits are required when alpha < 1")
        teacher_logits = student_logits.detach()  # unused: the soft term is weighted 0
    return LOSSES[name](student_logits, teacher_logits.to(student_logits.dtype), labels, alpha, temperature, labelled)


@register_feature("hidden_mse")
class HiddenMSE(nn.Module):
    """Mean squared error between student layer k's hidden states and teacher layer map[k]'s, over real tokens
    (TinyBERT). One learned linear projection maps the student's width to the teacher's when they differ; it trains
    with the student and is not shipped."""

    output = "hidden_states"

    def __init__(self, term, student_config, teacher_config):  # term: a kdpipe.config.LossTerm
        super().__init__()
        self.layer_map = resolve_layer_map(term.layer_map, student_config.num_hidden_layers,
                                           teacher_config.num_hidden_layers)
        s, t = student_config.hidden_size, teacher_config.hidden_size
        self.projection = nn.Linear(s, t) if s != t else nn.Identity()

    def forward(self, student_states, teacher_states, attention_mask):
        mask = attention_mask.unsqueeze(-1).to(student_states[0].dtype)  # (batch, tokens, 1)
        total = 0.0
        for s, t in self.layer_map.items():
            diff = self.projection(student_states[s]) - teacher_states[t].to(student_states[s].dtype)
            total = total + (diff.pow(2) * mask).sum() / (mask.sum() * diff.shape[-1])
        return total / len(self.layer_map)


@register_feature("attention_kl")
class AttentionKL(nn.Module):
    """KL(teacher || student) between the attention distributions of mapped layers, per head and query token,
    averaged over heads and real query tokens (MiniLM's attention transfer). Padded keys carry no probability.
    With different head counts the head-averaged distributions are compared."""

    output = "attentions"

    def __init__(self, term, student_config, teacher_config):  # term: a kdpipe.config.LossTerm
        super().__init__()
        self.layer_map = resolve_layer_map(term.layer_map, student_config.num_hidden_layers,
                                           teacher_config.num_hidden_layers, attention=True)

    def forward(self, student_attentions, teacher_attentions, attention_mask):
        keys = attention_mask[:, None, None, :].bool()  # (batch, 1, 1, keys)
        queries = attention_mask[:, None, :].to(student_attentions[0].dtype)  # (batch, 1, queries)
        total = 0.0
        for s, t in self.layer_map.items():
            ps, pt = student_attentions[s - 1], teacher_attentions[t - 1].to(student_attentions[s - 1].dtype)
            if ps.shape[1] != pt.shape[1]:
                ps, pt = ps.mean(1, keepdim=True), pt.mean(1, keepdim=True)
            kl = torch.where(keys, pt * (pt.clamp_min(1e-12).log() - ps.clamp_min(1e-12).log()), 0.0).sum(-1)
            total = total + (kl * queries).sum() / (queries.sum() * kl.shape[1])
        return total / len(self.layer_map)


class DistillationLoss(nn.Module):
    """The configured terms (kdpipe.config.LossTerm, defaults filled in) summed with their weights. Holds the feature losses' parameters (projections), which
    the trainer optimizes with the student's."""

    def __init__(self, terms: list, schema, student_config=None, teacher_config=None):
        super().__init__()
        self.logit_terms = [(t.weight, schema.loss(t.name), t.alpha, t.temperature)
                            for t in terms if t.logit]
        self.needs_teacher_logits = any(t.uses_teacher_logits for t in terms)
        features = [t for t in terms if t.uses_teacher_features]
        if features and (student_config is None or teacher_config is None):
            raise ValueError("feature losses need the student's and the teacher's model configs")
        self.feature_weights = [t.weight for t in features]
        self.features = nn.ModuleList(FEATURES[t.name](t, student_config, teacher_config) for t in features)

    def needs(self, output: str) -> bool:
        """Whether a term reads this model output (hidden_states, attentions) from both models."""
        return any(f.output == output for f in self.features)

    def supervised_loss(self, logits, labels):
        """What evaluation reports: the first logit term's hard-label loss."""
        return distillation_loss(logits, None, labels, 1.0, 1.0, self.logit_terms[0][1])

    def forward(self, student_out, teacher_logits, teacher_out, labels, attention_mask, labelled=None):
        logits = student_out.logits
        loss = sum(w * distillation_loss(logits, teacher_logits, labels, alpha, temperature, name, labelled)
                   for w, name, alpha, temperature in self.logit_terms)
        for w, f in zip(self.feature_weights, self.features):
            loss = loss + w * f(getattr(student_out, f.output), getattr(teacher_out, f.output), attention_mask)
        return loss
