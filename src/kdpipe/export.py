"""ONNX export of the student: exported, checked, parity-verified against PyTorch, int8-quantized, timed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from kdpipe.artifacts import Export
from kdpipe.config import Config
from kdpipe.errors import ExportError
from kdpipe.metrics import compute_metrics, measure_latency
from kdpipe.modeling import batched_logits
from kdpipe.serving import session
from kdpipe.task import LabelSchema


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


# Encoders whose graphs ONNX Runtime's "bert" fusions recognize (attention, embedding + layer norm, skip layer
# norm, bias GELU): the same passes Hugging Face Optimum applies at its optimization level 2.
FUSABLE = ("bert", "roberta", "xlm-roberta", "camembert", "electra")


def to_onnx(model, input_names: list[str], path: Path, schema: LabelSchema, metadata: dict, opset: int = 18,
            fuse: bool = True) -> dict:
    """Export (TorchScript exporter, eager attention: the graph patterns ONNX Runtime's fusions know), then fuse
    for CPU when the architecture is one they cover. Returns the fused operator counts ({} when not fused)."""
    import onnx
    import torch

    model = model.float().cpu().eval()
    attention = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        example = tuple(torch.ones((2, 16), dtype=torch.long) for _ in input_names)
        axes = {k: {0: "batch", 1: "sequence"} for k in input_names} | {"logits": {0: "batch"}, "probabilities": {0: "batch"}}
        torch.onnx.export(_wrapped(model, schema, input_names), example, str(path), dynamo=False,
                          input_names=input_names, output_names=["logits", "probabilities"], opset_version=opset,
                          dynamic_axes=axes)
    finally:
        model.set_attn_implementation(attention)
    fused = _fuse(path, model.config) if fuse and model.config.model_type in FUSABLE else {}
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value if isinstance(value, str) else json.dumps(value))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return fused


def _fuse(path: Path, config) -> dict:
    """ONNX Runtime's transformer fusions, in place; then symbolic shape inference (it knows the fused operators),
    which int8 quantization needs for their outputs' types."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(path), model_type="bert", num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size)
    counts = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    onnx.save(SymbolicShapeInference.infer_shapes(optimized.model, auto_merge=True), str(path))
    return counts


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8, one scale per output channel of each weight (as Optimum's CPU configs do): on the SST-2 student
    it flipped 8 of 872 dev labels against fp32, per-tensor scales 15, at the same speed (docs/benchmarks.md (b))."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)


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
    from kdpipe.artifacts import load_prepared

    prep = load_prepared(data_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _export(cfg, prep, Path(student_dir), out_dir, metric or prep.schema.primary_metric(cfg.gate.metric))
    except Exception:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise


def _export(cfg, prep, student_dir: Path, out_dir: Path, metric: str) -> dict:
    from kdpipe.artifacts import Student
    from kdpipe.metrics import decision_agreement
    from kdpipe.modeling import load_classifier, load_tokenizer

    files = Export(out_dir)
    e, schema = cfg.export, prep.schema
    student = Student(student_dir)
    tokenizer = load_tokenizer(str(student.model_dir))
    model = load_classifier(str(student.model_dir), trust_remote_code=cfg.trust_remote_code, what="student")
    val = prep.dataset["validation"]
    labels = np.asarray(val["labels"])
    thresholds = student.thresholds(cfg.metrics.threshold)
    # The student's own fp32 logits, from distillation.
    torch_logits = student.logits.load("validation", prep.fingerprint("validation"))
    input_names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in val.column_names]
    metadata = {"label_names": schema.label_names, "problem_type": schema.problem_type,
                "threshold": str(cfg.metrics.threshold), "input_names": input_names,
                "max_length": str(cfg.data.max_length), "producer": "kdpipe"}
    if isinstance(thresholds, list):
        metadata["thresholds"] = thresholds  # per label, tuned on validation: what predict and serving decide with
    fused = to_onnx(model, input_names, files.fp32, schema, metadata, e.opset, e.fuse)
    tokenizer.save_pretrained(str(out_dir))
    split = prep.eval_split

    def scored(sess) -> tuple[dict, np.ndarray]:
        """Metrics on validation (where int8 is judged) and logits on the evaluation split (label flips)."""
        val_logits = onnx_logits(sess, val, tokenizer)
        eval_logits = val_logits if split == "validation" else onnx_logits(sess, prep.dataset[split], tokenizer)
        return compute_metrics(val_logits, labels, schema, thresholds), eval_logits

    rows = min(e.parity_samples, len(val))
    fp32 = session(files.fp32)
    parity = float(np.abs(onnx_logits(fp32, val.select(range(rows)), tokenizer, 32) - torch_logits[:rows]).max())
    if parity > e.parity_tolerance:
        raise ExportError(f"ONNX and PyTorch logits differ by {parity:.2e} on {rows} validation rows "
                          f"(export.parity_tolerance {e.parity_tolerance}); the exported model is not trusted")
    fp32_metrics, fp32_eval = scored(fp32)
    result = {"path": str(files.fp32), "max_abs_logit_diff": parity, "parity_rows": rows, "fused_operators": fused,
              "metrics_torch": compute_metrics(torch_logits, labels, schema, thresholds),
              "metrics_fp32": fp32_metrics,
              "latency_ms": {"fp32_b1": onnx_latency_ms(fp32, 1, e.latency_seq_len, e.latency_runs),
                             "fp32_b32": onnx_latency_ms(fp32, 32, e.latency_seq_len, max(3, e.latency_runs // 4))},
              "size_mb": {"fp32": files.fp32.stat().st_size / 2**20}}
    if e.quantize:
        quantize_int8(files.fp32, files.int8)
        int8 = session(files.int8)
        int8_metrics, int8_eval = scored(int8)
        flips = decision_agreement(fp32_eval, int8_eval, schema, thresholds, thresholds)
        result.update(_int8_verdict(out_dir, fp32_metrics, int8_metrics, metric, 1.0 - flips["rows"], split, e))
        result["latency_ms"].update({"int8_b1": onnx_latency_ms(int8, 1, e.latency_seq_len, e.latency_runs),
                                     "int8_b32": onnx_latency_ms(int8, 32, e.latency_seq_len,
                                                                 max(3, e.latency_runs // 4))})
        result["size_mb"]["int8"] = files.int8.stat().st_size / 2**20 if result["int8_path"] else None
    result["served"] = files.served  # what predict, the registered model and serving run unless asked otherwise
    return result


def _int8_verdict(out_dir: Path, fp32_metrics: dict, int8_metrics: dict, metric: str, flip_rate: float,
                  split: str, e) -> dict:
    """The int8 model is kept only when its `metric` (the gate's) drops by at most export.max_int8_metric_drop
    on validation and, when set, at most export.max_int8_label_flip_rate of the evaluation rows change decision."""
    drop = fp32_metrics[metric] - int8_metrics[metric]
    result = {"int8_path": str(Export(out_dir).int8), "metrics_int8": int8_metrics, "int8_metric": metric,
              "int8_metric_drop": drop, "int8_label_flip_rate": flip_rate, "int8_label_flip_split": split}
    why = []
    if drop > e.max_int8_metric_drop:
        why.append(f"int8 {metric} drop {drop:.4f} > export.max_int8_metric_drop {e.max_int8_metric_drop}")
    if e.max_int8_label_flip_rate is not None and flip_rate > e.max_int8_label_flip_rate:
        why.append(f"int8 changes the decision on {flip_rate:.2%} of {split} rows > "
                   f"export.max_int8_label_flip_rate {e.max_int8_label_flip_rate}")
    if why:
        Export(out_dir).int8.unlink()
        result.update({"int8_path": None, "int8_rejected": "; ".join(why)})
    return result
