"""The shipped model: the verified ONNX file(s) and the tokenizer, text in, labels and scores out. `OnnxClassifier`
is what `kdpipe predict` runs and what the registered MLflow model (kdpipe.pyfunc) wraps. Light on purpose (numpy,
onnxruntime, a tokenizer: no torch, no mlflow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kdpipe.artifacts import Export
from kdpipe.errors import ExportError
from kdpipe.task import LabelSchema


def session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


class OnnxClassifier:
    """An export folder: tokenizer files + model.int8.onnx and model.onnx with kdpipe's metadata (label names,
    problem type, decision thresholds, max length). `variant` (int8, fp32) runs that file; by default the one the
    folder serves (Export.served: int8 when it passed its export checks)."""

    def __init__(self, model_dir: str | Path, variant: str | None = None):
        from transformers import AutoTokenizer

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
            self.tokenizer = AutoTokenizer.from_pretrained(str(path.parent))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ExportError(f"{path.parent}: no usable tokenizer files beside the model ({type(e).__name__}); the "
                              f"export step writes them there") from None
        self.inputs = [i.name for i in self.session.get_inputs()]

    def run(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(logits, scores) for each text, in batches."""
        logits, scores = [], []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[start:start + batch_size], truncation=True, max_length=self.max_length,
                                 padding=True, return_tensors="np")
            out = self.session.run(["logits", "probabilities"], {k: enc[k].astype(np.int64) for k in self.inputs})
            logits.append(out[0])
            scores.append(out[1])
        width = self.schema.num_labels
        return (np.concatenate(logits) if logits else np.empty((0, width)),
                np.concatenate(scores) if scores else np.empty((0, width)))

    def predict(self, texts: list[str]) -> list[dict]:
        probs = self.run(texts)[1]
        return [{"text": text, "labels": names, "scores": {n: float(s) for n, s in zip(self.labels, p)}}
                for text, p, names in zip(texts, probs, self.schema.predicted_names(probs, self.threshold))]
