"""Cheap text augmentation for the transfer set (Tang et al. 2019, "Distilling Task-Specific Knowledge from BERT
into Simple Neural Networks"): word masking, word dropout, adjacent swaps and n-gram sampling. The copies carry no
labels: the teacher's soft targets are their only supervision, so a copy whose meaning drifted still teaches the
student what the teacher makes of it."""

from __future__ import annotations

import random

from kdpipe.config import AugmentConfig


def augment_text(words: list[str], rng: random.Random, cfg: AugmentConfig, mask_token: str | None) -> str:
    out = []
    for w in words:
        r = rng.random()
        if r < cfg.mask_prob:
            if mask_token:
                out.append(mask_token)
        elif r >= cfg.mask_prob + cfg.dropout_prob:
            out.append(w)
    for i in range(len(out) - 1):
        if rng.random() < cfg.swap_prob:
            out[i], out[i + 1] = out[i + 1], out[i]
    if len(out) > 1 and rng.random() < cfg.ngram_prob:
        n = rng.randint(1, min(5, len(out)))
        start = rng.randrange(len(out) - n + 1)
        out = out[start:start + n]
    return " ".join(out) or (mask_token or words[0])


def augment_texts(texts: list[str], cfg: AugmentConfig, mask_token: str | None) -> list[str]:
    """`cfg.factor` seeded copies of each text (words split on white space)."""
    rng = random.Random(cfg.seed)
    return [augment_text(t.split(), rng, cfg, mask_token) for t in texts for _ in range(cfg.factor)]
