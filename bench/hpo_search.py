"""Benchmark (d): the same 8-trial search, the blog's way and kdpipe's way, side by side in one run.

Both search the same space (hpo.space defaults: the blog's) with the same TPE seed, over the same SST-2
subset, MiniLM-L6 teacher (fine-tuned here first, untimed) -> student made of its layers [0, 5], same batch
size and dev set. With 8 trials TPE is still in its random start-up phase, so both draw the same 8 settings.

- blog: `Trainer.hyperparameter_search` (Optuna backend, no pruning, in-memory study) with the blog's
  DistillationTrainer: the teacher runs on every training and evaluation batch; the blog's TrainingArguments
  (save each epoch, keep the best).
- kdpipe: `kdpipe.hpo.run_trials`: cached teacher logits (their one-time pass over the training set is
  timed and included), per-epoch median pruning, journal-file study.

    .venv/bin/python bench/hpo_search.py [--rows 2000] [--trials 8]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import SHARED, Timer, fresh_logit_store, minilm, save
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from kdpipe.artifacts import load_prepared
from kdpipe.config import load_config
from kdpipe.data import preprocess
from kdpipe.hpo import run_trials, suggest
from kdpipe.modeling import build_student, load_classifier, load_tokenizer
from kdpipe.teacher import evaluate_teacher, finetune_teacher

# ---------------------------------------------------------------- the blog's code, as published

class DistillationTrainingArguments(TrainingArguments):
    def __init__(self, *args, alpha=0.5, temperature=2.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha = alpha
        self.temperature = temperature


class BlogDistillationTrainer(Trainer):
    def __init__(self, *args, teacher_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher_model
        self.teacher.eval()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs_student = model(**inputs)
        student_loss = outputs_student.loss
        with torch.no_grad():
            outputs_teacher = self.teacher(**inputs)
        loss_function = torch.nn.KLDivLoss(reduction="batchmean")
        t = self.args.temperature
        loss_logits = loss_function(F.log_softmax(outputs_student.logits / t, dim=-1),
                                    F.softmax(outputs_teacher.logits / t, dim=-1)) * (t ** 2)
        loss = self.args.alpha * student_loss + (1.0 - self.args.alpha) * loss_logits
        return (loss, outputs_student) if return_outputs else loss


def blog_search(cfg, prep_dir, teacher_dir, work: Path, n_trials: int) -> dict:
    import optuna

    prep = load_prepared(prep_dir)
    tokenizer = load_tokenizer(prep.tokenizer_dir)
    teacher = load_classifier(teacher_dir, what="teacher")
    keep = set(tokenizer.model_input_names) | {"labels"}
    train = prep.dataset["train"].remove_columns([c for c in prep.dataset["train"].column_names if c not in keep])
    dev = prep.dataset["validation"].remove_columns([c for c in prep.dataset["validation"].column_names if c not in keep])
    d = cfg.distillation
    args = DistillationTrainingArguments(
        output_dir=str(work), num_train_epochs=d.epochs, per_device_train_batch_size=d.batch_size,
        per_device_eval_batch_size=d.eval_batch_size, learning_rate=d.learning_rate, seed=d.seed,
        logging_strategy="epoch", eval_strategy="epoch", save_strategy="epoch", save_total_limit=2,
        load_best_model_at_end=True, metric_for_best_model="accuracy", report_to="none", disable_tqdm=True,
        alpha=d.alpha, temperature=d.temperature)

    def model_init(trial=None):
        return build_student(cfg, teacher_dir, prep.schema)

    def accuracy(p):
        return {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())}

    trials = []

    def hp_space(trial):  # the same space, drawn in the same order, as kdpipe's
        params = suggest(trial, cfg.hpo.space)
        trials.append({"number": trial.number, "params": dict(params), "value": None})
        params["num_train_epochs"] = params.pop("epochs")
        return params

    def objective(metrics):  # the last evaluation's accuracy, as the blog's search used
        trials[-1]["value"] = metrics["eval_accuracy"]
        return metrics["eval_accuracy"]

    trainer = BlogDistillationTrainer(model_init=model_init, args=args, train_dataset=train, eval_dataset=dev,
                                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy,
                                      teacher_model=teacher)
    with Timer() as t:
        best = trainer.hyperparameter_search(
            direction="maximize", backend="optuna", hp_space=hp_space, n_trials=n_trials,
            compute_objective=objective, sampler=optuna.samplers.TPESampler(seed=cfg.hpo.seed),
            pruner=optuna.pruners.NopPruner())
    return {"seconds": t.seconds, "best_value": best.objective, "best_params": best.hyperparameters,
            "trials": trials}


def kdpipe_search(cfg, prep_dir, teacher_dir, work: Path, n_trials: int) -> dict:
    from kdpipe.hpo import open_study

    # The cache's one-time cost: the teacher's pass over the training set (not its dev evaluation for the gate).
    logits = evaluate_teacher(cfg, prep_dir, teacher_dir, work / "teval")["logits_seconds"]
    with Timer() as t:
        summary = run_trials(cfg, prep_dir, teacher_dir, work / "teval", work / "trials", n_trials=n_trials)
    study = open_study(cfg, fingerprint=load_prepared(prep_dir).fingerprint("train"))
    trials = [{"number": tr.number, "params": tr.params, "value": tr.value, "state": tr.state.name,
               "epochs_run": len(tr.intermediate_values)} for tr in study.trials]
    return {"seconds": t.seconds + logits, "search_seconds": t.seconds, "teacher_logits_seconds": logits, "best_value": summary["best_value"],
            "best_params": summary["best_params"], "trials_by_state": summary["trials"], "trials": trials}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000, help="SST-2 training rows (the dev set is all 872)")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kdpipe-bench-hpo-"))
    raw = {"teacher": {"model": minilm(), "epochs": 2, "batch_size": 32, "logit_store": fresh_logit_store(), "learning_rate": 5e-5},
           "student": {"layers": [0, 5]},
           "data": {"train": str(SHARED / "sst2/train.tsv"), "validation": str(SHARED / "sst2/dev.tsv"),
                    "text_column": "sentence", "max_length": 128, "max_train_samples": args.rows},
           "distillation": {"batch_size": args.batch_size},
           "hpo": {"enabled": True, "n_trials": args.trials, "pruner": "median",
                   "storage": f"journal:{root}/optuna.log"}}
    cfg = load_config(raw=raw)
    preprocess(cfg, root / "prep")
    with Timer() as ft:  # untimed for both: the blog also starts from a fine-tuned teacher
        teacher = finetune_teacher(cfg, root / "prep", root / "teacher")
    teacher_dir = teacher["model_dir"]
    blog = blog_search(cfg, root / "prep", teacher_dir, root / "blog", args.trials)
    kd = kdpipe_search(cfg, root / "prep", teacher_dir, root / "kdpipe", args.trials)
    save("hpo_search", {
        "rows": args.rows, "dev_rows": 872, "trials": args.trials, "batch_size": args.batch_size,
        "teacher_dev_accuracy": teacher["metrics"].get("accuracy"), "teacher_finetune_seconds": ft.seconds,
        "blog": blog, "kdpipe": kd,
        "wall_time_ratio_blog_over_kdpipe": blog["seconds"] / kd["seconds"],
        "best_accuracy_gap_points": 100 * (blog["best_value"] - kd["best_value"]),
    })


if __name__ == "__main__":
    main()
