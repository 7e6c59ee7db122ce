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
REQUIREMENTS = ("mlflow", "onnxruntime", "transformers", "tokenizers", "numpy", "pydantic")
# The model's code: the registered model runs this file, which builds the pyfunc from the package shipped with it.
ENTRY = "from mlflow.models import set_model\n\nfrom kdpipe.pyfunc import TextClassifierModel\n\nset_model(TextClassifierModel())\n"


class Prediction(pydantic.BaseModel):
    labels: list[str]
    scores: dict[str, float]


class TextClassifierModel(mlflow.pyfunc.PythonModel):
    """Input: a list of texts. Output, per text: the predicted labels and every label's score. It runs the variant
    the export serves (int8 when it passed its checks at export, else fp32: the model's metadata `kdpipe.variant`
    says which); model_config `{"variant": "fp32"}` (or "int8") runs that one instead."""

    def load_context(self, context):
        variant = (context.model_config or {}).get("variant", SERVED)
        self.classifier = OnnxClassifier(context.artifacts[ONNX_ARTIFACT], None if variant == SERVED else variant)

    def predict(self, model_input: list[str], params=None) -> list[Prediction]:
        return [Prediction(labels=r["labels"], scores=r["scores"]) for r in self.classifier.predict(list(model_input))]


def log_text_model(onnx_dir: str | Path, registered_model_name: str, example_texts: list[str]):
    """Log the export folder as the text-in pyfunc `model` of the active MLflow run and register it. The signature
    comes from the type hints (list of strings in; labels and scores out), the input example is real text, the
    package travels as the model's code, the requirements are pinned to what is installed here."""
    requirements = [f"{p}=={importlib.metadata.version(p)}" for p in REQUIREMENTS]
    with tempfile.TemporaryDirectory(prefix="kdpipe-pyfunc-") as tmp:
        entry = Path(tmp) / "kdpipe_text_model.py"
        entry.write_text(ENTRY)
        return mlflow.pyfunc.log_model(name="model", python_model=str(entry), artifacts={ONNX_ARTIFACT: str(onnx_dir)},
                                       code_paths=[str(Path(__file__).parent)], input_example=example_texts,
                                       pip_requirements=requirements, model_config={"variant": SERVED},
                                       metadata={"kdpipe.variant": Export(onnx_dir).served},
                                       registered_model_name=registered_model_name)


def load_registered(model_uri: str, variant: str | None = None) -> OnnxClassifier:
    """The OnnxClassifier of a registered kdpipe model (models:/NAME@ALIAS, models:/NAME/N, runs:/ID/model): the
    variant it serves, or `variant` (int8, fp32)."""
    try:
        model = mlflow.pyfunc.load_model(model_uri, model_config={"variant": variant or SERVED})
        inner = model.unwrap_python_model()
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"{model_uri}: cannot load it as a kdpipe text model ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})") from None
    if not isinstance(getattr(inner, "classifier", None), OnnxClassifier):
        raise ExportError(f"{model_uri}: not a kdpipe text model (an MLflow pyfunc over kdpipe's ONNX export)")
    return inner.classifier
