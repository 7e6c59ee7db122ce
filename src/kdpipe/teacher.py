"""Teacher steps: fine-tune when it is not yet a classifier for these labels; evaluate; cache its logits once."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from kdpipe.artifacts import load_prepared, teacher_logits
from kdpipe.config import Config, LossTerm
from kdpipe.data import TRANSFER
from kdpipe.errors import DataError
from kdpipe.metrics import compute_metrics
from kdpipe.modeling import (classifier_mismatch, count_parameters, load_classifier, load_tokenizer, predict_logits,
                             torch_latency_ms)
from kdpipe.sources import fetch_model, local_model


def teacher_needs_finetuning(cfg: Config, schema) -> tuple[bool, str]:
    if cfg.teacher.finetune == "always":
        return True, "teacher.finetune is 'always'"
    reason = classifier_mismatch(local_model(cfg, "teacher"), schema, cfg.trust_remote_code, cfg.teacher.revision)
    if cfg.teacher.finetune == "never":
        if reason:
            raise DataError(f"teacher.model {cfg.teacher.model!r} is not a classifier for these labels ({reason}) and "
                            f"teacher.finetune is 'never'; set it to 'auto' or give a fine-tuned teacher")
        return False, "teacher.finetune is 'never'"
    return (reason is not None), (reason or "teacher is already a classifier for these labels")


def finetune_teacher(cfg: Config, data_dir: str | Path, out_dir: str | Path, keeper=None) -> dict:
    """Pipeline step: supervised fine-tuning of the teacher (the distillation trainer with alpha=1)."""
    from transformers import set_seed

    from kdpipe.losses import DistillationLoss
    from kdpipe.trainer import DistillationTrainer, KDCollator, train, training_arguments

    prep = load_prepared(data_dir)
    out_dir = Path(out_dir)
    tokenizer = load_tokenizer(prep.tokenizer_dir)
    source = local_model(cfg, "teacher")
    set_seed(cfg.distillation.seed)  # the new classification head is drawn here, before the Trainer seeds
    model = load_classifier(source, prep.schema, cfg.trust_remote_code, cfg.teacher.revision, what="teacher.model")
    t = cfg.teacher
    args = training_arguments(out_dir / "checkpoints", epochs=t.epochs, learning_rate=t.learning_rate,
                              batch_size=t.batch_size, eval_batch_size=cfg.distillation.eval_batch_size,
                              weight_decay=0.01, warmup=0.1, seed=cfg.distillation.seed,
                              mixed_precision=cfg.distillation.mixed_precision,
                              group_by_length=cfg.distillation.group_by_length)
    hard_labels_only = DistillationLoss([LossTerm(name="auto", alpha=1.0, temperature=1.0)], prep.schema)
    trainer = DistillationTrainer(model=model, args=args, train_dataset=prep.dataset["train"],
                                  eval_dataset=prep.dataset["validation"], data_collator=KDCollator(tokenizer),
                                  loss=hard_labels_only)
    d = cfg.distillation  # its seed and precision settings train the teacher too
    run_key = f"{cfg.teacher.model_dump_json()}|{source}|{d.seed}|{d.mixed_precision}|{prep.info['fingerprints']['train']}"
    stats = train(trainer, out_dir / "checkpoints", run_key, keeper)
    model.save_pretrained(str(out_dir / "model"), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir / "model"))
    logits = predict_logits(model, prep.dataset["validation"], tokenizer, cfg.distillation.eval_batch_size)
    metrics = compute_metrics(logits, np.asarray(prep.dataset["validation"]["labels"]), prep.schema,
                              cfg.metrics.threshold)
    return {"model_dir": str(out_dir / "model"), "metrics": metrics, **stats}


def teacher_source(cfg: Config, teacher_dir: str | Path, teacher_ref: str) -> str:
    """What prepare-teacher handed on: its fine-tuned model (teacher_ref "") or the configured teacher as is
    (fetched here when it is remote: each step may be a pod of its own)."""
    return fetch_model(teacher_ref, "teacher.model", cfg.tracking.uri) if teacher_ref else str(Path(teacher_dir) / "model")


def evaluate_teacher(cfg: Config, data_dir: str | Path, teacher_dir: str, out_dir: str | Path) -> dict:
    """Pipeline step: teacher metrics + latency on the evaluation split (test when labelled, else validation),
    its logits there (the student's agreement with it) and over train (distillation), computed once."""
    import torch

    prep = load_prepared(data_dir)
    out = teacher_logits(out_dir)
    tokenizer = load_tokenizer(prep.tokenizer_dir)
    model = load_classifier(teacher_dir, trust_remote_code=cfg.trust_remote_code, what="teacher")
    if torch.cuda.is_available():
        model.to("cuda")
    bs, split = cfg.distillation.eval_batch_size, prep.eval_split
    metrics = {}
    for name in dict.fromkeys([split, "validation"]):
        logits = predict_logits(model, prep.dataset[name], tokenizer, bs, f"teacher on {name}")
        metrics[name] = compute_metrics(logits, np.asarray(prep.dataset[name]["labels"]), prep.schema,
                                        cfg.metrics.threshold)
        if name == split:
            out.save(split, logits, prep.fingerprint(split), teacher_dir)
    start, rows = time.perf_counter(), 0
    for name in ["train"] + [TRANSFER] * (TRANSFER in prep.dataset):  # the transfer set is labelled here, once
        logits = predict_logits(model, prep.dataset[name], tokenizer, bs, f"teacher on {name}")
        out.save(name, logits, prep.fingerprint(name), teacher_dir)
        rows += int(logits.shape[0])
    logits_s = time.perf_counter() - start
    result = {"metrics": metrics[split], "split": split}
    if split != "validation":
        result["metrics_validation"] = metrics["validation"]
    return {
        **result,
        "latency_ms_b1": torch_latency_ms(model, 1, cfg.export.latency_seq_len, cfg.export.latency_runs),
        "parameters": count_parameters(model),
        "logits_seconds": logits_s,
        "logits_rows": rows,
    }
