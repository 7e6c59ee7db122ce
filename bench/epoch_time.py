"""Benchmark (a): distillation epoch time, side by side in one run, against the floor: the student's own
fine-tuning epoch (alpha 1, no teacher).

Same student, data, settings and seed; only the teacher's part differs: none (plain fine-tuning), cached
logits (kdpipe's default), online teacher (the blog's way), and the feature losses (hidden_mse, attention_kl,
both: the teacher runs online for its hidden states or attentions). The epoch time is the Trainer's
train_runtime: training steps plus the per-epoch evaluation (200 rows) and checkpoint, as in a real run. Pairs:
  bert-base -> bert-tiny shapes (random weights; timing only) and MiniLM-L6 -> its layers [0, 5].
The cached side's one-time cost (teacher logits over the training set) is reported separately:
it is paid once per dataset, then reused by every epoch and every HPO trial.

    .venv/bin/python bench/epoch_time.py [--rows 8000] [--max-length 128]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import SHARED, fresh_logit_store, minilm, random_bert, save

from kdpipe.config import load_config
from kdpipe.data import preprocess
from kdpipe.distill import distill_student
from kdpipe.teacher import evaluate_teacher, finetune_teacher


LOGIT = {"name": "auto"}
MODES = {
    "plain": {"alpha": 1.0},  # the student's own fine-tuning: no teacher term at all
    "cached": {"teacher_logits": "cached"},
    "online": {"teacher_logits": "online"},
    "hidden_mse": {"losses": [LOGIT, {"name": "hidden_mse"}]},
    "attention_kl": {"losses": [LOGIT, {"name": "attention_kl"}]},
    "hidden_mse+attention_kl": {"losses": [LOGIT, {"name": "hidden_mse"}, {"name": "attention_kl"}]},
}


def run_pair(name, teacher, student_section, rows, max_length, root: Path, finetune: bool):
    raw = {"teacher": {"model": teacher, "epochs": 1, "batch_size": 32, "logit_store": fresh_logit_store()}, "student": student_section,
           "data": {"train": str(SHARED / "sst2/train.tsv"), "validation": str(SHARED / "sst2/dev.tsv"),
                    "text_column": "sentence", "max_length": max_length, "max_train_samples": rows,
                    "max_eval_samples": 200},
           "distillation": {"epochs": 1, "batch_size": 32, "alpha": 0.5, "temperature": 4.0}}
    cfg = load_config(raw=raw)
    preprocess(cfg, root / "prep")
    if finetune:  # MiniLM has no head: give it one quickly so the student can be derived from a classifier
        teacher = finetune_teacher(cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"epochs": 0.2})}),
                                   root / "prep", root / "teacher")["model_dir"]
    teacher_eval = evaluate_teacher(cfg, root / "prep", teacher, root / "teval")
    times = {}
    for mode, params in MODES.items():
        result = distill_student(cfg, root / "prep", teacher, root / "teval", root / mode, params=params)
        times[mode] = result["train_runtime_s"]
    return {"pair": name, "rows": rows, "max_length": max_length, "epoch_seconds": times,
            "ratio_to_plain_finetuning": {k: v / times["plain"] for k, v in times.items()},
            "speedup_cached_vs_online": times["online"] / times["cached"],
            "one_time_teacher_logits_seconds": teacher_eval["logits_seconds"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8000, help="training rows (SST-2 has 67,349)")
    ap.add_argument("--max-length", type=int, default=128)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kdpipe-bench-epoch-"))
    base = random_bert(root / "bert-base", "bert-base")
    tiny = random_bert(root / "bert-tiny", "bert-tiny")
    results = [
        run_pair("bert-base -> bert-tiny (random weights)", base, {"model": tiny}, args.rows, args.max_length,
                 root / "base", finetune=False),
        run_pair("MiniLM-L6 -> layers [0, 5]", minilm(), {"layers": [0, 5]}, args.rows, args.max_length,
                 root / "minilm", finetune=True),
    ]
    save("epoch_time", {"results": results})


if __name__ == "__main__":
    main()
