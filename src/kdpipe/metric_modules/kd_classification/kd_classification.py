"""Local `evaluate` metric for kdpipe (the Hub's metric scripts are not reachable offline).

Config "single_label": predictions = class ids -> accuracy, macro_f1.
Config "multi_label": predictions = per-label scores in [0, 1], references = 0/1 rows
-> micro_f1, macro_f1, subset accuracy, roc_auc per label and their macro mean.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

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
        preds, refs = np.asarray(predictions), np.asarray(references)
        if self.config_name != "multi_label":
            return {"accuracy": float(accuracy_score(refs, preds)),
                    "macro_f1": float(f1_score(refs, preds, average="macro", zero_division=0))}
        hard = (preds >= threshold).astype(int)
        out = {"micro_f1": float(f1_score(refs, hard, average="micro", zero_division=0)),
               "macro_f1": float(f1_score(refs, hard, average="macro", zero_division=0)),
               "subset_accuracy": float(accuracy_score(refs, hard))}
        aucs = []
        for k in range(refs.shape[1]):
            # AUC is undefined for a label with one class in this split; report it as missing, not 0.5.
            if len(np.unique(refs[:, k])) == 2:
                auc = float(roc_auc_score(refs[:, k], preds[:, k]))
                out[f"roc_auc_{k}"] = auc
                aucs.append(auc)
        out["roc_auc_macro"] = float(np.mean(aucs)) if aucs else float("nan")
        return out
