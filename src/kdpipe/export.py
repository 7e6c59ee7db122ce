"""ONNX export of the student: exported, checked, parity-verified against PyTorch, int8-quantized, timed."""

from __future__ import annotations

import json
import shutil
import tempfile
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
# The `lean` graph: ONNX Runtime's fusions but SkipLayerNormalization and BiasGelu. On ORT 1.31's x86 CPU kernels Add
# + LayerNormalization ran 3-4x faster than SkipLayerNormalization (32x128x384, bench/ort_kernels.py) and the bias of
# Gelu joins the int8 MatMul before it; kdpipe's sessions keep them apart (serving.ORT_FUSIONS_OFF).
# docs/benchmarks.md (b).
LEAN = {"enable_skip_layer_norm": False, "enable_bias_skip_layer_norm": False, "enable_bias_gelu": False}


def to_onnx(model, input_names: list[str], path: Path, schema: LabelSchema, metadata: dict, opset: int = 18,
            fuse: bool = True, unfused: Path | None = None, lean: Path | None = None) -> dict:
    """Export (TorchScript exporter, eager attention: the graph patterns ONNX Runtime's fusions know), then fuse
    for CPU when the architecture is one they cover. Returns the fused operator counts ({} when not fused).
    `unfused`, `lean`: where to keep the graph as exported and its lean fusion (LEAN; only when fused), with the
    same metadata: the export search quantizes them too."""
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
    if unfused is not None:
        shutil.copyfile(path, unfused)
        _stamp(unfused, metadata)
    if not (fuse and model.config.model_type in FUSABLE):
        _stamp(path, metadata)
        return {}
    if lean is not None:
        shutil.copyfile(path, lean)
        _fuse(lean, model.config, LEAN)
        _stamp(lean, metadata)
    fused = _fuse(path, model.config)
    _stamp(path, metadata)
    return fused


def _stamp(path: Path, metadata: dict) -> None:
    """The task's metadata (labels, problem type, thresholds) into the graph, which is then checked."""
    import onnx

    proto = onnx.load(str(path))
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value if isinstance(value, str) else json.dumps(value))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _fuse(path: Path, config, without: dict | None = None) -> dict:
    """ONNX Runtime's transformer fusions (`without`: FusionOptions switched off), in place; then symbolic shape
    inference (it knows the fused operators), which int8 quantization needs for their outputs' types."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    for name, value in (without or {}).items():
        setattr(options, name, value)
    optimized = optimize_model(str(path), model_type="bert", num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size, optimization_options=options)
    counts = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    onnx.save(SymbolicShapeInference.infer_shapes(optimized.model, auto_merge=True), str(path))
    return counts


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
                metric: str | None = None, teacher_logits: np.ndarray | None = None) -> dict:
    """The student artifact (distill-student's) exported, verified and timed, its int8 variant chosen by the export
    search (kdpipe.export_search). `metric` (the gate's; default the task's primary metric) judges the int8
    candidates; `teacher_logits` (on the evaluation split) counts each one's disagreements with the teacher. On any
    failed check the output folder is removed: nothing half-verified is left behind."""
    from kdpipe.artifacts import load_prepared

    prep = load_prepared(data_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="kdpipe-export-") as work:
            return _export(cfg, prep, Path(student_dir), out_dir, metric or prep.schema.primary_metric(cfg.gate.metric),
                           teacher_logits, Path(work))
    except Exception:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise


def _export(cfg, prep, student_dir: Path, out_dir: Path, metric: str, teacher_logits, work: Path) -> dict:
    from kdpipe.artifacts import Student
    from kdpipe.drift import agrees
    from kdpipe.export_search import search
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
    searching = e.quantize and e.search != "off"
    more_graphs = {"lean": work / "lean.onnx", "unfused": work / "unfused.onnx"} if searching else {}
    fused = to_onnx(model, input_names, files.fp32, schema, metadata, e.opset, e.fuse, **more_graphs)
    tokenizer.save_pretrained(str(out_dir))
    split = prep.eval_split

    def scored(sess) -> tuple[dict, np.ndarray]:
        """Metrics on validation (where int8 is judged) and logits on the evaluation split (label flips)."""
        val_logits = onnx_logits(sess, val, tokenizer)
        eval_logits = val_logits if split == "validation" else onnx_logits(sess, prep.dataset[split], tokenizer)
        return compute_metrics(val_logits, labels, schema, thresholds), eval_logits

    sessions: dict[Path, object] = {}

    def timed(path: Path) -> dict[int, float]:
        sess = sessions.setdefault(path, session(path))  # one session per graph across the search's rounds
        return {b: onnx_latency_ms(sess, b, e.latency_seq_len, e.latency_runs if b == 1 else max(5, e.latency_runs // 2))
                for b in e.search_batch_sizes}

    rows = min(e.parity_samples, len(val))
    fp32 = session(files.fp32)
    parity = float(np.abs(onnx_logits(fp32, val.select(range(rows)), tokenizer, 32) - torch_logits[:rows]).max())
    if parity > e.parity_tolerance:
        raise ExportError(f"ONNX and PyTorch logits differ by {parity:.2e} on {rows} validation rows "
                          f"(export.parity_tolerance {e.parity_tolerance}); the exported model is not trusted")
    fp32_metrics, fp32_eval = scored(fp32)
    fp32_decided = schema.decide(schema.scores(fp32_eval), thresholds)
    teacher_decided = (None if teacher_logits is None
                       else schema.decide(schema.scores(teacher_logits), cfg.metrics.threshold))

    def judge(path: Path) -> dict:
        metrics, eval_logits = scored(session(path))
        decided = schema.decide(schema.scores(eval_logits), thresholds)
        flips = int((~agrees(decided, fp32_decided)).sum())
        return {"metrics": metrics, "metric": metric, "metric_drop": fp32_metrics[metric] - metrics[metric],
                "flips": flips,
                "flip_rate": flips / max(len(decided), 1),
                **({} if teacher_decided is None
                   else {"teacher_disagreements": int((~agrees(decided, teacher_decided)).sum())})}

    fp32_ms = timed(files.fp32) if not e.quantize else {}  # with int8: timed in the search's rounds
    result = {"path": str(files.fp32), "max_abs_logit_diff": parity, "parity_rows": rows, "fused_operators": fused,
              "metrics_torch": compute_metrics(torch_logits, labels, schema, thresholds),
              "metrics_fp32": fp32_metrics,
              "latency_ms": {f"fp32_b{b}": ms for b, ms in fp32_ms.items()},
              "size_mb": {"fp32": files.fp32.stat().st_size / 2**20}}
    if teacher_decided is not None:
        result["fp32_teacher_disagreements"] = int((~agrees(fp32_decided, teacher_decided)).sum())
    if e.quantize:
        graphs = {("fused" if fused else "unfused"): files.fp32}
        if fused:
            graphs.update(more_graphs)
        searched = search(e.search, graphs, work, judge, timed, e, _calibration(prep, tokenizer, input_names,
                                                                                e.calibration_rows))
        result["latency_ms"] = {f"fp32_b{b}": ms for b, ms in searched.fp32_ms.items()}
        result.update(_int8_result(searched, files, metric, split))
        if searched.chosen is not None:
            result["latency_ms"].update({f"int8_b{b}": ms for b, ms in searched.chosen["latency_ms"].items()})
            result["size_mb"]["int8"] = files.int8.stat().st_size / 2**20
    result["served"] = files.served  # what predict, the registered model and serving run unless asked otherwise
    return result


def _calibration(prep, tokenizer, input_names: list[str], rows: int):
    """Feeds of training rows (batches of 32, padded) for static int8's calibration."""
    def feeds():
        train = prep.dataset["train"].select(range(min(rows, len(prep.dataset["train"]))))
        for start in range(0, len(train), 32):
            batch = tokenizer.pad({k: train[k][start:start + 32] for k in input_names}, return_tensors="np")
            yield {k: np.asarray(batch[k], dtype=np.int64) for k in input_names}

    return feeds


def _int8_result(searched, files: Export, metric: str, split: str) -> dict:
    """The chosen int8 variant as model.int8.onnx, with its figures; or why none is shipped, with the figures of
    the reference variant (the rates are reported either way)."""
    from kdpipe.export_search import public

    out = {"int8_search": public(searched), "int8_search_seconds": searched.seconds, "int8_metric": metric,
           "int8_label_flip_split": split}
    chosen, shown = searched.chosen, searched.chosen or searched.rows[0]
    if "error" not in shown:
        out.update({"metrics_int8": shown["metrics"], "int8_metric_drop": shown["metric_drop"],
                    "int8_label_flip_rate": shown["flip_rate"], "int8_label_flips": shown["flips"],
                    "int8_teacher_disagreements": shown.get("teacher_disagreements")})
    if chosen is None:
        reasons = searched.rows[0]["why_not"] if len(searched.rows) == 1 else "; ".join(
            f"{r['candidate']}: {r['why_not']}" for r in searched.rows)
        return {**out, "int8_path": None, "int8_rejected": reasons}
    shutil.copyfile(chosen["path"], files.int8)  # out of the search's work folder, which is removed
    return {**out, "int8_path": str(files.int8), "int8_variant": chosen["candidate"]}
