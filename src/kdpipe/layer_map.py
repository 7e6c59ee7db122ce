"""Which student layer learns from which teacher layer (feature losses). Layers count from 1; 0 is the
embeddings (hidden states only: attention has no layer 0)."""

from __future__ import annotations

from kdpipe.errors import ConfigError


def uniform_layer_map(student_layers: int, teacher_layers: int) -> dict[int, int]:
    """Student layer k learns from teacher layer k * teacher/student (2 from 6: {1: 3, 2: 6}), as TinyBERT."""
    return {k: round(k * teacher_layers / student_layers) for k in range(1, student_layers + 1)}


def resolve_layer_map(layer_map: dict[int, int] | None, student_layers: int, teacher_layers: int,
                      key: str = "distillation.layer_map", attention: bool = False) -> dict[int, int]:
    """The configured map checked against both models (or the uniform default); raises ConfigError naming the key."""
    resolved = dict(layer_map) if layer_map else uniform_layer_map(student_layers, teacher_layers)
    low = 1 if attention else 0
    for s, t in resolved.items():
        if not low <= s <= student_layers:
            raise ConfigError(f"{key}: student layer {s} does not exist; the student has layers {low}..{student_layers}"
                              + (" (attention has no layer 0)" if attention and s == 0 else ""))
        if not low <= t <= teacher_layers:
            raise ConfigError(f"{key}: teacher layer {t} (for student layer {s}) does not exist; the teacher has "
                              f"layers {low}..{teacher_layers}" + (" (attention has no layer 0)" if attention and t == 0 else ""))
    if not resolved:
        raise ConfigError(f"{key}: empty; map at least one student layer to a teacher layer, or leave it unset")
    return resolved


def check_loss_layers(distillation, student_layers: int, teacher_layers: int) -> None:
    """Every feature term's map, checked before training starts."""
    for i, term in enumerate(distillation.loss_terms()):
        if not term.logit:
            own = distillation.losses is not None and distillation.losses[i].layer_map is not None
            key = f"distillation.losses.{i}.layer_map" if own else "distillation.layer_map"
            resolve_layer_map(term.layer_map, student_layers, teacher_layers, key, attention=term.name == "attention_kl")
