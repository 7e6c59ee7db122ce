"""The DAG. Wiring only: every step's logic lives in kdpipe.steps, every output is declared by its component."""

from dataclasses import dataclass, field
from pathlib import Path

from kfp import dsl

from kdpipe_kfp.components import (distill_student, evaluate_gate, evaluate_teacher, export_register,
                                   finish_tracking, hpo_best, hpo_worker, prepare_teacher, preprocess,
                                   validate_tokenizers)
from kdpipe_kfp.components.steps import GPU_IMAGE, IMAGE

COMPILED = Path(__file__).with_name("kdpipe_pipeline.yaml")
RUN = dsl.PIPELINE_JOB_NAME_PLACEHOLDER


@dataclass(frozen=True)
class Placement:
    """Where the steps run, chosen at compile/submit time. The training steps (teacher fine-tuning, teacher
    logits, HPO trials, distillation) ask for `gpus` of `accelerator` on nodes matching `node_selector` and
    tolerating `tolerations` (Kubernetes toleration fields), in `gpu_image`; the others run in `image`.
    accelerator "" or gpus 0: every step on CPU, in `image`."""

    accelerator: str = "nvidia.com/gpu"
    gpus: int = 1
    node_selector: dict = field(default_factory=dict)
    tolerations: tuple = ()
    image: str = IMAGE
    gpu_image: str = GPU_IMAGE

    @property
    def on_gpu(self) -> bool:
        return bool(self.accelerator and self.gpus)


CPU_ONLY = Placement(accelerator="", gpus=0)


def _on_gpu(task, placement: Placement):
    if placement.on_gpu:
        from kfp import kubernetes

        task.set_accelerator_type(placement.accelerator).set_accelerator_limit(placement.gpus)
        for key, value in placement.node_selector.items():
            kubernetes.add_node_selector(task, key, value)
        for toleration in placement.tolerations:
            kubernetes.add_toleration(task, **toleration)
    return task


def _with_secrets(task, secret: str):
    """Credentials reach the steps only as environment variables from a Kubernetes Secret (k8s/base)."""
    if secret:
        from kfp import kubernetes

        kubernetes.use_secret_as_env(task, secret, {"MLFLOW_TRACKING_TOKEN": "MLFLOW_TRACKING_TOKEN",
                                                    "HF_TOKEN": "HF_TOKEN", "OPTUNA_STORAGE": "OPTUNA_STORAGE"},
                                     optional=True)
    return task


def make_pipeline(placement: Placement = Placement(), secret: str = "kdpipe-mlflow"):
    """The pipeline, its steps placed by `placement`; `secret` ("" for none) feeds credentials."""

    @dsl.pipeline(name="kdpipe", description="Distil a fine-tuned transformer classifier into a small student, "
                                             "gate it, export verified ONNX and register it in MLflow.")
    def kdpipe(config_json: str, distill_params_json: str = "", hpo_workers: list = [],  # noqa: B006 (KFP default)
               force: bool = False):
        finish = finish_tracking(config_json=config_json, pipeline_run=RUN)
        with dsl.ExitHandler(finish, name="tracked-run"):
            tokens = validate_tokenizers(config_json=config_json, pipeline_run=RUN)
            data = preprocess(config_json=config_json, pipeline_run=RUN, force=force).after(tokens)
            dataset = data.outputs["dataset"]
            # Nothing to train when config and data are the champion's (a nightly schedule on unchanged data).
            with dsl.If(data.outputs["Output"] == True, name="changed"):  # noqa: E712 (a KFP condition)
                teacher = _on_gpu(prepare_teacher(config_json=config_json, pipeline_run=RUN, dataset=dataset),
                                  placement)
                teacher_in = {"teacher": teacher.outputs["teacher"]}  # its metadata: is it the model itself
                teval = _on_gpu(evaluate_teacher(config_json=config_json, pipeline_run=RUN, dataset=dataset,
                                                 **teacher_in), placement)
                logits = teval.outputs["teacher_logits"]
                # HPO: one worker task per item of hpo_workers (kdpipe run sets [0..hpo.workers-1]; [] = off), all on
                # one Optuna study; then the best trial's params go to the final distillation.
                with dsl.ParallelFor(hpo_workers, name="hpo-workers") as worker:
                    search = _on_gpu(hpo_worker(config_json=config_json, pipeline_run=RUN, worker=worker,
                                                dataset=dataset, teacher_logits=logits, **teacher_in), placement)
                best = hpo_best(config_json=config_json, pipeline_run=RUN, dataset=dataset,
                                given_params_json=distill_params_json).after(search)
                student = _on_gpu(distill_student(config_json=config_json, pipeline_run=RUN, dataset=dataset,
                                                  teacher_logits=logits, params_json=best.outputs["params_json"],
                                                  best_model=best.outputs["best_model"],
                                                  reuse_model=best.outputs["reuse_model"], **teacher_in), placement)
                gate = evaluate_gate(config_json=config_json, pipeline_run=RUN, dataset=dataset,
                                     student=student.outputs["student"], teacher_logits=logits,
                                     teacher_metrics_json=teval.outputs["metrics_json"],
                                     student_latency_ms=student.outputs["latency_ms_b1"])
                with dsl.If(gate.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition)
                    register = export_register(config_json=config_json, pipeline_run=RUN, dataset=dataset,
                                               student=student.outputs["student"],
                                               decision_json=gate.outputs["decision_json"])
            # A retry can fix a lost node, not bad input (a step failing on bad input exits with its message).
            for task in (teacher, search, student):
                task.set_retry(num_retries=2, backoff_duration="60s")
            register.set_retry(num_retries=1, backoff_duration="30s")
            # Every step writes to MLflow (its child run of this pipeline run): a cached step would skip that.
            training = (teacher, teval, search, student)
            for task in (tokens, data, teacher, teval, search, best, student, gate, register):
                task.set_caching_options(False)
                _with_secrets(task, secret)
                on_gpu = placement.on_gpu and any(task is t for t in training)
                task.set_container_image(placement.gpu_image if on_gpu else placement.image)
        _with_secrets(finish.set_caching_options(False), secret).set_container_image(placement.image)

    return kdpipe


kdpipe_pipeline = make_pipeline()


def compile_pipeline(path: str | Path = COMPILED, placement: Placement = Placement()) -> Path:
    from kfp import compiler

    compiler.Compiler().compile(make_pipeline(placement), str(path))
    return Path(path)
