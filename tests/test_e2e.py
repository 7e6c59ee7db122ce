"""End to end on real data with the real pretrained MiniLM: teacher fine-tuned, student derived, distilled,
exported and parity-checked. Minutes, not hours: subsets of the training data, full evaluation sets."""

import numpy as np
import pytest

from kdpipe.config import load_config
from kdpipe.data import preprocess
from kdpipe.distill import distill_student
from kdpipe.export import export_onnx
from kdpipe.gate import evaluate_gate
from kdpipe.serving import OnnxClassifier
from kdpipe.teacher import evaluate_teacher, finetune_teacher, teacher_needs_finetuning
from tests.serving import assert_served_as_predicted, served

pytestmark = pytest.mark.e2e


def run_chain(cfg, root):
    from kdpipe.artifacts import load_prepared

    preprocess(cfg, root / "prep")
    schema = load_prepared(root / "prep").schema
    needed, why = teacher_needs_finetuning(cfg, schema)
    assert needed, why  # the PyPI MiniLM is an encoder without a classification head
    teacher = finetune_teacher(cfg, root / "prep", root / "teacher")
    teval = evaluate_teacher(cfg, root / "prep", teacher["model_dir"], root / "teval")
    student = distill_student(cfg, root / "prep", teacher["model_dir"], root / "teval", root / "student")
    exported = export_onnx(cfg, root / "student", root / "prep", root / "onnx")
    return schema, teval, student, exported


def test_sst2_minilm_to_two_layers(tmp_path, shared_data, minilm_path):
    cfg = load_config(raw={
        "teacher": {"model": minilm_path, "epochs": 1, "learning_rate": 5e-5, "batch_size": 32},
        "student": {"layers": [0, 5]},
        "data": {"train": str(shared_data / "sst2/train.tsv"), "validation": str(shared_data / "sst2/dev.tsv"),
                 "text_column": "sentence", "max_length": 64, "max_train_samples": 3000},
        "distillation": {"alpha": 0.3, "temperature": 4.0, "epochs": 1, "learning_rate": 1e-4, "batch_size": 32},
        "export": {"latency_runs": 3},
    })
    schema, teval, student, exported = run_chain(cfg, tmp_path)
    teacher_acc, student_acc = teval["metrics"]["accuracy"], student["metrics"]["accuracy"]
    print(f"\nSST-2 dev (872 rows): teacher {teacher_acc:.4f}, student {student_acc:.4f}, "
          f"int8 {exported['metrics_int8']['accuracy']:.4f}, parity {exported['max_abs_logit_diff']:.2e}")
    assert teacher_acc > 0.75  # chance is 0.51
    assert student_acc > 0.70
    assert student["parameters"] < teval["parameters"] * 0.75
    assert exported["max_abs_logit_diff"] < cfg.export.parity_tolerance
    assert exported["metrics_fp32"]["accuracy"] == pytest.approx(student_acc, abs=1e-9)
    assert exported["metrics_int8"]["accuracy"] > 0.68
    gate = evaluate_gate(cfg.gate.model_copy(update={"min_metric": 0.7, "min_retention": 0.8}),
                         schema.primary_metric(), student["metrics"], teval["metrics"])
    assert gate.passed, gate.reasons
    rows = OnnxClassifier(tmp_path / "onnx").predict(["a masterpiece , moving and funny .",
                                                      "a tedious , joyless mess ."])
    assert [r["labels"] for r in rows] == [["1"], ["0"]]
    # The same student trained data parallel: two processes on this CPU (gloo), the same global batch.
    ddp = cfg.model_copy(deep=True)
    ddp.distillation.processes = 2
    parallel = distill_student(ddp, tmp_path / "prep", str(tmp_path / "teacher" / "model"), tmp_path / "teval",
                               tmp_path / "student-ddp")
    print(f"data parallel (2 processes): student {parallel['metrics']['accuracy']:.4f} "
          f"({parallel['train_runtime_s']:.1f} s training, single process {student['train_runtime_s']:.1f} s)")
    assert sorted(p.name for p in (tmp_path / "student-ddp").iterdir()) == sorted(
        p.name for p in (tmp_path / "student").iterdir())  # one model, one set of logits: rank 0's
    assert parallel["train_rows"] == student["train_rows"] and parallel["resumed_from"] is None
    assert abs(parallel["metrics"]["accuracy"] - student_acc) <= 0.01


def test_jigsaw_multilabel(tmp_path, shared_data, minilm_path, capsys):
    """Six sigmoid labels on real toxic comments: 200 rows to train, 100 held out (seeded split that puts
    every label in train). A sample, so the quality bar is modest: clearly better than chance."""
    import pandas as pd

    rows = pd.read_csv(shared_data / "jigsaw/train_sample300.csv").sample(frac=1, random_state=0)
    rows[:200].to_csv(tmp_path / "train.csv", index=False)
    rows[200:].to_csv(tmp_path / "validation.csv", index=False)
    labels = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
    cfg = load_config(raw={
        "teacher": {"model": minilm_path, "epochs": 6, "learning_rate": 1e-4, "batch_size": 16},
        "student": {"layers": [0, 5]},
        "data": {"train": str(tmp_path / "train.csv"), "validation": str(tmp_path / "validation.csv"),
                 "text_column": "comment_text", "label_columns": labels, "max_length": 64},
        "distillation": {"alpha": 0.3, "temperature": 2.0, "epochs": 6, "learning_rate": 2e-4, "batch_size": 16},
        "metrics": {"threshold": 0.3},
        "export": {"latency_runs": 3},
    })
    schema, teval, student, exported = run_chain(cfg, tmp_path)
    assert schema.problem_type == "multi_label_classification" and schema.label_names == labels
    t, s = teval["metrics"], student["metrics"]
    print(f"\nJigsaw held-out 100: teacher AUC toxic {t['roc_auc_toxic']:.3f} macro {t['roc_auc_macro']:.3f} "
          f"micro-F1 {t['micro_f1']:.3f}; student AUC toxic {s['roc_auc_toxic']:.3f} macro {s['roc_auc_macro']:.3f}")
    assert t["roc_auc_toxic"] > 0.75 and s["roc_auc_toxic"] > 0.65  # 0.5 is chance
    assert "roc_auc_threat" in t and "roc_auc_macro" in s
    assert exported["max_abs_logit_diff"] < cfg.export.parity_tolerance
    clf = OnnxClassifier(tmp_path / "onnx")
    row = clf.predict(["You are a complete idiot and I hate you"])[0]
    assert list(row["scores"]) == labels and all(0.0 <= v <= 1.0 for v in row["scores"].values())
    assert not np.isclose(sum(row["scores"].values()), 1.0)  # sigmoid per label, not a softmax
    # Registered as the pipeline registers it, the multi-label model serves text as `kdpipe predict` answers.
    import mlflow

    from kdpipe.pyfunc import log_text_model

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("jigsaw")  # not whichever experiment an earlier test made active (of another store)
    with mlflow.start_run():
        info = log_text_model(tmp_path / "onnx", "toxic", ["you are great", "you idiot"])
    mlflow.MlflowClient().set_registered_model_alias("toxic", "champion", info.registered_model_version)
    texts = ["You are a complete idiot and I hate you", "thanks for the helpful edit", "go away , stupid troll"]
    with served("models:/toxic@champion", uri, tmp_path / "serve.log") as url:
        rows = assert_served_as_predicted(url, str(tmp_path / "onnx"), texts, capsys)
    assert all(list(r["scores"]) == labels for r in rows)
