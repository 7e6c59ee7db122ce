"""Loading tokenizers and classifiers safely (safetensors only, no remote code by default), deriving students."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

from kdpipe.errors import ConfigError, ModelError

_LAYER = re.compile(r"\.layer\.(\d+)\.")


def _fail(ref: str, what: str, e: Exception) -> ModelError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return ModelError(f"{what} {ref!r}: cannot load it ({type(e).__name__}: {first}). Give a local directory "
                      f"saved with save_pretrained, or a Hub id reachable from here (HF_TOKEN from the environment "
                      f"for private models).")


PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def inspect_model(ref: str, key: str, trust_remote_code: bool = False, revision: str | None = None,
                  tracking_uri: str = "") -> dict | None:
    """The model's config.json, once what loading would refuse later is checked (in seconds, before any training):
    weights in safetensors form, no custom code unless trusted. A local folder is read directly; a remote one
    (module:, models:/, a URL) by listing it; a Hub id through the Hub API (None when HF_HUB_OFFLINE is set: the
    steps check again when they load it)."""
    from kdpipe.sources import is_remote_model, looks_like_path, model_files

    if is_remote_model(ref):
        files, read = model_files(ref, key, tracking_uri)
    elif Path(ref).is_dir():
        files = {p.name for p in Path(ref).iterdir()}

        def read(name):
            return (Path(ref) / name).read_text()
    elif looks_like_path(ref):
        raise ModelError(f"{key} {ref!r}: " + ("a file, not a folder" if Path(ref).exists() else "no such folder")
                         + "; give the folder a model was saved to with save_pretrained, or a Hub id")
    elif os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return None
    else:
        files, read = _hub_files(ref, key, revision)
    if "config.json" not in files:
        raise ModelError(f"{key} {ref!r}: no config.json there; give a folder saved with save_pretrained or a Hub id")
    try:
        config = json.loads(read("config.json"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{key} {ref!r}: config.json cannot be read ({type(e).__name__}: {e})") from None
    if not any(f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in files):
        pickles = sorted(f for f in files if f.endswith(PICKLES))
        raise ModelError(f"{key} {ref!r}: " + (f"its weights are only a pickle ({', '.join(pickles)}); kdpipe loads "
                                               "safetensors only (unpickling can run code). Convert them once, where "
                                               "you trust the file: from_pretrained(...).save_pretrained(...)"
                                               if pickles else "no weights (model.safetensors) there"))
    if config.get("auto_map") and not trust_remote_code:
        raise ModelError(f"{key} {ref!r}: its config asks to run the model's own code (auto_map: "
                         f"{sorted(config['auto_map'])}); set trust_remote_code: true only if you trust that code")
    return config


def _hub_files(ref: str, key: str, revision: str | None):
    import requests
    from huggingface_hub import constants, hf_hub_download, list_repo_files

    try:  # one short request first: the Hub client retries an unreachable endpoint for half a minute
        requests.head(constants.ENDPOINT, timeout=3)
    except requests.RequestException as e:
        raise ModelError(f"{key} {ref!r}: the Hub ({constants.ENDPOINT}) does not answer from here "
                         f"({type(e).__name__}); give a local folder, or set HF_HUB_OFFLINE=1 to use the local "
                         f"Hugging Face cache") from None
    try:
        files = set(list_repo_files(ref, revision=revision))
    except Exception as e:  # not found, gated, private without HF_TOKEN, unreachable: all "cannot use it"
        raise _fail(ref, key, e) from None
    return files, lambda name: Path(hf_hub_download(ref, name, revision=revision)).read_text()


def load_tokenizer(ref: str, cfg=None, revision: str | None = None, what: str = "tokenizer"):
    from transformers import AutoTokenizer

    trust = bool(cfg and cfg.trust_remote_code)
    try:
        return AutoTokenizer.from_pretrained(ref, revision=revision, trust_remote_code=trust, use_fast=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _fail(ref, what, e) from None


def schema_kwargs(schema) -> dict:
    return {
        "num_labels": schema.num_labels,
        "id2label": dict(enumerate(schema.label_names)),
        "label2id": {n: i for i, n in enumerate(schema.label_names)},
        "problem_type": schema.problem_type,
    }


def load_classifier(ref: str, schema=None, trust_remote_code: bool = False, revision: str | None = None,
                    what: str = "model"):
    """A sequence classifier from weights in safetensors form; with a schema, its head matches the labels."""
    from transformers import AutoModelForSequenceClassification

    kwargs = dict(schema_kwargs(schema), ignore_mismatched_sizes=True) if schema else {}
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            ref, revision=revision, trust_remote_code=trust_remote_code, use_safetensors=True, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, EnvironmentError) as e:
        raise _fail(ref, what, e) from None


def classifier_mismatch(ref: str, schema, trust_remote_code: bool = False, revision: str | None = None) -> str | None:
    """Why the model at ref is not yet a classifier for these labels (None when it is)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(ref, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise _fail(ref, "teacher.model", e) from None
    if not any(a.endswith("ForSequenceClassification") for a in (config.architectures or [])):
        return f"no sequence-classification head (architectures: {config.architectures})"
    if config.num_labels != schema.num_labels:
        return f"head has {config.num_labels} labels, the data has {schema.num_labels}"
    names = [config.id2label[i] for i in range(config.num_labels)]
    default = [f"LABEL_{i}" for i in range(config.num_labels)]
    if names != default and [n.lower() for n in names] != [n.lower() for n in schema.label_names]:
        return f"head labels {names} differ from the data's {schema.label_names}"
    if config.problem_type and config.problem_type != schema.problem_type:
        return f"head was trained as {config.problem_type}, the data is {schema.problem_type}"
    return None


def derive_student(teacher, layers: list[int]):
    """DistilBERT-style init: a copy of the teacher keeping only the given encoder layers."""
    from transformers import AutoModelForSequenceClassification

    n = teacher.config.num_hidden_layers
    if any(i >= n for i in layers):
        raise ConfigError(f"student.layers {layers}: the teacher has {n} layers (indices 0..{n - 1})")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    student = AutoModelForSequenceClassification.from_config(config)
    keep = {old: new for new, old in enumerate(layers)}
    state = {}
    for key, value in teacher.state_dict().items():
        m = _LAYER.search(key)
        if m is None:
            state[key] = value
        elif int(m.group(1)) in keep:
            state[key[: m.start()] + f".layer.{keep[int(m.group(1))]}." + key[m.end():]] = value
    missing, unexpected = student.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelError(f"cannot derive a student from {type(teacher).__name__}: missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}; use student.model with a model id instead of student.layers")
    return student


def build_student(cfg, teacher_dir: str, schema):
    """The student before distillation: derived from the (fine-tuned) teacher or loaded by id."""
    if cfg.student.layers is not None:
        teacher = load_classifier(teacher_dir, schema, cfg.trust_remote_code, what="teacher")
        return derive_student(teacher, cfg.student.layers)
    from kdpipe.sources import local_model

    return load_classifier(local_model(cfg, "student"), schema, cfg.trust_remote_code, cfg.student.revision, what="student.model")


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def batched_logits(dataset, tokenizer, batch_size: int, run, what: str = "logits") -> "np.ndarray":
    """run(batch of padded numpy inputs) -> logits, over every row in row order; rows are batched by length
    so that padding (and time) stays small. Progress is reported as `what`."""
    import numpy as np

    from kdpipe.progress import Progress

    progress = Progress(what, len(dataset), "rows")
    inputs = [k for k in tokenizer.model_input_names if k in dataset.column_names]
    lengths = np.array([len(x) for x in dataset["input_ids"]])
    order = np.argsort(-lengths, kind="stable")
    chunks = []
    for start in range(0, len(order), batch_size):
        rows = dataset.select(order[start:start + batch_size].tolist())
        batch = tokenizer.pad({k: rows[k] for k in inputs}, return_tensors="np")
        chunks.append(np.asarray(run({k: batch[k].astype(np.int64) for k in inputs}), dtype=np.float32))
        progress.update(start + len(rows))
    logits = np.concatenate(chunks)
    out = np.empty_like(logits)
    out[order] = logits
    return out


def predict_logits(model, dataset, tokenizer, batch_size: int = 128, what: str = "logits") -> "np.ndarray":
    import torch

    device = next(model.parameters()).device
    model.eval()

    def run(batch):
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v).to(device) for k, v in batch.items()}).logits.float().cpu().numpy()
    return batched_logits(dataset, tokenizer, batch_size, run, what)


def torch_latency_ms(model, batch_size: int, seq_len: int, runs: int = 20) -> float:
    import torch

    from kdpipe.metrics import measure_latency

    device = next(model.parameters()).device
    ids = torch.randint(1000, 2000, (batch_size, seq_len), device=device)
    mask = torch.ones_like(ids)
    model.eval()
    with torch.inference_mode():
        return measure_latency(lambda: model(input_ids=ids, attention_mask=mask), runs=runs)
