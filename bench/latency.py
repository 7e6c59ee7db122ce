"""Benchmark (b): inference latency at batch 1 and 32, sequence 128, measured side by side in one run:
teacher PyTorch, student PyTorch, student ONNX fp32, student ONNX int8 (dynamic quantization), with each
one's speed-up over the PyTorch teacher. Median of repeated runs after warm-up.

    .venv/bin/python bench/latency.py [--seq 128] [--runs 30]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import minilm, random_bert, save

from kdpipe.export import onnx_latency_ms, quantize_int8, to_onnx
from kdpipe.serving import FP32, INT8, session
from kdpipe.modeling import derive_student, load_classifier, torch_latency_ms
from kdpipe.task import SINGLE, LabelSchema

BINARY = LabelSchema(SINGLE, ["0", "1"])


def measure(name, teacher, student, seq, runs, root: Path):
    root.mkdir(parents=True, exist_ok=True)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    to_onnx(student, names, root / FP32, BINARY, {"label_names": BINARY.label_names})
    quantize_int8(root / FP32, root / INT8)
    fp32, int8 = session(root / FP32), session(root / INT8)
    rows = {}
    for batch in (1, 32):
        n = runs if batch == 1 else max(5, runs // 3)
        rows[f"b{batch}"] = {
            "teacher_pytorch": torch_latency_ms(teacher, batch, seq, n),
            "student_pytorch": torch_latency_ms(student, batch, seq, n),
            "student_onnx_fp32": onnx_latency_ms(fp32, batch, seq, n),
            "student_onnx_int8": onnx_latency_ms(int8, batch, seq, n),
        }
    speedup = {b: {k: v["teacher_pytorch"] / ms for k, ms in v.items()} for b, v in rows.items()}
    return {"pair": name, "seq_len": seq, "latency_ms": rows, "speedup_vs_teacher_pytorch": speedup}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kdpipe-bench-latency-"))
    base = load_classifier(random_bert(root / "bert-base", "bert-base"))
    tiny = load_classifier(random_bert(root / "bert-tiny", "bert-tiny"))
    teacher = load_classifier(minilm(), BINARY)
    results = [measure("bert-base -> bert-tiny", base, tiny, args.seq, args.runs, root / "tiny"),
               measure("MiniLM-L6 -> layers [0, 5]", teacher, derive_student(teacher, [0, 5]), args.seq, args.runs,
                       root / "minilm2")]
    save("latency", {"results": results})


if __name__ == "__main__":
    main()
