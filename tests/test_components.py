"""Each KFP component run alone under KFP's local runner, as KFP's own e2e tests do: in a pipeline root of its
own, fed only its declared inputs. Upstream outputs are copied to a store (as a cluster's artifact store would
hold them) and the upstream pipeline root is deleted before the next component runs, so a step that read
anything but its declared inputs (another step's folder, a host path in a parameter) would fail here."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from kfp import dsl, local
from kfp.dsl import Artifact, Dataset, Model

from kdpipe.config import load_config
from tests.conftest import base_config, make_tiny_bert

RUN = "components-alone"


class Store:
    """Outputs of components run alone: artifacts copied here, parameters kept as values."""

    def __init__(self, root: Path):
        self.root, self.metadata, self.count = root, {}, 0

    def run(self, component, artifacts: dict | None = None, **params) -> dict:
        """Run `component` alone (importers feed it the stored artifacts), then keep its outputs and delete its
        pipeline root."""
        artifacts = artifacts or {}
        self.count += 1
        root = self.root / f"root-{self.count}"

        @dsl.pipeline(name=f"alone-{self.count}")
        def alone():
            imported = {name: dsl.importer(artifact_uri=str(self.root / "store" / key), artifact_class=cls,
                                           metadata=self.metadata.get(key, {})).output
                        for name, (cls, key) in artifacts.items()}
            component(**params, **imported)

        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
        alone()
        (task_dir,) = [p for p in next(root.iterdir()).iterdir() if not p.name.startswith("importer")]
        executor = json.loads((task_dir / "executor_output.json").read_text())
        outputs = dict(executor.get("parameterValues", {}))
        for name, spec in executor.get("artifacts", {}).items():
            self.metadata[f"{task_dir.name}.{name}"] = spec["artifacts"][0].get("metadata", {})
            src, dst = task_dir / name, self.root / "store" / f"{task_dir.name}.{name}"
            shutil.rmtree(dst, ignore_errors=True)
            if src.exists():
                (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
        for name in ("decision_json",):  # an OutputPath parameter is a file in the task folder
            if (task_dir / name).is_file():
                outputs[name] = (task_dir / name).read_text()
        shutil.rmtree(root)
        return outputs


@pytest.fixture(scope="module")
def store(tmp_path_factory, bert_tokenizer, sst2_small):
    root = tmp_path_factory.mktemp("alone")
    (root / "store").mkdir()
    teacher = make_tiny_bert(root / "teacher-base", bert_tokenizer, layers=2, hidden=32)  # needs fine-tuning
    raw = base_config(teacher, *sst2_small)
    raw["student"] = {"layers": [0]}
    raw["tracking"] = {"uri": f"sqlite:///{root}/mlflow.db", "experiment": "alone", "registered_model": "alone"}
    (root / "config.yaml").write_text(yaml.safe_dump(raw))
    return Store(root), json.dumps(load_config(root / "config.yaml").to_dict())


def test_each_component_runs_alone_on_its_declared_inputs(store):
    from mlflow.tracking import MlflowClient

    from kdpipe_kfp.components import (distill_student, evaluate_gate, evaluate_teacher, export_register, hpo_best,
                                       prepare_teacher, preprocess, validate_tokenizers)

    s, config = store
    common = {"config_json": config, "pipeline_run": RUN}
    assert s.run(validate_tokenizers, **common)["Output"] is True
    s.run(preprocess, **common)
    dataset = {"dataset": (Dataset, "preprocess.dataset")}
    s.run(prepare_teacher, dataset, **common)
    assert (s.root / "store/prepare-teacher.teacher/model/model.safetensors").is_file()  # fine-tuned: the artifact
    teacher = {**dataset, "teacher": (Model, "prepare-teacher.teacher")}
    teacher_metrics = s.run(evaluate_teacher, teacher, **common)["metrics_json"]
    assert set(json.loads(teacher_metrics)) == {"accuracy", "macro_f1"}
    best = s.run(hpo_best, dataset, given_params_json=json.dumps({"epochs": 1}), **common)
    assert json.loads(best["params_json"]) == {"epochs": 1} and best["reuse_model"] is False
    student = s.run(distill_student, {**teacher, "teacher_logits": (Artifact, "evaluate-teacher.teacher_logits"),
                                      "best_model": (Model, "hpo-best.best_model")},
                    params_json=best["params_json"], reuse_model=False, **common)
    assert student["latency_ms_b1"] > 0
    student_in = {**dataset, "student": (Model, "distill-student.student")}
    gate = s.run(evaluate_gate, {**student_in, "teacher_logits": (Artifact, "evaluate-teacher.teacher_logits")},
                 teacher_metrics_json=teacher_metrics,
                 student_latency_ms=student["latency_ms_b1"], **common)
    decision = json.loads(gate["decision_json"])
    assert gate["Output"] is True and decision["passed"] is True and decision["metric"] == "accuracy"
    s.run(export_register, {**student_in, "teacher_logits": (Artifact, "evaluate-teacher.teacher_logits")},
          decision_json=gate["decision_json"], **common)
    assert (s.root / "store" / "export-register.onnx_model" / "model.onnx").is_file()
    # Every step tracked under one parent run; the model registered from the export step's run.
    client = MlflowClient(f"sqlite:///{s.root}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("alone").experiment_id],
                              f"tags.`kdpipe.pipeline_run` = '{RUN}'")
    roles = sorted(r.data.tags["kdpipe.role"] for r in runs)
    assert roles == sorted(["pipeline", "validate_tokenizers", "preprocess", "prepare_teacher", "evaluate_teacher",
                            "distill_student", "evaluate_gate", "export_register"])
    assert str(client.get_model_version_by_alias("alone", "champion").version) == "1"


def test_a_teacher_that_is_already_a_classifier_passes_through_as_metadata(store, bert_tokenizer):
    from kdpipe_kfp.components import evaluate_teacher, prepare_teacher, preprocess

    s, config = store
    classifier = make_tiny_bert(s.root / "teacher-classifier", bert_tokenizer, layers=2, num_labels=2)
    config = json.dumps(dict(json.loads(config), teacher=dict(json.loads(config)["teacher"], model=classifier)))
    common = {"config_json": config, "pipeline_run": RUN + "-classifier"}
    s.run(preprocess, **common)
    s.run(prepare_teacher, {"dataset": (Dataset, "preprocess.dataset")}, **common)
    assert s.metadata["prepare-teacher.teacher"] == {"teacher_ref": classifier, "finetuned": False, "reused": False,
                                                    "teacher_digest": ""}
    assert not any((s.root / "store/prepare-teacher.teacher").iterdir())  # nothing copied: the reference travels
    metrics = json.loads(s.run(evaluate_teacher, {"dataset": (Dataset, "preprocess.dataset"),
                                                  "teacher": (Model, "prepare-teacher.teacher")},
                               **common)["metrics_json"])
    assert set(metrics) == {"accuracy", "macro_f1"}


def test_hpo_worker_and_best_model_reuse_alone(store):
    """The HPO path, each component alone: a worker's trials land in the study and MLflow only; hpo-best hands
    the best trial's model on as its Model output; distill-student ships it without training."""
    from mlflow.tracking import MlflowClient

    from kdpipe_kfp.components import (distill_student, evaluate_teacher, hpo_best, hpo_worker, prepare_teacher,
                                       preprocess)

    s, config = store
    raw = json.loads(config)
    raw["hpo"] = dict(raw["hpo"], enabled=True, n_trials=2, workers=1, pruner="none", reuse_best_model=True,
                      storage=f"journal:{s.root}/hpo-journal.log",
                      space={"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}})
    common = {"config_json": json.dumps(raw), "pipeline_run": RUN + "-hpo"}
    s.run(preprocess, **common)
    dataset = {"dataset": (Dataset, "preprocess.dataset")}
    s.run(prepare_teacher, dataset, **common)
    teacher = {**dataset, "teacher": (Model, "prepare-teacher.teacher")}
    teacher_metrics = s.run(evaluate_teacher, teacher, **common)["metrics_json"]
    s.run(hpo_worker, {**teacher, "teacher_logits": (Artifact, "evaluate-teacher.teacher_logits")}, worker=0, **common)
    best = s.run(hpo_best, dataset, given_params_json="", **common)
    assert best["reuse_model"] is True and set(json.loads(best["params_json"])) == {"learning_rate"}
    assert (s.root / "store/hpo-best.best_model/model/model.safetensors").is_file()
    student = s.run(distill_student, {**teacher, "teacher_logits": (Artifact, "evaluate-teacher.teacher_logits"),
                                      "best_model": (Model, "hpo-best.best_model")},
                    params_json=best["params_json"], reuse_model=True, **common)
    assert student["latency_ms_b1"] > 0 and set(json.loads(teacher_metrics)) == {"accuracy", "macro_f1"}
    client = MlflowClient(f"sqlite:///{s.root}/mlflow.db")
    (distill,) = client.search_runs([client.get_experiment_by_name("alone").experiment_id],
                                    f"tags.`kdpipe.pipeline_run` = '{RUN}-hpo' "
                                    "and tags.`kdpipe.role` = 'distill_student'")
    assert "train_runtime_s" not in distill.data.metrics  # shipped, not trained again
