#!/usr/bin/env bash
# A separate venv for Hugging Face Optimum's ONNX Runtime path (bench/latency.py --optimum): optimum-onnx 0.1.0
# pins transformers < 4.58, kdpipe pins 5.23, so the peer gets its own interpreter. onnxruntime is the same
# version as kdpipe's: the optimized models are timed in one process, side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=bench/cache/optimum-venv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "optimum-onnx[onnxruntime]==0.1.0" "onnxruntime==1.31.1" "onnx==1.23.2" "torch==2.13.0" \
    "numpy==2.4.6"
"$VENV/bin/python" -c "import optimum.onnxruntime, transformers; print('optimum venv ready: transformers', transformers.__version__)"
