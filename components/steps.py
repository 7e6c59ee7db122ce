"""One component per step. Bodies only call kdpipe.pipeline_steps and copy numbers into KFP Metrics.

No `from __future__ import annotations` here: KFP reads the real annotation objects."""


import os
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import (HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output,
                     PipelineTaskFinalStatus)

# The one image (docker/). Override at compile time for your registry.
IMAGE = os.environ.get("KDPIPE_IMAGE", "ghcr.io/kdpipe/kdpipe:0.1.0-cpu")
GPU_IMAGE = os.environ.get("KDPIPE_GPU_IMAGE", "ghcr.io/kdpipe/kdpipe:0.1.0-cuda")


def _component(image: str = IMAGE):
    return dsl.component(base_image=image, install_kfp_package=False)


@_component()
def validate_tokenizers(config_json: str, pipeline_run: str, report: Output[Markdown]) -> bool:
    from kdpipe.pipeline_steps import markdown, validate_tokenizers_step

    result = validate_tokenizers_step(config_json, pipeline_run, report.path + ".d")
    markdown(report.path, "Tokenizer validation", result)
    return result["match"]


@_component()
def preprocess(config_json: str, pipeline_run: str, dataset: Output[Dataset], metrics: Output[Metrics]):
    from kdpipe.pipeline_steps import log_kfp_metrics, preprocess_step

    log_kfp_metrics(metrics, preprocess_step(config_json, pipeline_run, dataset.path))


@_component(GPU_IMAGE)
def prepare_teacher(config_json: str, pipeline_run: str, dataset: Input[Dataset], teacher: Output[Model],
                    metrics: Output[Metrics]):
    from kdpipe.pipeline_steps import log_kfp_metrics, prepare_teacher_step

    log_kfp_metrics(metrics, prepare_teacher_step(config_json, pipeline_run, dataset.path, teacher.path))


@_component(GPU_IMAGE)
def evaluate_teacher(config_json: str, pipeline_run: str, dataset: Input[Dataset], teacher: Input[Model],
                     teacher_logits: Output[Artifact], metrics: Output[Metrics]):
    from kdpipe.pipeline_steps import evaluate_teacher_step, log_kfp_metrics

    log_kfp_metrics(metrics, evaluate_teacher_step(config_json, pipeline_run, dataset.path, teacher.path,
                                                   teacher_logits.path))


@_component(GPU_IMAGE)
def hpo_worker(config_json: str, pipeline_run: str, worker: int, dataset: Input[Dataset], teacher: Input[Model],
               teacher_logits: Input[Artifact], trials: Output[Artifact], metrics: Output[Metrics]):
    from kdpipe.pipeline_steps import hpo_worker_step, log_kfp_metrics

    log_kfp_metrics(metrics, hpo_worker_step(config_json, pipeline_run, dataset.path, teacher.path,
                                             teacher_logits.path, trials.path, worker))


@_component()
def hpo_best(config_json: str, pipeline_run: str, dataset: Input[Dataset], given_params_json: str,
             report: Output[HTML], metrics: Output[Metrics]) -> NamedTuple("Best", params_json=str, best_model_dir=str):
    import json
    import shutil
    from collections import namedtuple
    from pathlib import Path

    from kdpipe.pipeline_steps import hpo_best_step, log_kfp_metrics

    result = hpo_best_step(config_json, pipeline_run, dataset.path, report.path + ".d", given_params_json)
    if result["hpo"]:
        shutil.copyfile(Path(report.path + ".d") / "report.html", report.path)
        log_kfp_metrics(metrics, {k: v for k, v in result.items() if k not in ("params", "best_params")})
    else:
        Path(report.path).write_text("<p>HPO is off (hpo.enabled: false): distillation uses the config.</p>")
    return namedtuple("Best", ["params_json", "best_model_dir"])(json.dumps(result["params"]), result["best_model_dir"])


@_component(GPU_IMAGE)
def distill_student(config_json: str, pipeline_run: str, dataset: Input[Dataset], teacher: Input[Model],
                    teacher_logits: Input[Artifact], student: Output[Model], metrics: Output[Metrics],
                    params_json: str = "", reuse_model_dir: str = ""):
    from kdpipe.pipeline_steps import distill_step, log_kfp_metrics

    log_kfp_metrics(metrics, distill_step(config_json, pipeline_run, dataset.path, teacher.path,
                                          teacher_logits.path, student.path, params_json, reuse_model_dir))


@_component()
def evaluate_gate(config_json: str, pipeline_run: str, dataset: Input[Dataset], student: Input[Model],
                  teacher_logits: Input[Artifact], gate: Output[Artifact], report: Output[Markdown],
                  confusion: Output[ClassificationMetrics], metrics: Output[Metrics]) -> bool:
    from kdpipe.pipeline_steps import gate_step, log_kfp_metrics, markdown

    result = gate_step(config_json, pipeline_run, dataset.path, student.path, teacher_logits.path, gate.path)
    log_kfp_metrics(metrics, result)
    markdown(report.path, "Evaluation gate: " + ("PASSED" if result["passed"] else "FAILED"), result)
    if "confusion_matrix" in result:
        confusion.log_confusion_matrix(result["label_names"], result["confusion_matrix"])
    return result["passed"]


@_component()
def export_register(config_json: str, pipeline_run: str, dataset: Input[Dataset], student: Input[Model],
                    gate: Input[Artifact], onnx_model: Output[Model], metrics: Output[Metrics]):
    from kdpipe.pipeline_steps import export_register_step, log_kfp_metrics

    result = export_register_step(config_json, pipeline_run, dataset.path, student.path, gate.path, onnx_model.path)
    log_kfp_metrics(metrics, result)
    onnx_model.metadata.update({"registered_model": result["registry"]["registered_model"],
                                "version": result["registry"]["version"], "framework": "onnx"})


@_component()
def finish_tracking(config_json: str, pipeline_run: str, status: PipelineTaskFinalStatus) -> str:
    from kdpipe.pipeline_steps import finish_step

    return finish_step(config_json, pipeline_run, status.state, status.error_message or "")
