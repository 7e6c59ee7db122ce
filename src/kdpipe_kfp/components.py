"""One component per step, each declared once: `@step_component(...)` gives its task options (does it train:
GPU and GPU image on a cluster; how often KFP retries it), the signature its typed inputs and outputs, and the
body calls the core step of the same name (kdpipe.steps) through `run_step`, then copies the result into the
declared outputs. Everything a later step reads travels as one of those outputs. The pipeline applies every
component's options to its task (kdpipe_kfp.pipeline.StepCaller): caching off, secrets, image, GPU, retries.

A body runs alone in the step's process (KFP ships its source, not this module): it imports what it needs
inside, and imports nothing from this module (in the executor, `kfp.dsl` has no `component`).
No `from __future__ import annotations` here: KFP reads the real annotation objects."""

import os
from dataclasses import dataclass
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
    PipelineTaskFinalStatus,
)

from kdpipe import __version__

# Every step's image (docker/Dockerfile, built by scripts/build-images.sh with this tag). A pipeline placed on GPUs
# runs its training steps in the CUDA image instead (Placement); both can be overridden.
IMAGE = os.environ.get("KDPIPE_IMAGE", f"ghcr.io/kdpipe/kdpipe:{__version__}-cpu")
GPU_IMAGE = os.environ.get("KDPIPE_GPU_IMAGE", f"ghcr.io/kdpipe/kdpipe:{__version__}-cuda")


@dataclass(frozen=True)
class TaskOptions:
    """How the pipeline runs a step's task. `trains`: on the GPUs of the placement, in its GPU image; `retries`:
    KFP retries after a failure a retry can fix (a lost node; bad input ends the step's later attempts at once)."""

    trains: bool = False
    retries: int = 0
    backoff: str = "60s"


# Component name (as KFP names it: distill-student) -> the component, and its task options.
COMPONENTS: dict = {}
OPTIONS: dict[str, TaskOptions] = {}


def step_component(trains: bool = False, retries: int = 0, backoff: str = "60s"):
    """Declare a step's component: a lightweight component on kdpipe's image, and its task options."""

    def wrap(fn):
        component = dsl.component(base_image=IMAGE, install_kfp_package=False)(fn)
        COMPONENTS[component.name] = component
        OPTIONS[component.name] = TaskOptions(trains, retries, backoff)
        return component

    return wrap


@step_component()
def validate_tokenizers(config_json: str, pipeline_run: str, report: Output[Markdown]) -> bool:
    """Teacher and student load safely and tokenize alike: the first step, never retried."""
    from kdpipe_kfp.executor import run_step
    from kdpipe_kfp.outputs import write_markdown

    result = run_step("validate_tokenizers", config_json, pipeline_run)
    write_markdown(report.path, "Tokenizer validation", result)
    return result["match"]


@step_component()
def preprocess(config_json: str, pipeline_run: str, dataset: Output[Dataset], metrics: Output[Metrics],
               force: bool = False) -> bool:
    """Returns whether to train (the single Output, for dsl.If): False when config and data are the champion's."""
    from kdpipe_kfp.executor import run_step

    return run_step("preprocess", config_json, pipeline_run, dataset.path, force, metrics=metrics)["changed"]


@step_component(trains=True, retries=2)
def prepare_teacher(config_json: str, pipeline_run: str, dataset: Input[Dataset], teacher: Output[Model],
                    metrics: Output[Metrics], report: Output[Markdown], force: bool = False):
    """`teacher` holds the teacher fine-tuned here, or (metadata teacher_ref) names the one to use as is: the
    configured teacher, or the registered version an earlier run fine-tuned with the same key. `report`: its
    learning curve (and search trials), or why none was fine-tuned."""
    from kdpipe_kfp.executor import run_step

    result = run_step("prepare_teacher", config_json, pipeline_run, dataset.path, teacher.path, force, report.path,
                      metrics=metrics)
    teacher.metadata.update({"teacher_ref": result["teacher_ref"], "finetuned": result["finetuned"],
                             "reused": result["reused"], "teacher_digest": result["teacher_digest"]})


@step_component(trains=True, retries=2)
def teacher_shard(config_json: str, pipeline_run: str, shard: int, dataset: Input[Dataset], teacher: Input[Model],
                  metrics: Output[Metrics]):
    """One task of the sharded teacher pass: its share of the missing rows' logits, into the logit store."""
    from kdpipe_kfp.executor import run_step

    run_step("teacher_shard", config_json, pipeline_run, dataset.path, teacher.path,
             teacher.metadata.get("teacher_ref", ""), shard, teacher.metadata.get("teacher_digest", ""),
             metrics=metrics)


@step_component(trains=True)
def evaluate_teacher(config_json: str, pipeline_run: str, dataset: Input[Dataset], teacher: Input[Model],
                     teacher_logits: Output[Artifact],
                     metrics: Output[Metrics]) -> NamedTuple("TeacherEval", metrics_json=str):
    """The teacher's logits on every row (stored ones reused, the shards' found in the store, the rest computed)
    and its metrics."""
    import json

    from kdpipe_kfp.executor import run_step

    result = run_step("evaluate_teacher", config_json, pipeline_run, dataset.path, teacher.path,
                      teacher.metadata.get("teacher_ref", ""), teacher_logits.path,
                      teacher.metadata.get("teacher_digest", ""), metrics=metrics)
    return (json.dumps(result["metrics"]),)


@step_component(trains=True, retries=2)
def hpo_worker(config_json: str, pipeline_run: str, worker: int, dataset: Input[Dataset], teacher: Input[Model],
               teacher_logits: Input[Artifact], metrics: Output[Metrics]):
    from kdpipe_kfp.executor import run_step

    run_step("hpo_worker", config_json, pipeline_run, dataset.path, teacher.path,
             teacher.metadata.get("teacher_ref", ""), teacher_logits.path, worker, metrics=metrics)


@step_component()
def hpo_best(config_json: str, pipeline_run: str, dataset: Input[Dataset], given_params_json: str,
             report: Output[HTML], best_model: Output[Model],
             metrics: Output[Metrics]) -> NamedTuple("Best", params_json=str, reuse_model=bool):
    """params_json: the best trial's params over the given ones; reuse_model: `best_model` holds the best trial's
    student (hpo.reuse_best_model), to ship as it is."""
    import json

    from kdpipe_kfp.executor import run_step

    result = run_step("hpo_best", config_json, pipeline_run, dataset.path, report.path, best_model.path,
                      given_params_json, metrics=metrics)
    return json.dumps(result["params"]), result["reuse_model"]


@step_component(trains=True, retries=2)
def distill_student(config_json: str, pipeline_run: str, dataset: Input[Dataset], teacher: Input[Model],
                    teacher_logits: Input[Artifact], params_json: str, best_model: Input[Model],
                    reuse_model: bool, student: Output[Model],
                    metrics: Output[Metrics]) -> NamedTuple("Student", latency_ms_b1=float):
    from kdpipe_kfp.executor import run_step

    result = run_step("distill_student", config_json, pipeline_run, dataset.path, teacher.path,
                      teacher.metadata.get("teacher_ref", ""), teacher_logits.path, student.path, params_json,
                      best_model.path if reuse_model else "", metrics=metrics)
    return (result["latency_ms_b1"],)


@step_component()
def evaluate_gate(config_json: str, pipeline_run: str, dataset: Input[Dataset], student: Input[Model],
                  teacher_logits: Input[Artifact], teacher_metrics_json: str, student_latency_ms: float,
                  report: Output[Markdown],
                  confusion: Output[ClassificationMetrics], metrics: Output[Metrics],
                  decision_json: dsl.OutputPath(str)) -> bool:
    """Returns whether the gate passed (the single Output: KFP's local runner evaluates conditions only on that);
    decision_json carries the decision on to export-register."""
    import json

    from kdpipe.gate import GateDecision
    from kdpipe_kfp.executor import run_step
    from kdpipe_kfp.outputs import write_markdown

    result = run_step("evaluate_gate", config_json, pipeline_run, dataset.path, student.path, teacher_logits.path,
                      json.loads(teacher_metrics_json), student_latency_ms, metrics=metrics)
    write_markdown(report.path, "Evaluation gate: " + ("PASSED" if result["passed"] else "FAILED"), result)
    if "confusion_matrix" in result:
        confusion.log_confusion_matrix(result["label_names"], result["confusion_matrix"])
    with open(decision_json, "w") as f:
        f.write(GateDecision.from_result(result).to_json())
    return result["passed"]


@step_component(retries=1, backoff="30s")
def export_register(config_json: str, pipeline_run: str, dataset: Input[Dataset], student: Input[Model],
                    teacher_logits: Input[Artifact], decision_json: str, onnx_model: Output[Model],
                    metrics: Output[Metrics]):
    from kdpipe.gate import GateDecision
    from kdpipe_kfp.executor import run_step

    result = run_step("export_register", config_json, pipeline_run, dataset.path, student.path, teacher_logits.path,
                      GateDecision.from_json(decision_json), onnx_model.path, metrics=metrics)
    onnx_model.metadata.update({"registered_model": result["registry"]["registered_model"],
                                "version": result["registry"]["version"], "framework": "onnx"})


@step_component()
def finish_tracking(config_json: str, pipeline_run: str, status: PipelineTaskFinalStatus) -> str:
    """The exit handler: ends the pipeline's MLflow run as the pipeline ended."""
    from kdpipe_kfp.executor import run_step

    return run_step("finish_tracking", config_json, pipeline_run, status.state, status.error_message or "")
