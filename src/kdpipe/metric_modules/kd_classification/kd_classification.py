"""kdpipe's classification metrics as an `evaluate` module (the Hub's metric scripts are not reachable offline):
`evaluate.load("<kdpipe>/metric_modules/kd_classification", config_name="single_label" | "multi_label")`.

A thin wrapper: the numbers come from kdpipe.metrics.classification_metrics, which the pipeline calls directly.
"""

import datasets
import evaluate

from kdpipe.metrics import classification_metrics

_DESCRIPTION = "Classification metrics for single-label and multi-label distillation."
_KWARGS = "threshold (multi_label): decision threshold on the scores, default 0.5."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class KdClassification(evaluate.Metric):
    def _info(self):
        if self.config_name == "multi_label":
            features = datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")),
                                          "references": datasets.Sequence(datasets.Value("int32"))})
        else:
            features = datasets.Features({"predictions": datasets.Value("int32"),
                                          "references": datasets.Value("int32")})
        return evaluate.MetricInfo(description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
                                   features=features)

    def _compute(self, predictions, references, threshold=0.5):
        return classification_metrics(predictions, references, self.config_name == "multi_label", threshold)
