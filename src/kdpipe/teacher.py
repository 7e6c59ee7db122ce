"""Teacher steps: fine-tune when it is not yet a classifier for these labels (once per key: kdpipe.teacher_reuse);
label the rows with its logits (once per row and teacher: kdpipe.logit_store); evaluate it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from kdpipe import parallel
from kdpipe.artifacts import Prepared, load_prepared, teacher_logits
from kdpipe.config import Config, LossTerm
from kdpipe.data import RECENT, TRANSFER
from kdpipe.errors import DataError
from kdpipe.logit_store import weights_digest
from kdpipe.metrics import compute_metrics
from kdpipe.modeling import (classifier_mismatch, count_parameters, load_classifier, load_tokenizer, predict_logits,
                             torch_latency_ms)
from kdpipe.sources import fetch_model, local_model
from kdpipe.teacher_reuse import teacher_key

log = logging.getLogger("kdpipe.teacher")


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
    """Pipeline step: supervised fine-tuning of the teacher (the distillation trainer with alpha=1), data parallel
    when the step has several training processes (kdpipe.parallel)."""
    from transformers import EarlyStoppingCallback, set_seed

    from kdpipe.losses import DistillationLoss
    from kdpipe.trainer import DistillationTrainer, KDCollator, train, training_arguments

    n = parallel.processes(cfg)
    if n > 1 and parallel.world_size() == 1:  # this step's process: launch the ranks
        parallel.check_batch(cfg.teacher.batch_size, n, "teacher.batch_size")
        return parallel.run_parallel("kdpipe.teacher:finetune_teacher", n, cfg, keeper, data_dir=str(data_dir),
                                     out_dir=str(out_dir))
    prep = load_prepared(data_dir)
    out_dir = Path(out_dir)
    tokenizer = load_tokenizer(prep.tokenizer_dir)
    source = local_model(cfg, "teacher")
    set_seed(cfg.distillation.seed)  # the new classification head is drawn here, before the Trainer seeds
    model = load_classifier(source, prep.schema, cfg.trust_remote_code, cfg.teacher.revision, what="teacher.model")
    t = cfg.teacher
    metric = prep.schema.primary_metric(cfg.gate.metric)
    # Each epoch is judged on validation; the best epoch's weights are loaded at the end (a later, worse epoch
    # never becomes the teacher), and with a patience training stops once the metric stops improving.
    args = training_arguments(out_dir / "checkpoints", epochs=t.epochs, learning_rate=t.learning_rate,
                              batch_size=t.batch_size, eval_batch_size=cfg.distillation.eval_batch_size,
                              weight_decay=0.01, warmup=0.1, seed=cfg.distillation.seed,
                              mixed_precision=cfg.distillation.mixed_precision,
                              group_by_length=cfg.distillation.group_by_length, load_best_model_at_end=True,
                              metric_for_best_model=metric, greater_is_better=True,
                              logging_strategy="epoch")  # the learning curve: each epoch's mean training loss
    hard_labels_only = DistillationLoss([LossTerm(name="auto", alpha=1.0, temperature=1.0)], prep.schema)
    stopping = [EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience)] if t.early_stopping_patience else []
    trainer = DistillationTrainer(model=model, args=args, train_dataset=prep.dataset["train"],
                                  eval_dataset=prep.dataset["validation"], data_collator=KDCollator(tokenizer),
                                  loss=hard_labels_only, callbacks=stopping,
                                  compute_metrics=lambda p: compute_metrics(p.predictions, p.label_ids, prep.schema,
                                                                            cfg.metrics.threshold))
    stats = train(trainer, out_dir / "checkpoints", teacher_key(cfg, prep), keeper)
    history = with_train_loss(trainer.state.log_history)
    if not parallel.is_main():
        return {}  # rank 0 saves the teacher
    model.save_pretrained(str(out_dir / "model"), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir / "model"))
    logits = predict_logits(model, prep.dataset["validation"], tokenizer, cfg.distillation.eval_batch_size)
    metrics = compute_metrics(logits, np.asarray(prep.dataset["validation"]["labels"]), prep.schema,
                              cfg.metrics.threshold)
    best = trainer.state.best_metric
    return {"model_dir": str(out_dir / "model"), "metrics": metrics, "digest": weights_digest(model), **stats,
            "epoch_history": history, "epochs_run": history[-1]["epoch"] if history else None,
            "best_epoch": next((h["epoch"] for h in history if h.get(f"eval_{metric}") == best), None)}


def with_train_loss(log_history: list[dict]) -> list[dict]:
    """Each evaluation's entry of the Trainer's log, with the mean training loss logged since the one before (the
    fine-tune logs it once per epoch): the learning curve, one row per epoch."""
    curve, losses = [], []
    for h in log_history:
        if "loss" in h:
            losses.append(h["loss"])
        elif "eval_loss" in h:
            curve.append({**h, **({"train_loss": float(np.mean(losses))} if losses else {})})
            losses = []
    return curve


def teacher_source(cfg: Config, teacher_dir: str | Path, teacher_ref: str) -> str:
    """What prepare-teacher handed on: its fine-tuned model (teacher_ref "") or the configured teacher as is
    (fetched here when it is remote: each step may be a pod of its own)."""
    return fetch_model(teacher_ref, "teacher.model", cfg.tracking.uri) if teacher_ref else str(Path(teacher_dir) / "model")


def load_teacher(cfg: Config, teacher_dir: str):
    import torch

    model = load_classifier(teacher_dir, trust_remote_code=cfg.trust_remote_code, what="teacher")
    return model.to("cuda") if torch.cuda.is_available() else model


class TeacherModel:
    """The teacher a step labels rows with, loaded only when it must be: to compute a row the logit store lacks,
    or to know its weights' digest when none was recorded with it (kdpipe.teacher_reuse)."""

    def __init__(self, cfg: Config, path: str, digest: str = ""):
        self.cfg, self.path, self.recorded_digest = cfg, path, digest
        self._model = None

    @property
    def model(self):
        if self._model is None:
            self._model = load_teacher(self.cfg, self.path)
        return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def digest(self) -> str:
        return self.recorded_digest or weights_digest(self.model)


def labelled_splits(prep: Prepared) -> list[str]:
    """The splits the teacher labels: the evaluation split and validation (its metrics; the student's agreement
    with it), train and the transfer set (the soft targets), and the recent texts a drift-triggered retrain held out
    (the reference of the teacher-judged comparison)."""
    return list(dict.fromkeys([prep.eval_split, "validation", "train"]
                               + [s for s in (TRANSFER, RECENT) if s in prep.dataset]))


def label_rows(cfg: Config, prep: Prepared, teacher: TeacherModel, pipeline_run: str, shard: int | None = None,
               shards: int = 1, threads: int | None = None) -> tuple[dict | None, dict]:
    """The teacher's logits on every labelled split, each row computed only when the store (kdpipe.logit_store)
    does not hold it yet, and the new rows stored. With `shard`, only that shard's share of the missing rows is
    computed and stored (a task of the sharded pass), and no logits are returned; `threads` caps a CPU teacher's
    threads (shards side by side on one machine share its cores). Returns (logits by split, counts: rows,
    rows_reused from earlier runs, rows_computed by this run, of them by its shard tasks)."""
    from kdpipe.logit_store import LogitStore, row_keys, shard_of

    tokenizer = load_tokenizer(prep.tokenizer_dir)
    splits = labelled_splits(prep)
    inputs = [k for k in tokenizer.model_input_names if k in prep.dataset["train"].column_names]
    keys = [row_keys(prep.dataset[s], inputs) for s in splits]
    unique, first, inverse = np.unique(np.concatenate(keys), axis=0, return_index=True, return_inverse=True)
    store = LogitStore(cfg, teacher.digest())
    found = store.lookup(unique, prep.schema.num_labels, pipeline_run, only_own=cfg.teacher.reuse == "never")
    todo = ~found.found if shard is None else ~found.found & (shard_of(unique, shards) == shard)
    origin = np.concatenate([np.full(len(k), i) for i, k in enumerate(keys)])[first]  # a row of each key: split,
    offset = np.concatenate([np.arange(len(k)) for k in keys])[first]                  # index in that split
    logits = found.logits
    loading = time.perf_counter()
    if todo.any():  # the teacher is loaded only now, when a row needs it; its load is timed apart from the pass
        model = teacher.model
        if threads and next(model.parameters()).device.type == "cpu":
            import torch

            torch.set_num_threads(threads)
    started = time.perf_counter()
    for i, split in enumerate(splits):
        rows = np.flatnonzero(todo & (origin == i))
        if len(rows):
            logits[rows] = predict_logits(teacher.model, prep.dataset[split].select(offset[rows].tolist()), tokenizer,
                                          cfg.distillation.eval_batch_size, f"teacher on {split}")
    store.add(unique[todo], logits[todo], pipeline_run)
    counts = {"rows": len(unique), "rows_reused": int((found.found & ~found.own).sum()),
              "compute_seconds": time.perf_counter() - started, "load_seconds": started - loading,
              "teacher_digest": store.namespace}
    if shard is not None:
        return None, {**counts, "rows_computed": int(todo.sum())}
    counts.update(rows_computed=int(todo.sum() + found.own.sum()), rows_computed_by_shards=int(found.own.sum()))
    inverse = inverse.reshape(-1)
    bounds = np.cumsum([0] + [len(k) for k in keys])
    return {s: logits[inverse[bounds[i]:bounds[i + 1]]] for i, s in enumerate(splits)}, counts


def evaluate_teacher(cfg: Config, data_dir: str | Path, teacher_dir: str, out_dir: str | Path,
                     pipeline_run: str = "", digest: str = "") -> dict:
    """Pipeline step: the teacher's logits on every labelled split (label_rows: the stored ones reused, the
    missing ones computed) into the teacher_logits artifact, its metrics on the evaluation split (test when
    labelled, else validation). Its latency and size are measured when it was loaded (with `digest`, the
    weights' recorded digest, a run that finds every row stored loads no teacher at all)."""
    prep = load_prepared(data_dir)
    out = teacher_logits(out_dir)
    teacher = TeacherModel(cfg, teacher_dir, digest)
    logits, counts = label_rows(cfg, prep, teacher, pipeline_run)
    for split, values in logits.items():
        if split != "validation" or prep.eval_split == "validation":
            out.save(split, values, prep.fingerprint(split), teacher_dir)
    split = prep.eval_split
    metrics = {name: compute_metrics(logits[name], np.asarray(prep.dataset[name]["labels"]), prep.schema,
                                     cfg.metrics.threshold) for name in dict.fromkeys([split, "validation"])}
    result = {"metrics": metrics[split], "split": split, "logits": counts, "teacher_loaded": teacher.loaded}
    if split != "validation":
        result["metrics_validation"] = metrics["validation"]
    log.info("kdpipe: teacher logits: %d rows reused, %d computed", counts["rows_reused"], counts["rows_computed"])
    if teacher.loaded:
        result.update(latency_ms_b1=torch_latency_ms(teacher.model, 1, cfg.export.latency_seq_len,
                                                     cfg.export.latency_runs),
                      parameters=count_parameters(teacher.model))
    return {**result, "logits_seconds": counts["compute_seconds"], "logits_rows": counts["rows_computed"]}
