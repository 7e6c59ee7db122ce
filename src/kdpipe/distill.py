"""Student step: distil the teacher into the student, from cached teacher logits (or online)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kdpipe.config import Config
from kdpipe.data import load_prepared
from kdpipe.metrics import compute_metrics
from kdpipe.modeling import build_student, count_parameters, load_classifier, load_tokenizer, predict_logits
from kdpipe.teacher import load_logits


def distill_student(cfg: Config, data_dir: str | Path, teacher_dir: str, logits_dir: str | Path | None,
                    out_dir: str | Path, params: dict | None = None, callbacks: list | None = None) -> dict:
    """Pipeline step. `params` (e.g. the best HPO trial) override distillation.* for this run; `callbacks`
    (TrainerCallback) see each epoch's evaluation, with the task metrics as eval_<name>."""
    from kdpipe.trainer import DistillationTrainer, KDCollator, train, training_arguments

    d = cfg.distillation.model_copy(update=params or {})
    prep = load_prepared(data_dir)
    out_dir = Path(out_dir)
    tokenizer = load_tokenizer(prep.tokenizer_dir)
    train_ds, teacher = prep.dataset["train"], None
    if d.teacher_logits == "cached" and d.alpha < 1.0:
        logits = load_logits(logits_dir, prep.info["fingerprints"]["train"])
        train_ds = train_ds.add_column("teacher_logits", logits.tolist())
    elif d.alpha < 1.0:
        teacher = load_classifier(teacher_dir, trust_remote_code=cfg.trust_remote_code, what="teacher")
    student = build_student(cfg, teacher_dir, prep.schema)
    args = training_arguments(out_dir / "checkpoints", epochs=d.epochs, learning_rate=d.learning_rate,
                              batch_size=d.batch_size, eval_batch_size=d.eval_batch_size,
                              gradient_accumulation_steps=d.gradient_accumulation_steps,
                              weight_decay=d.weight_decay, warmup=d.warmup, seed=d.seed,
                              mixed_precision=d.mixed_precision, group_by_length=d.group_by_length,
                              dataloader_workers=d.dataloader_workers)
    trainer = DistillationTrainer(model=student, args=args, train_dataset=train_ds,
                                  eval_dataset=prep.dataset["validation"], data_collator=KDCollator(tokenizer),
                                  alpha=d.alpha, temperature=d.temperature, problem_type=prep.schema.problem_type,
                                  loss_name=d.loss, teacher=teacher, callbacks=callbacks,
                                  compute_metrics=lambda p: compute_metrics(p.predictions, p.label_ids, prep.schema,
                                                                            cfg.metrics.threshold))
    run_key = f"{d.model_dump_json()}|{cfg.student.model_dump_json()}|{teacher_dir}|{prep.info['fingerprints']['train']}"
    stats = train(trainer, out_dir / "checkpoints", run_key)
    model_dir = out_dir / "model"
    student.save_pretrained(str(model_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(model_dir))
    val_logits = predict_logits(student, prep.dataset["validation"], tokenizer, d.eval_batch_size)
    result = {
        "model_dir": str(model_dir),
        "metrics": compute_metrics(val_logits, np.asarray(prep.dataset["validation"]["labels"]), prep.schema,
                                   cfg.metrics.threshold),
        "parameters": count_parameters(student),
        "params": d.model_dump(),
        "data_fingerprint": prep.info["fingerprints"]["train"],
        "teacher": str(teacher_dir),
        "epoch_history": [h for h in trainer.state.log_history if "eval_loss" in h],
        **stats,
    }
    (out_dir / "distill.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def reuse_trial_model(model_dir: str | Path, data_dir: str | Path, teacher_dir: str, out_dir: str | Path) -> dict | None:
    """The model an HPO trial trained (its model_dir), copied to out_dir, if that trial used this training data
    and this teacher; None (train again) when it did not or when its folder is not reachable from here."""
    import logging
    import shutil

    trial_dir, out_dir = Path(model_dir).parent, Path(out_dir)
    record = trial_dir / "distill.json"
    if not record.is_file():
        logging.getLogger(__name__).warning("hpo.reuse_best_model: %s is not reachable from this step (no shared "
                                            "volume?); training again with the best params", trial_dir)
        return None
    result = json.loads(record.read_text())
    if (result.get("data_fingerprint") != load_prepared(data_dir).info["fingerprints"]["train"]
            or result.get("teacher") != str(teacher_dir)):
        logging.getLogger(__name__).warning("hpo.reuse_best_model: trial %s used other data or another teacher; "
                                            "training again with its params", trial_dir)
        return None
    shutil.copytree(trial_dir / "model", out_dir / "model", dirs_exist_ok=True)
    result.update(model_dir=str(out_dir / "model"), reused_trial_model=str(trial_dir / "model"))
    (out_dir / "distill.json").write_text(json.dumps(result, indent=2, default=str))
    return result
