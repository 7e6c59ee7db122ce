"""Benchmark (b): inference latency at batch 1 and 32, sequence 128, measured side by side in one run:
teacher PyTorch, student PyTorch, student ONNX fp32, student ONNX int8 (dynamic quantization), with each
one's speed-up over the PyTorch teacher. Median of repeated runs after warm-up (the Optimum comparison: the best of three such medians, taken in rounds
over all models).

With a trained student (--student, default: the quality benchmark's logit-KD student), also kdpipe's export
against Hugging Face Optimum's CPU path for the same exported model (bench/optimum_path.py, in the venv
bench/setup_optimum.sh makes): latency of the four ONNX files at batch 1 and 32, accuracy on SST-2 dev, and
the fp32 -> int8 label-flip rate there for both.

    .venv/bin/python bench/latency.py [--seq 128] [--runs 30] [--student DIR] [--no-optimum]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from common import CACHE, ROOT, SHARED, minilm, random_bert, save

from kdpipe.artifacts import Export
from kdpipe.export import onnx_latency_ms, onnx_logits, quantize_int8, to_onnx
from kdpipe.modeling import derive_student, load_classifier, torch_latency_ms
from kdpipe.serving import session
from kdpipe.task import SINGLE, LabelSchema

FP32, INT8 = Export.FP32, Export.INT8

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


OPTIMUM_PYTHON = CACHE / "optimum-venv" / "bin" / "python"


def sst2_dev(tokenizer):
    import csv

    import datasets

    with open(SHARED / "sst2/dev.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    enc = tokenizer([r["sentence"] for r in rows], truncation=True, max_length=128)
    return datasets.Dataset.from_dict(dict(enc)), np.asarray([int(r["label"]) for r in rows])


def versus_optimum(student_dir: Path, seq: int, runs: int, root: Path) -> dict:
    """kdpipe's fp32 and int8 export against Optimum's optimized fp32 and int8 of the same exported model."""
    from transformers import AutoTokenizer

    root.mkdir(parents=True, exist_ok=True)
    student = load_classifier(str(student_dir))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    to_onnx(student, names, root / FP32, BINARY, {"label_names": BINARY.label_names})
    quantize_int8(root / FP32, root / INT8)
    (root / "unfused").mkdir(exist_ok=True)  # kdpipe before it adopted ONNX Runtime's fusions
    to_onnx(student, names, root / "unfused" / FP32, BINARY, {"label_names": BINARY.label_names}, fuse=False)
    quantize_int8(root / "unfused" / FP32, root / "unfused" / INT8)
    chosen = subprocess.run([str(OPTIMUM_PYTHON), str(ROOT / "bench/optimum_path.py"), str(student_dir),
                             str(root / "optimum")], check=True, capture_output=True, text=True).stdout.strip()
    files = {"kdpipe_fp32": root / FP32, "kdpipe_int8": root / INT8,
             "kdpipe_unfused_fp32": root / "unfused" / FP32, "kdpipe_unfused_int8": root / "unfused" / INT8,
             "optimum_fp32": root / "optimum/model.onnx",
             "optimum_fp32_o2": root / "optimum/model_optimized.onnx",
             "optimum_int8": root / "optimum/model_optimized_quantized.onnx"}
    sessions = {k: session(p) for k, p in files.items()}
    latency = {f"b{b}": {} for b in (1, 32)}
    for _ in range(3):  # rounds over all models: a slow moment of the machine does not fall on one model only
        for b in (1, 32):
            for k, s in sessions.items():
                ms = onnx_latency_ms(s, b, seq, runs if b == 1 else max(5, runs // 3))
                latency[f"b{b}"][k] = min(ms, latency[f"b{b}"].get(k, ms))
    tokenizer = AutoTokenizer.from_pretrained(str(student_dir))
    dev, labels = sst2_dev(tokenizer)
    predicted = {k: onnx_logits(s, dev, tokenizer).argmax(-1) for k, s in sessions.items()}
    fp32 = {"kdpipe_int8": "kdpipe_fp32", "kdpipe_unfused_int8": "kdpipe_unfused_fp32", "optimum_int8": "optimum_fp32",
            "optimum_fp32_o2": "optimum_fp32"}
    return {"student": str(student_dir), "optimum_quantization": chosen.splitlines()[-1], "seq_len": seq,
            "latency_ms": latency, "dev_accuracy": {k: float((p == labels).mean()) for k, p in predicted.items()},
            "label_flips_vs_own_fp32": {k: int((predicted[k] != predicted[ref]).sum()) for k, ref in fp32.items()},
            "dev_rows": int(len(labels)),
            "size_mb": {k: p.stat().st_size / 2**20 for k, p in files.items()}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--student", type=Path, default=CACHE / "sst2/students/logit-seed42/model")
    ap.add_argument("--no-optimum", action="store_true")
    ap.add_argument("--only-optimum", action="store_true")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kdpipe-bench-latency-"))
    result = {}
    if not args.only_optimum:
        base = load_classifier(random_bert(root / "bert-base", "bert-base"))
        tiny = load_classifier(random_bert(root / "bert-tiny", "bert-tiny"))
        teacher = load_classifier(minilm(), BINARY)
        result["results"] = [measure("bert-base -> bert-tiny", base, tiny, args.seq, args.runs, root / "tiny"),
                             measure("MiniLM-L6 -> layers [0, 5]", teacher, derive_student(teacher, [0, 5]), args.seq,
                                     args.runs, root / "minilm2")]
    if not args.no_optimum:
        if not OPTIMUM_PYTHON.is_file():
            raise SystemExit(f"{OPTIMUM_PYTHON} missing: run bench/setup_optimum.sh first (or pass --no-optimum)")
        if not (args.student / "config.json").is_file():
            raise SystemExit(f"--student {args.student}: no trained student there; run bench/quality_sst2.py first "
                             f"or give a model folder saved by distill-student")
        result["versus_optimum"] = versus_optimum(args.student, args.seq, args.runs, root / "optimum")
    save("latency" if not args.only_optimum else "latency_optimum", result)


if __name__ == "__main__":
    main()
