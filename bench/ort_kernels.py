"""Benchmark (b): why the export search has a `lean` graph. ONNX Runtime's SkipLayerNormalization (what its
transformer fusions and its own load-time fusion make of Add + LayerNormalization) against the two ops it replaces,
on one BERT residual (batch x sequence x hidden), in a plain session and in kdpipe's (serving.session: the
load-time fusion off). Best of 5 medians of 20 runs each; run it on the CPU a model will be served on.

    .venv/bin/python bench/ort_kernels.py [--shape 32 128 384]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from common import save

from kdpipe.metrics import measure_latency
from kdpipe.serving import ORT_FUSIONS_OFF


def graph(nodes, shape, path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    hidden = shape[-1]
    inits = [numpy_helper.from_array(np.ones(hidden, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(hidden, np.float32), "beta")]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "skip")]
    model = helper.make_model(
        helper.make_graph(nodes, "residual", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          inits),
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9  # what ONNX Runtime 1.31 reads
    onnx.save(model, str(path))
    return path


def timed(path: Path, disabled: list[str]) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    rng = np.random.default_rng(0)
    feed = {i.name: rng.standard_normal(tuple(i.shape), dtype=np.float32) for i in sess.get_inputs()}
    return min(measure_latency(lambda: sess.run(None, feed), runs=20, warmup=5) for _ in range(5))


def main() -> None:
    import onnxruntime as ort
    from onnx import helper

    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=3, default=[32, 128, 384])
    shape = ap.parse_args().shape
    work = Path(tempfile.mkdtemp(prefix="kdpipe-bench-ort-"))
    skip_ln = graph([helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta"], ["y"],
                                      domain="com.microsoft", epsilon=1e-12)], shape, work / "skip_ln.onnx")
    add_ln = graph([helper.make_node("Add", ["x", "skip"], ["sum"]),
                    helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)],
                   shape, work / "add_ln.onnx")
    ms = {"SkipLayerNormalization": timed(skip_ln, []),
          "Add + LayerNormalization, plain session (ORT fuses them at load)": timed(add_ln, []),
          "Add + LayerNormalization, kdpipe's session": timed(add_ln, ORT_FUSIONS_OFF)}
    save("ort_kernels", {"onnxruntime": ort.__version__, "shape": shape, "ms": ms,
                         "skip_ln_over_add_ln": ms["SkipLayerNormalization"] / ms[
                             "Add + LayerNormalization, kdpipe's session"]})


if __name__ == "__main__":
    main()
