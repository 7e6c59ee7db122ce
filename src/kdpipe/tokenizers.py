"""Teacher/student tokenizer compatibility: distillation is meaningless if the two see different ids."""

from __future__ import annotations

from kdpipe.errors import TokenizerMismatch
from kdpipe.sources import local_model

# Probes for normalization: casing, accents, unicode forms, whitespace, punctuation, digits, emoji.
PROBES = ["Hello WORLD", "Café naïve résumé", "ＦＵＬＬ width", "tabs\tand  spaces", "don't-stop!!", "3.14 1,000", "🙂 ok"]
SPECIALS = ("cls_token", "sep_token", "pad_token", "unk_token", "mask_token", "bos_token", "eos_token")


def _specials(tok) -> dict:
    return {name: (getattr(tok, name), getattr(tok, f"{name}_id", None)) for name in SPECIALS if getattr(tok, name, None)}


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def compare_tokenizers(teacher, student, texts: list[str], max_length: int = 128) -> dict:
    """Check vocab, special tokens, normalization and the encodings of real texts. Returns a report;
    report["match"] is False with report["problems"] saying what differs, each with an example."""
    problems = []
    tv, sv = teacher.get_vocab(), student.get_vocab()
    if tv != sv:
        only_t = sorted(set(tv) - set(sv))[:5]
        only_s = sorted(set(sv) - set(tv))[:5]
        moved = [t for t in tv if t in sv and tv[t] != sv[t]][:5]
        problems.append(f"vocabularies differ: teacher {len(tv)} tokens, student {len(sv)}; only in teacher: {only_t}; "
                        f"only in student: {only_s}; same token, other id: {[(t, tv[t], sv[t]) for t in moved]}")
    ts, ss = _specials(teacher), _specials(student)
    if ts != ss:
        diff = {k: (ts.get(k), ss.get(k)) for k in set(ts) | set(ss) if ts.get(k) != ss.get(k)}
        problems.append(f"special tokens differ (teacher, student): {diff}")
    samples = list(PROBES) + list(texts)
    enc_t = teacher(samples, truncation=True, max_length=max_length)["input_ids"]
    enc_s = student(samples, truncation=True, max_length=max_length)["input_ids"]
    mismatched = [i for i, (a, b) in enumerate(zip(enc_t, enc_s)) if a != b]
    if mismatched:
        i = mismatched[0]
        k = _first_difference(enc_t[i], enc_s[i])
        kind = "normalization (casing/accents/unicode)" if i < len(PROBES) else "encoding"
        problems.append(
            f"{kind} differs on {len(mismatched)} of {len(samples)} texts, e.g. {samples[i][:100]!r}: at token {k} "
            f"teacher {teacher.convert_ids_to_tokens(enc_t[i][k:k + 5])} vs student "
            f"{student.convert_ids_to_tokens(enc_s[i][k:k + 5])}")
    return {"match": not problems, "problems": problems, "texts_checked": len(texts),
            "vocab_size": len(tv), "teacher_vocab_size": len(tv), "student_vocab_size": len(sv)}


def sample_texts(cfg, n: int = 1000) -> list[str]:
    """Real training texts to encode with both tokenizers (a seeded sample, not one sentence)."""
    import random

    from kdpipe.data import read_split

    train = read_split(cfg.data, "train")
    if cfg.data.text_column not in train.columns:
        return []  # preprocess names the missing column
    texts = [t for t in train.column(cfg.data.text_column) if isinstance(t, str) and t.strip()]
    return random.Random(cfg.data.seed).sample(texts, min(n, len(texts)))


def validate_tokenizers(cfg, out_file=None, n_samples: int = 1000) -> dict:
    """Pipeline step: raise TokenizerMismatch before any training when the student would see other ids."""
    import json

    from kdpipe.modeling import load_tokenizer

    teacher = load_tokenizer(local_model(cfg, "teacher"), cfg, cfg.teacher.revision, what="teacher.model")
    if cfg.student.layers is not None:
        report = {"match": True, "problems": [], "texts_checked": 0,
                  "note": "student derived from the teacher's layers: it shares the teacher's tokenizer"}
    else:
        student = load_tokenizer(local_model(cfg, "student"), cfg, cfg.student.revision, what="student.model")
        report = compare_tokenizers(teacher, student, sample_texts(cfg, n_samples), cfg.data.max_length)
    if out_file:
        from pathlib import Path

        Path(out_file).write_text(json.dumps(report, indent=2))
    if not report["match"]:
        raise TokenizerMismatch(f"teacher {cfg.teacher.model!r} and student {cfg.student.model!r} tokenize differently; "
                                f"distillation needs identical input ids:\n  - " + "\n  - ".join(report["problems"]))
    return report
