"""The shipped model: the verified ONNX file(s) and the tokenizer, text in, labels and scores out. `OnnxClassifier`
is what `kdpipe predict` runs and what the registered MLflow model (kdpipe.pyfunc) wraps. Light on purpose (numpy,
onnxruntime, the tokenizers library: no torch, no transformers, no mlflow), so the serving image stays small and
starts fast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kdpipe.artifacts import Export
from kdpipe.errors import ExportError
from kdpipe.task import LabelSchema


class TextEncoder:
    """The export's fast tokenizer (tokenizer.json) run by the `tokenizers` library itself: the ids, attention mask
    and token types Transformers' `tokenizer(texts, truncation=True, max_length=L, padding=True)` gives, without
    importing Transformers (seconds of cold start, and a dependency the serving image does without)."""

    def __init__(self, folder: Path, max_length: int):
        from tokenizers import Tokenizer

        settings = json.loads((folder / "tokenizer_config.json").read_text()) \
            if (folder / "tokenizer_config.json").is_file() else {}
        pad = settings.get("pad_token") or "[PAD]"
        pad = pad.get("content") if isinstance(pad, dict) else pad
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        pad_id = self.tokenizer.token_to_id(pad)
        if pad_id is None:
            raise ValueError(f"its pad token {pad!r} is not in tokenizer.json's vocabulary")
        self.tokenizer.enable_truncation(max_length, direction=settings.get("truncation_side", "right"))
        self.tokenizer.enable_padding(direction=settings.get("padding_side", "right"), pad_id=pad_id, pad_token=pad,
                                      pad_type_id=int(settings.get("pad_token_type_id", 0)))

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(texts)
        return {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}


class TransformersEncoder:
    """A tokenizer without tokenizer.json (a slow, sentencepiece-only one): Transformers loads it."""

    def __init__(self, folder: Path, max_length: int):
        from transformers import AutoTokenizer

        self.tokenizer, self.max_length = AutoTokenizer.from_pretrained(str(folder)), max_length

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="np")
        return {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}


def encoder(folder: Path, max_length: int):
    return (TextEncoder if (folder / "tokenizer.json").is_file() else TransformersEncoder)(folder, max_length)


# ONNX Runtime fuses Add + LayerNormalization into SkipLayerNormalization when a session starts; that CPU kernel ran
# 3-4x slower than the two ops (ORT 1.31, x86; bench/ort_kernels.py), so kdpipe's sessions leave them apart. A graph
# fused offline (the export's `fused` graph) keeps the op it was fused with; the export search times each graph as
# served here.
ORT_FUSIONS_OFF = ["SkipLayerNormFusion"]


def session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"], disabled_optimizers=ORT_FUSIONS_OFF)


class OnnxClassifier:
    """An export folder: tokenizer files + model.int8.onnx and model.onnx with kdpipe's metadata (label names,
    problem type, decision thresholds, max length). `variant` (int8, fp32) runs that file; by default the one the
    folder serves (Export.served: int8 when it passed its export checks)."""

    def __init__(self, model_dir: str | Path, variant: str | None = None):
        model_dir = Path(model_dir)
        path = Export(model_dir).model(variant) if model_dir.is_dir() else model_dir
        self.variant = "int8" if path.name == Export.INT8 else "fp32"
        if not path.is_file():
            why = " (it did not pass its export checks)" if variant == "int8" and Export(model_dir).fp32.is_file() else ""
            raise ExportError(f"{path}: no ONNX model there{why}; give the folder written by the export step")
        try:
            self.session = session(path)
        except Exception as e:  # onnxruntime's own error types (InvalidProtobuf, Fail, ...) say the file is bad
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise ExportError(f"{path}: not a readable ONNX model ({type(e).__name__}: {first}); export it again") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "label_names" not in meta or "problem_type" not in meta:
            raise ExportError(f"{path}: an ONNX model without kdpipe's metadata (label_names, problem_type); give a "
                              f"folder written by kdpipe's export step")
        self.schema = LabelSchema(meta["problem_type"], json.loads(meta["label_names"]))
        self.labels, self.problem_type = self.schema.label_names, self.schema.problem_type
        # Multi-label: one threshold per label (tuned on validation) when the export recorded them.
        self.threshold = (np.asarray(json.loads(meta["thresholds"])) if "thresholds" in meta
                          else float(meta.get("threshold", 0.5)))
        self.max_length = int(meta.get("max_length", 512))
        try:
            self.encode = encoder(path.parent, self.max_length)
        except Exception as e:  # noqa: BLE001 (tokenizers raises a plain Exception for a bad tokenizer.json)
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise ExportError(f"{path.parent}: no usable tokenizer files beside the model ({type(e).__name__}: "
                              f"{first}); the export step writes them there") from None
        self.inputs = [i.name for i in self.session.get_inputs()]

    def run(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(logits, scores) for each text, in batches."""
        logits, scores = [], []
        for start in range(0, len(texts), batch_size):
            enc = self.encode(texts[start:start + batch_size])
            out = self.session.run(["logits", "probabilities"], {k: enc[k] for k in self.inputs})
            logits.append(out[0])
            scores.append(out[1])
        width = self.schema.num_labels
        return (np.concatenate(logits) if logits else np.empty((0, width)),
                np.concatenate(scores) if scores else np.empty((0, width)))

    def predict(self, texts: list[str]) -> list[dict]:
        probs = self.run(texts)[1]
        return [{"text": text, "labels": names, "scores": {n: float(s) for n, s in zip(self.labels, p)}}
                for text, p, names in zip(texts, probs, self.schema.predicted_names(probs, self.threshold))]
