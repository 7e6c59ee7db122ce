"""The registered model: an MLflow pyfunc that takes text. It wraps the export folder (ONNX files, tokenizer) as
an artifact and OnnxClassifier as its code, so `mlflow models serve -m models:/NAME@champion` answers
`{"inputs": ["..."]}` with the labels and scores `kdpipe predict` gives. Logged as a model from code: no pickle."""

from __future__ import annotations

import importlib.metadata
import tempfile
from pathlib import Path

import mlflow.pyfunc
import pydantic

from kdpipe.artifacts import Export
from kdpipe.errors import ExportError
from kdpipe.serving import OnnxClassifier

SERVED = "served"  # model_config variant: the one the export serves
ONNX_ARTIFACT = "onnx"  # the export folder: model.onnx (+ model.int8.onnx when it passed), tokenizer, metadata
REQUIREMENTS = ("mlflow", "onnxruntime", "tokenizers", "numpy", "pydantic")  # no torch, no transformers
# The model's code: the registered model runs this file, which builds the pyfunc from the package shipped with it.
ENTRY = "from mlflow.models import set_model\n\nfrom kdpipe.pyfunc import TextClassifierModel\n\nset_model(TextClassifierModel())\n"


class Prediction(pydantic.BaseModel):
    labels: list[str]
    scores: dict[str, float]


class TextClassifierModel(mlflow.pyfunc.PythonModel):
    """Input: a list of texts. Output, per text: the predicted labels and every label's score. It runs the variant
    the export serves (int8 when it passed its checks at export, else fp32: the model's metadata `kdpipe.variant`
    says which); model_config `{"variant": "fp32"}` (or "int8") runs that one instead. With `log_requests` set
    (model_config, from `serving.*` at registration, or SERVING_MODEL_CONFIG at serve time) a sample of requests
    is recorded (kdpipe.request_log)."""

    def load_context(self, context):
        config = context.model_config or {}
        variant = config.get("variant", SERVED)
        self.classifier = OnnxClassifier(context.artifacts[ONNX_ARTIFACT], None if variant == SERVED else variant)
        self.request_log = None
        if config.get("log_requests"):
            from kdpipe.request_log import RequestLog

            self.request_log = RequestLog(config["log_requests"], float(config.get("log_sample_rate", 1.0)),
                                          config.get("log_text_column") or "text",
                                          model={**logged_model(context), "variant": self.classifier.variant})

    def predict(self, model_input: list[str], params=None) -> list[Prediction]:
        rows = self.classifier.predict(list(model_input))
        if self.request_log is not None:
            self.request_log.record(rows)
        return [Prediction(labels=r["labels"], scores=r["scores"]) for r in rows]


def logged_model(context) -> dict:
    """The served model's MLflow ids (from its MLmodel file, beside the artifacts folder)."""
    try:
        from mlflow.models import Model

        model = Model.load(str(Path(context.artifacts[ONNX_ARTIFACT]).parents[1] / "MLmodel"))
        return {"model_id": model.model_id, "run_id": model.run_id}
    except Exception:  # noqa: BLE001 (the log still records labels and scores)
        return {}


def log_text_model(onnx_dir: str | Path, registered_model_name: str, example_texts: list[str],
                   serving: dict | None = None):
    """Log the export folder as the text-in pyfunc `model` of the active MLflow run and register it. The signature
    comes from the type hints (list of strings in; labels and scores out), the input example is real text, the
    package travels as the model's code, the requirements are pinned to what is installed here. `serving`: the
    request log's settings (log_requests, log_sample_rate, log_text_column), kept in the model_config so that a
    deployment can change them."""
    model_config = {"variant": SERVED, "log_requests": None, "log_sample_rate": 1.0, "log_text_column": "text",
                    **(serving or {})}
    # Transformers only for a tokenizer without tokenizer.json (kdpipe.serving.TransformersEncoder).
    needs = REQUIREMENTS + (() if (Path(onnx_dir) / "tokenizer.json").is_file() else ("transformers",))
    requirements = [f"{p}=={importlib.metadata.version(p)}" for p in needs]
    with tempfile.TemporaryDirectory(prefix="kdpipe-pyfunc-") as tmp:
        entry = Path(tmp) / "kdpipe_text_model.py"
        entry.write_text(ENTRY)
        return mlflow.pyfunc.log_model(name="model", python_model=str(entry), artifacts={ONNX_ARTIFACT: str(onnx_dir)},
                                       code_paths=[str(Path(__file__).parent)], input_example=example_texts,
                                       pip_requirements=requirements, model_config=model_config,
                                       metadata={"kdpipe.variant": Export(onnx_dir).served},
                                       registered_model_name=registered_model_name)


def load_registered(model_uri: str, variant: str | None = None) -> OnnxClassifier:
    """The OnnxClassifier of a registered kdpipe model (models:/NAME@ALIAS, models:/NAME/N, runs:/ID/model): the
    variant it serves, or `variant` (int8, fp32)."""
    try:
        # No request log here: predict and the champion's re-scoring are not traffic.
        model = mlflow.pyfunc.load_model(model_uri, model_config={"variant": variant or SERVED, "log_requests": None})
        inner = model.unwrap_python_model()
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"{model_uri}: cannot load it as a kdpipe text model ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})") from None
    if not isinstance(getattr(inner, "classifier", None), OnnxClassifier):
        raise ExportError(f"{model_uri}: not a kdpipe text model (an MLflow pyfunc over kdpipe's ONNX export)")
    return inner.classifier
