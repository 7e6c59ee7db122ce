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
from kdpipe.export import onnx_latency_ms, onnx_logits, to_onnx
from kdpipe.export_search import quantize_int8
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
    """kdpipe's export search (every candidate of export.search full, and the one its rule ships) against Optimum's
    optimized fp32 and int8 of the same trained model, all timed in rounds in one process, in kdpipe's sessions
    (serving.session: ONNX Runtime's SkipLayerNormalization fusion at load off; Optimum's graphs carry theirs)."""
    from transformers import AutoTokenizer

    from kdpipe.config import ExportConfig
    from kdpipe.export_search import Candidate, _best, _why_not, first_candidates, node_groups, quantize

    root.mkdir(parents=True, exist_ok=True)
    student = load_classifier(str(student_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(student_dir))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    graphs = {"fused": root / FP32, "lean": root / "lean.onnx", "unfused": root / "unfused.onnx"}
    to_onnx(student, names, graphs["fused"], BINARY, {"label_names": BINARY.label_names}, unfused=graphs["unfused"],
            lean=graphs["lean"])
    dev, labels = sst2_dev(tokenizer)

    def calibration():  # as the export step calibrates: training rows, batches of 32
        import csv

        with open(SHARED / "sst2/train.tsv", newline="") as f:
            texts = [r["sentence"] for r, _ in zip(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE),
                                                   range(256))]
        for start in range(0, len(texts), 32):
            enc = tokenizer(texts[start:start + 32], truncation=True, max_length=128, padding=True, return_tensors="np")
            yield {k: np.asarray(enc[k], dtype=np.int64) for k in names}

    candidates = first_candidates("full", list(graphs))
    own_fp32 = {"fused": "kdpipe_fp32", "lean": "kdpipe_lean_fp32", "unfused": "kdpipe_unfused_fp32"}
    files = {own_fp32[g]: path for g, path in graphs.items()}
    for c in candidates:
        files[c.name] = root / f"{c.name.replace('/', '-')}.onnx"
        quantize(c, graphs[c.graph], files[c.name], calibration)
    predicted = {k: onnx_logits(session(p), dev, tokenizer).argmax(-1) for k, p in files.items()}
    # The sensitivity step of search full, on the reference candidate: each node group left in fp32 in turn.
    flips_without = {}
    for group in node_groups(graphs["fused"]):
        trial = Candidate("fused", "dynamic", (group,))
        quantize(trial, graphs["fused"], root / "trial.onnx")
        flips_without[group] = int((onnx_logits(session(root / "trial.onnx"), dev, tokenizer).argmax(-1)
                                    != predicted["kdpipe_fp32"]).sum())
    kept = Candidate("fused", "dynamic", (min(flips_without, key=flips_without.get),))
    candidates.append(kept)
    files[kept.name] = root / "kept.onnx"
    quantize(kept, graphs["fused"], files[kept.name])
    predicted[kept.name] = onnx_logits(session(files[kept.name]), dev, tokenizer).argmax(-1)
    chosen = subprocess.run([str(OPTIMUM_PYTHON), str(ROOT / "bench/optimum_path.py"), str(student_dir),
                             str(root / "optimum")], check=True, capture_output=True, text=True).stdout.strip()
    files.update({"optimum_fp32": root / "optimum/model.onnx",
                  "optimum_fp32_o2": root / "optimum/model_optimized.onnx",
                  "optimum_int8": root / "optimum/model_optimized_quantized.onnx"})
    for k in ("optimum_fp32", "optimum_fp32_o2", "optimum_int8"):
        predicted[k] = onnx_logits(session(files[k]), dev, tokenizer).argmax(-1)
    sessions = {k: session(p) for k, p in files.items()}
    latency = {f"b{b}": {} for b in (1, 32)}
    for _ in range(3):  # rounds over all models: a slow moment of the machine does not fall on one model only
        for b in (1, 32):
            for k, s in sessions.items():
                ms = onnx_latency_ms(s, b, seq, runs if b == 1 else max(5, runs // 3))
                latency[f"b{b}"][k] = min(ms, latency[f"b{b}"].get(k, ms))
    accuracy = {k: float((p == labels).mean()) for k, p in predicted.items()}
    flips_against = {**{c.name: own_fp32[c.graph] for c in candidates},
                     "optimum_int8": "optimum_fp32", "optimum_fp32_o2": "optimum_fp32"}
    flips = {k: int((predicted[k] != predicted[ref]).sum()) for k, ref in flips_against.items()}
    # The export search's rule on these rows: flips against the shipped fp32 (fused) graph, as the step counts them.
    rows = [{"candidate": c.name, "metric": "accuracy", "metric_drop": accuracy["kdpipe_fp32"] - accuracy[c.name],
             "flips": int((predicted[c.name] != predicted["kdpipe_fp32"]).sum()),
             "flip_rate": float((predicted[c.name] != predicted["kdpipe_fp32"]).mean()),
             "speed": float(np.sqrt(latency["b1"][c.name] / latency["b1"]["kdpipe_fp32"]
                                    * latency["b32"][c.name] / latency["b32"]["kdpipe_fp32"]))} for c in candidates]
    limits = ExportConfig()
    budget = rows[0]["flip_rate"]
    for r in rows:
        r["why_not"] = _why_not(r, budget, limits)
    shipped = _best(rows, budget, limits)
    return {"student": str(student_dir), "optimum_quantization": chosen.splitlines()[-1], "seq_len": seq,
            "latency_ms": latency, "dev_accuracy": accuracy, "label_flips_vs_own_fp32": flips,
            "search_rows": rows, "sensitivity_flips_with_group_in_fp32": flips_without,
            "kdpipe_shipped": shipped and shipped["candidate"], "dev_rows": int(len(labels)),
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
