"""Hugging Face Optimum's CPU path for a trained classifier, as its docs give it (run by bench/latency.py in the
venv bench/setup_optimum.sh makes: optimum-onnx pins an older transformers than kdpipe):

  ORTModelForSequenceClassification.from_pretrained(..., export=True) (Optimum's own ONNX export), ORTOptimizer
  at optimization level 2 (ONNX Runtime's transformer fusions: attention, skip-layer-norm, GELU), then ORTQuantizer
  with AutoQuantizationConfig for this CPU's instruction set (dynamic int8, Optimum's defaults).

    bench/cache/optimum-venv/bin/python bench/optimum_path.py STUDENT_DIR OUT_DIR

STUDENT_DIR is a model folder saved with save_pretrained. Writes OUT_DIR/model.onnx, model_optimized.onnx and
model_optimized_quantized.onnx and prints what it chose as JSON.
"""

import json
import sys
from pathlib import Path

import onnx
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
from optimum.onnxruntime import ORTModelForSequenceClassification, ORTOptimizer, ORTQuantizer
from optimum.onnxruntime.configuration import AutoQuantizationConfig, OptimizationConfig


def cpu_flags() -> set:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def main(src: str, out: str):
    flags = cpu_flags()
    isa = "avx512_vnni" if "avx512_vnni" in flags else "avx512" if "avx512f" in flags else "avx2"
    model = ORTModelForSequenceClassification.from_pretrained(src, export=True)
    model.save_pretrained(out)
    ORTOptimizer.from_pretrained(model).optimize(OptimizationConfig(optimization_level=2, optimize_for_gpu=False),
                                                 save_dir=out)
    # optimum-onnx 0.1.0 hands ONNX Runtime 1.31's quantizer a graph without type information, which it refuses
    # ("Unable to find data type for weight_name ..."); ORT's symbolic shape inference (it knows the fused
    # contrib ops) adds it, as ORT's own quantization pre-processing does.
    optimized = Path(out) / "model_optimized.onnx"
    onnx.save(SymbolicShapeInference.infer_shapes(onnx.load(str(optimized)), auto_merge=True), str(optimized))
    qconfig = getattr(AutoQuantizationConfig, isa)(is_static=False)
    ORTQuantizer.from_pretrained(out, file_name="model_optimized.onnx").quantize(qconfig, save_dir=out)
    print(json.dumps({"isa": isa, "per_channel": qconfig.per_channel, "reduce_range": qconfig.reduce_range,
                      "operators": list(qconfig.operators_to_quantize)}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
