"""One component per step. A body calls its step in kdpipe.steps and writes the result into the component's
declared outputs; everything a later step reads travels as one of them (artifacts, or output parameters).

No `from __future__ import annotations` here: KFP reads the real annotation objects."""

import os
from typing import NamedTuple

from kfp import dsl

from kdpipe import __version__
from kfp.dsl import (HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output,
                     PipelineTaskFinalStatus)

# Every step's image (docker/Dockerfile, built by scripts/build-images.sh with this tag). A pipeline placed on GPUs
# runs its training steps in the CUDA image instead (kdpipe_pipeline.make_pipeline); both can be overridden.
IMAGE = os.environ.get("KDPIPE_IMAGE", f"ghcr.io/kdpipe/kdpipe:{__version__}-cpu")
GPU_IMAGE = os.environ.get("KDPIPE_GPU_IMAGE", f"ghcr.io/kdpipe/kdpipe:{__version__}-cuda")


def _component():
    return dsl.component(base_image=IMAGE, install_kfp_package=False)


@_component()
def validate_tokenizers(config_json: str, pipeline_run: str, report: Output[Markdown]) -> bool:
    from kdpipe_kfp.executor import fast_exit

    with fast_exit():
        from kdpipe.steps import validate_tokenizers_step
        from kdpipe_kfp.outputs import write_markdown

        result = validate_tokenizers_step(config_json, pipeline_run)
        write_markdown(report.path, "Tokenizer validation", result)
        return result["match"]


@_component()
def preprocess(config_json: str, pipeline_run: str, dataset: Output[Dataset], metrics: Output[Metrics],
               force: bool = False) -> bool:
    """Returns whether to train (the single Output, for dsl.If): False when config and data are the champion's."""
    from kdpipe_kfp.executor import fast_exit

    with fast_exit():
        from kdpipe.steps import preprocess_step
        from kdpipe_kfp.outputs import log_kfp_metrics

        result = preprocess_step(config_json, pipeline_run, dataset.path, force)
        log_kfp_metrics(metrics, result)
        return result["changed"]


@_component()
def prepare_teacher(config_json: str, pipeline_run: str, dataset: Input[Dataset], teacher: Output[Model],
                    metrics: Output[Metrics]):
    """`teacher` holds the fine-tuned teacher, or (metadata teacher_ref) names the configured one, used as is."""
    from kdpipe_kfp.executor import fast_exit

    with fast_exit():
        from kdpipe.steps import prepare_teacher_step
        from kdpipe_kfp.outputs import log_kfp_metrics

        result = prepare_teacher_step(config_json, pipeline_run, dataset.path, teacher.path)
        log_kfp_metrics(metrics, result)
        teacher.metadata.update({"teacher_ref": result["teacher_ref"], "finetuned": result["finetuned"]})


@_component()
def evaluate_teacher(config_json: str, pipeline_run: str, dataset: Input[Dataset], teacher: Input[Model],
                     teacher_logits: Output[Artifact],
                     metrics: Output[Metrics]) -> NamedTuple("TeacherEval", metrics_json=str):
    from kdpipe_kfp.executor import fast_exit

    with fast_exit():
        import json

        from kdpipe.steps import evaluate_teacher_step
        from kdpipe_kfp.outputs import log_kfp_metrics

        result = evaluate_teacher_step(config_json, pipeline_run, dataset.path, teacher.path,
                                       teacher.metadata.get("teacher_ref", ""), teacher_logits.path)
        log_kfp_metrics(metrics, result)
        return (json.dumps(result["metrics"]),)


@_component()
def hpo_worker(config_json: str, pipeline_run: str, worker: int, dataset: Input[Dataset], teacher: Input[Model],
               teacher_logits: Input[Artifact], metrics: Output[Metrics]):
    from kdpipe_kfp.executor import fast_exit

    with fast_exit():
        from kdpipe.steps import hpo_worker_step
        from kdpipe_kfp.outputs import log_kfp_metrics

        # Inside a ParallelFor, KFP's local runner gives the job name as "<run>/for-loop-N-iteration-K".
        log_kfp_metrics(metrics, hpo_worker_step(config_json, pipeline_run.split("/for-loop-")[0], dataset.path,
                                                 teacher.path, teacher.metadata.get("teacher_ref", ""),
                                                 teacher_logits.path, worker))


@_component()
def hpo_best(config_json: str, pipeline_run: str, dataset: Input[Dataset], given_params_json: str,
             report: Output[HTML], best_model: Output[Model],
             metrics: Output[Metrics]) -> NamedTuple("Best", params_json=str, reuse_model=bool):
    """params_json: the best trial's params over the given ones; reuse_model: `best_model` holds the best trial's
    student (hpo.reuse_best_model), to ship as it is."""
    from kdpipe_kfp.executor import fast_exit

    with fast_exit():
        import json

        from kdpipe.steps import hpo_best_step
        from kdpipe_kfp.outputs import log_kfp_metrics

        result = hpo_best_step(config_json, pipeline_run, dataset.path, report.path, best_model.path, given_params_json)
        log_kfp_metrics(metrics, result)
        return json.dumps(result["params"]), result["reuse_model"]


@_component()
def distill_student(config_json: str, pipeline_run: str, dataset: Input[Dataset], teacher: Input[Model],
                    teacher_logits: Input[Artifact], params_json: str, best_model: Input[Model],
                    reuse_model: bool, student: Output[Model],
                    metrics: Output[Metrics]) -> NamedTuple("Student", latency_ms_b1=float):
    from kdpipe_kfp.executor import fast_exit

    with fast_exit():
        from kdpipe.steps import distill_step
        from kdpipe_kfp.outputs import log_kfp_metrics

        result = distill_step(config_json, pipeline_run, dataset.path, teacher.path, teacher.metadata.get("teacher_ref", ""),
                              teacher_logits.path, student.path, params_json, best_model.path if reuse_model else "")
        log_kfp_metrics(metrics, result)
        return (result["latency_ms_b1"],)


@_component()
def evaluate_gate(config_json: str, pipeline_run: str, dataset: Input[Dataset], student: Input[Model],
                  teacher_logits: Input[Artifact], teacher_metrics_json: str, student_latency_ms: float,
                  report: Output[Markdown],
                  confusion: Output[ClassificationMetrics], metrics: Output[Metrics],
                  decision_json: dsl.OutputPath(str)) -> bool:
    """Returns whether the gate passed (the single Output: KFP's local runner evaluates conditions only on that);
    decision_json carries the decision on to export-register."""
    from kdpipe_kfp.executor import fast_exit

    with fast_exit():
        import json

        from kdpipe.gate import DECISION_KEYS
        from kdpipe.steps import gate_step
        from kdpipe_kfp.outputs import log_kfp_metrics, write_markdown

        result = gate_step(config_json, pipeline_run, dataset.path, student.path, teacher_logits.path,
                           json.loads(teacher_metrics_json), student_latency_ms)
        log_kfp_metrics(metrics, result)
        write_markdown(report.path, "Evaluation gate: " + ("PASSED" if result["passed"] else "FAILED"), result)
        if "confusion_matrix" in result:
            confusion.log_confusion_matrix(result["label_names"], result["confusion_matrix"])
        with open(decision_json, "w") as f:
            json.dump({k: result.get(k) for k in DECISION_KEYS}, f)
        return result["passed"]


@_component()
def export_register(config_json: str, pipeline_run: str, dataset: Input[Dataset], student: Input[Model],
                    decision_json: str, onnx_model: Output[Model], metrics: Output[Metrics]):
    from kdpipe_kfp.executor import fast_exit

    with fast_exit():
        import json

        from kdpipe.steps import export_register_step
        from kdpipe_kfp.outputs import log_kfp_metrics

        result = export_register_step(config_json, pipeline_run, dataset.path, student.path, json.loads(decision_json),
                                      onnx_model.path)
        log_kfp_metrics(metrics, result)
        onnx_model.metadata.update({"registered_model": result["registry"]["registered_model"],
                                    "version": result["registry"]["version"], "framework": "onnx"})


@_component()
def finish_tracking(config_json: str, pipeline_run: str, status: PipelineTaskFinalStatus) -> str:
    from kdpipe_kfp.executor import fast_exit

    with fast_exit():
        from kdpipe.steps import finish_step

        return finish_step(config_json, pipeline_run, status.state, status.error_message or "")
