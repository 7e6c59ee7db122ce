"""ONNX export of the student: exported, checked, parity-verified against PyTorch, int8-quantized, timed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from kdpipe.config import Config
from kdpipe.errors import ExportError
from kdpipe.metrics import compute_metrics, measure_latency
from kdpipe.modeling import batched_logits
from kdpipe.task import LabelSchema

FP32, INT8 = "model.onnx", "model.int8.onnx"


def _wrapped(model, schema: LabelSchema, input_names: list[str]):
    """The exported graph returns logits and probabilities in the task's form (softmax or sigmoid)."""
    import torch

    class WithProbabilities(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            logits = self.model(**{k: given[k] for k in input_names}).logits
            return logits, schema.torch_scores(logits)

    return WithProbabilities().eval()


def to_onnx(model, input_names: list[str], path: Path, schema: LabelSchema, metadata: dict, opset: int = 18) -> None:
    import onnx
    import torch

    batch, seq = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("sequence", min=2, max=8192)
    example = tuple(torch.ones((2, 16), dtype=torch.long) for _ in input_names)
    model = model.float().cpu().eval()
    torch.onnx.export(_wrapped(model, schema, input_names), example, str(path), dynamo=True,
                      input_names=input_names, output_names=["logits", "probabilities"], opset_version=opset,
                      dynamic_shapes={k: {0: batch, 1: seq} for k in input_names}, external_data=False)
    proto = onnx.load(str(path))
    # The exporter records intermediate shapes from the example batch; drop them so that shape inference
    # (int8 quantization) works from the dynamic input shapes alone.
    del proto.graph.value_info[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value if isinstance(value, str) else json.dumps(value))
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def quantize_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


def session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def onnx_logits(sess, dataset, tokenizer, batch_size: int = 128) -> np.ndarray:
    names = {i.name for i in sess.get_inputs()}
    return batched_logits(dataset, tokenizer, batch_size,
                          lambda b: sess.run(["logits"], {k: v for k, v in b.items() if k in names})[0])


def onnx_latency_ms(sess, batch_size: int, seq_len: int, runs: int) -> float:
    feed = {i.name: (np.ones if i.name == "attention_mask" else np.zeros)((batch_size, seq_len), dtype=np.int64)
            for i in sess.get_inputs()}
    feed["input_ids"] = np.random.default_rng(0).integers(1000, 2000, (batch_size, seq_len), dtype=np.int64)
    return measure_latency(lambda: sess.run(None, feed), runs=runs)


def export_onnx(cfg: Config, student_dir: str | Path, data_dir: str | Path, out_dir: str | Path,
                metric: str | None = None) -> dict:
    """The student artifact (distill-student's) exported, verified and timed. `metric` (the gate's; default the
    task's primary metric) judges the int8 model. On any failed check the output folder is removed: nothing
    half-verified is left behind."""
    from kdpipe.data import load_prepared

    prep = load_prepared(data_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _export(cfg, prep, Path(student_dir), out_dir, metric or prep.schema.primary_metric(cfg.gate.metric))
    except Exception:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise


def _export(cfg, prep, student_dir: Path, out_dir: Path, metric: str) -> dict:
    from kdpipe.distill import MODEL_DIR, load_validation_logits
    from kdpipe.modeling import load_classifier, load_tokenizer

    e, schema = cfg.export, prep.schema
    tokenizer = load_tokenizer(str(student_dir / MODEL_DIR))
    model = load_classifier(str(student_dir / MODEL_DIR), trust_remote_code=cfg.trust_remote_code, what="student")
    val = prep.dataset["validation"]
    labels = np.asarray(val["labels"])
    torch_logits = load_validation_logits(student_dir, prep)  # the student's own fp32 logits, from distillation
    input_names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in val.column_names]
    metadata = {"label_names": schema.label_names, "problem_type": schema.problem_type,
                "threshold": str(cfg.metrics.threshold), "input_names": input_names,
                "max_length": str(cfg.data.max_length), "producer": "kdpipe"}
    to_onnx(model, input_names, out_dir / FP32, schema, metadata, e.opset)
    tokenizer.save_pretrained(str(out_dir))

    def judged(sess):
        return compute_metrics(onnx_logits(sess, val, tokenizer), labels, schema, cfg.metrics.threshold)

    rows = min(e.parity_samples, len(val))
    fp32 = session(out_dir / FP32)
    parity = float(np.abs(onnx_logits(fp32, val.select(range(rows)), tokenizer, 32) - torch_logits[:rows]).max())
    if parity > e.parity_tolerance:
        raise ExportError(f"ONNX and PyTorch logits differ by {parity:.2e} on {rows} validation rows "
                          f"(export.parity_tolerance {e.parity_tolerance}); the exported model is not trusted")
    fp32_metrics = judged(fp32)
    result = {"path": str(out_dir / FP32), "max_abs_logit_diff": parity, "parity_rows": rows,
              "metrics_torch": compute_metrics(torch_logits, labels, schema, cfg.metrics.threshold),
              "metrics_fp32": fp32_metrics,
              "latency_ms": {"fp32_b1": onnx_latency_ms(fp32, 1, e.latency_seq_len, e.latency_runs),
                             "fp32_b32": onnx_latency_ms(fp32, 32, e.latency_seq_len, max(3, e.latency_runs // 4))},
              "size_mb": {"fp32": (out_dir / FP32).stat().st_size / 2**20}}
    if e.quantize:
        int8 = _int8(out_dir, judged, fp32_metrics, metric, e)
        result["latency_ms"].update(int8.pop("latency_ms"))
        result["size_mb"]["int8"] = int8.pop("size_mb")
        result.update(int8)
    return result


def _int8(out_dir: Path, judged, fp32_metrics: dict, metric: str, e) -> dict:
    """The int8 model, kept only when its `metric` (the gate's) drops by at most export.max_int8_metric_drop."""
    quantize_int8(out_dir / FP32, out_dir / INT8)
    int8 = session(out_dir / INT8)
    int8_metrics = judged(int8)
    drop = fp32_metrics[metric] - int8_metrics[metric]
    result = {"int8_path": str(out_dir / INT8), "metrics_int8": int8_metrics, "int8_metric": metric,
              "int8_metric_drop": drop,
              "latency_ms": {"int8_b1": onnx_latency_ms(int8, 1, e.latency_seq_len, e.latency_runs),
                                  "int8_b32": onnx_latency_ms(int8, 32, e.latency_seq_len, max(3, e.latency_runs // 4))},
              "size_mb": (out_dir / INT8).stat().st_size / 2**20}
    if drop > e.max_int8_metric_drop:
        (out_dir / INT8).unlink()
        result.update({"int8_path": None, "int8_rejected": f"int8 {metric} drop {drop:.4f} > "
                                                           f"export.max_int8_metric_drop {e.max_int8_metric_drop}"})
    return result


class OnnxClassifier:
    """The shipped model: tokenizer files + model.onnx (or model.int8.onnx) with label names in its metadata."""

    def __init__(self, model_dir: str | Path, int8: bool = False):
        from transformers import AutoTokenizer

        model_dir = Path(model_dir)
        path = model_dir / (INT8 if int8 else FP32) if model_dir.is_dir() else model_dir
        if not path.is_file():
            raise ExportError(f"{path}: no ONNX model there; give the folder written by the export step")
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
        self.threshold = float(meta.get("threshold", 0.5))
        self.max_length = int(meta.get("max_length", 512))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path.parent))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ExportError(f"{path.parent}: no usable tokenizer files beside the model ({type(e).__name__}); the "
                              f"export step writes them there") from None
        self.inputs = [i.name for i in self.session.get_inputs()]

    def predict(self, texts: list[str]) -> list[dict]:
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="np")
        probs = self.session.run(["probabilities"], {k: enc[k].astype(np.int64) for k in self.inputs})[0]
        return [{"text": text, "labels": names, "scores": {n: float(s) for n, s in zip(self.labels, p)}}
                for text, p, names in zip(texts, probs, self.schema.predicted_names(probs, self.threshold))]
