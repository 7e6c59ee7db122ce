"""Student step: distil the teacher into the student, from cached teacher logits (or online).

The student artifact holds `model/` (safetensors + tokenizer), the student's logits on validation, on the
evaluation split and on held-out recent texts (a drift-triggered retrain's), computed once in fp32 after training (the gate and the export read them instead of running the
model again), and its decision thresholds (multi-label, tuned on validation)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from kdpipe import parallel
from kdpipe.artifacts import Prepared, Student, load_prepared, teacher_logits
from kdpipe.config import Config
from kdpipe.data import RECENT, TRANSFER
from kdpipe.metrics import compute_metrics, tune_thresholds
from kdpipe.modeling import (build_student, count_parameters, load_classifier, load_tokenizer, predict_logits,
                             torch_latency_ms)


def distill_student(cfg: Config, data_dir: str | Path, teacher_dir: str, logits_dir: str | Path | None,
                    out_dir: str | Path, params: dict | None = None, callbacks: list | None = None,
                    measure_latency: bool = False, keeper=None) -> dict:
    """Train the student into out_dir. `params` (e.g. the best HPO trial) override distillation.* for this run;
    `callbacks` (TrainerCallback) see each epoch's evaluation, with the task metrics as eval_<name>; `keeper`
    keeps checkpoints where a re-run finds them (kdpipe.trainer.train)."""
    from transformers import set_seed

    from kdpipe.losses import DistillationLoss
    from kdpipe.trainer import DistillationTrainer, KDCollator, train, training_arguments

    d = cfg.distillation.with_params(params)
    n = parallel.processes(cfg)
    if n > 1 and parallel.world_size() == 1 and callbacks is None:  # this step's process: launch the ranks
        parallel.check_batch(d.batch_size, n, "distillation.batch_size")
        return parallel.run_parallel("kdpipe.distill:distill_student", n, cfg, keeper, data_dir=str(data_dir),
                                     teacher_dir=str(teacher_dir), out_dir=str(out_dir), params=params,
                                     logits_dir=str(logits_dir) if logits_dir is not None else None,
                                     measure_latency=measure_latency)
    prep = load_prepared(data_dir)
    out_dir = Path(out_dir)
    tokenizer = load_tokenizer(prep.tokenizer_dir)
    set_seed(d.seed)  # a student with a new head (student.model) draws it here, before the Trainer seeds
    student = build_student(cfg, teacher_dir, prep.schema)
    teacher = None
    if d.teacher_mode == "online":
        teacher = load_classifier(teacher_dir, trust_remote_code=cfg.trust_remote_code, what="teacher")
    loss = DistillationLoss(d.loss_terms(), prep.schema, student.config, teacher.config if teacher else None)
    attention = student.config._attn_implementation
    if loss.needs("attentions"):  # only eager attention returns the attention probabilities
        for model in (student, teacher):
            model.set_attn_implementation("eager")
    train_ds = training_rows(prep, logits_dir if d.teacher_mode == "cached" else None,
                             transfer=d.teacher_mode != "none")
    args = training_arguments(out_dir / "checkpoints", epochs=d.epochs, learning_rate=d.learning_rate,
                              batch_size=d.batch_size, eval_batch_size=d.eval_batch_size,
                              gradient_accumulation_steps=d.gradient_accumulation_steps,
                              weight_decay=d.weight_decay, warmup=d.warmup, seed=d.seed,
                              mixed_precision=d.mixed_precision, group_by_length=d.group_by_length,
                              dataloader_workers=d.dataloader_workers)
    trainer = DistillationTrainer(model=student, args=args, train_dataset=train_ds,
                                  eval_dataset=prep.dataset["validation"], data_collator=KDCollator(tokenizer),
                                  loss=loss, teacher=teacher, callbacks=callbacks,
                                  compute_metrics=lambda p: compute_metrics(p.predictions, p.label_ids, prep.schema,
                                                                            cfg.metrics.threshold))
    # What decides this training (the teacher is decided by the config and the data): a re-run resumes only on it.
    run_key = f"{cfg.hash()}|{d.model_dump_json()}|{prep.info['fingerprints']['train']}|{prep.info['fingerprints'].get(TRANSFER)}"
    stats = train(trainer, out_dir / "checkpoints", run_key, keeper)
    if not parallel.is_main():
        return {}  # rank 0 ships the student
    student.set_attn_implementation(attention)  # the shipped model's latency and logits: as it will be served
    result = _ship(cfg, prep, student, tokenizer, out_dir, measure_latency)
    return {**result, "params": d.model_dump(), "teacher_mode": d.teacher_mode, "train_rows": len(train_ds),
            "epoch_history": [h for h in trainer.state.log_history if "eval_loss" in h],
            **stats}


def distill_job(cfg, dataset: str, logits: str, teacher: str, output: str) -> dict:
    """`kdpipe distill`: distillation as one rank of a job across nodes (a Kubeflow Trainer TrainJob runs it under
    torchrun on every node; k8s/multinode). Its inputs are the pipeline's own artifacts by URL (preprocess's
    `dataset`, evaluate-teacher's `teacher_logits`: folders in the pipeline root's object store), or local
    folders; each node fetches them into its cache. Rank 0 uploads the student folder (with `result.json`)
    to `output`, which distill-student's artifact layout is, so the gate and export can take it from there."""
    from kdpipe.sources import fetch_folder, fetch_model, filesystem, is_url

    local = {key: fetch_folder(url, key) if is_url(url) else url
             for key, url in (("--dataset", dataset), ("--teacher-logits", logits))}
    teacher_dir = fetch_model(teacher, "--teacher", cfg.tracking.uri)
    with tempfile.TemporaryDirectory(prefix="kdpipe-student-") as out:
        result = distill_student(cfg, local["--dataset"], teacher_dir, local["--teacher-logits"], out,
                                 measure_latency=True)
        if parallel.is_main():
            Path(out, "result.json").write_text(json.dumps(result, default=str))
            fs, path = filesystem(output, "--output")
            fs.put(out.rstrip("/") + "/", path.rstrip("/"), recursive=True)
    return result


def training_rows(prep: Prepared, logits_dir: str | Path | None, transfer: bool):
    """The rows the student trains on: train (labelled), then the transfer set when a teacher term can use it
    (no labels: soft targets only, marked by `labelled`). With logits_dir, the teacher's cached logits ride along."""
    import datasets

    splits = ["train"] + ([TRANSFER] if transfer and TRANSFER in prep.dataset else [])
    parts = []
    for split in splits:
        rows = prep.dataset[split]
        if split == TRANSFER:
            blank = [0.0] * prep.schema.num_labels if prep.schema.multi_label else 0
            rows = rows.add_column("labels", [blank] * len(rows)).cast_column(
                "labels", prep.dataset["train"].features["labels"])
        if len(splits) > 1:
            rows = rows.add_column("labelled", [split == "train"] * len(rows))
        if logits_dir is not None:
            logits = teacher_logits(logits_dir).load(split, prep.fingerprint(split))
            rows = rows.add_column("teacher_logits", logits.tolist())
        parts.append(rows)
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def adopt_model(cfg: Config, data_dir: str | Path, model_dir: str | Path, out_dir: str | Path,
                params: dict | None = None) -> dict:
    """An already trained student (a folder saved with save_pretrained, e.g. the best HPO trial's) shipped as this
    step's student, without training again."""
    prep = load_prepared(data_dir)
    student = load_classifier(str(model_dir), trust_remote_code=cfg.trust_remote_code, what="best trial's student")
    result = _ship(cfg, prep, student, load_tokenizer(str(model_dir)), Path(out_dir), measure_latency=True)
    return {**result, "params": cfg.distillation.with_params(params).model_dump(), "reused_trial_model": True}


def _ship(cfg: Config, prep: Prepared, student, tokenizer, out_dir: Path, measure_latency: bool) -> dict:
    """Save the student, its fp32 logits on validation and on the evaluation split (computed here, once) and,
    multi-label, its decision thresholds tuned on validation; validation metrics and latency."""
    shipped = Student(out_dir)
    student.save_pretrained(str(shipped.model_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(shipped.model_dir))
    logits = {}
    for split in dict.fromkeys(["validation", prep.eval_split] + [RECENT] * (RECENT in prep.dataset)):
        logits[split] = predict_logits(student, prep.dataset[split], tokenizer, cfg.distillation.eval_batch_size,
                                         f"student on {split}")
        shipped.logits.save(split, logits[split], prep.fingerprint(split), "student")
    labels = np.asarray(prep.dataset["validation"]["labels"])
    thresholds = (tune_thresholds(logits["validation"], labels, prep.schema, cfg.metrics.threshold)
                  if cfg.metrics.tune_thresholds else None)
    shipped.save_thresholds(thresholds)
    result = {"metrics": compute_metrics(logits["validation"], labels, prep.schema,
                                         cfg.metrics.threshold if thresholds is None else thresholds),
              "parameters": count_parameters(student)}
    if thresholds is not None:
        result["thresholds"] = dict(zip(prep.schema.label_names, thresholds))
    if measure_latency:
        # On CPU, batch 1: the serving case the gate's max_latency_ms is about (and comparable across nodes).
        result["latency_ms_b1"] = torch_latency_ms(student.float().cpu(), 1, cfg.export.latency_seq_len,
                                                   cfg.export.latency_runs)
    return result
