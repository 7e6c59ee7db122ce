"""The DAG. Wiring only: every step's logic lives in kdpipe.steps, every output is declared by its component."""


from pathlib import Path

from kfp import dsl

from kdpipe_kfp.components import (distill_student, evaluate_gate, evaluate_teacher, export_register,
                                   finish_tracking, hpo_best, hpo_worker, prepare_teacher, preprocess,
                                   validate_tokenizers)

COMPILED = Path(__file__).with_name("kdpipe_pipeline.yaml")
RUN = dsl.PIPELINE_JOB_NAME_PLACEHOLDER


def _on_gpu(task, accelerator: str, count: int):
    if accelerator and count:
        task.set_accelerator_type(accelerator).set_accelerator_limit(count)
    return task


def _with_secrets(task, secret: str):
    """Credentials reach the steps only as environment variables from a Kubernetes Secret (k8s/base)."""
    if secret:
        from kfp import kubernetes

        kubernetes.use_secret_as_env(task, secret, {"MLFLOW_TRACKING_TOKEN": "MLFLOW_TRACKING_TOKEN",
                                                    "HF_TOKEN": "HF_TOKEN", "OPTUNA_STORAGE": "OPTUNA_STORAGE"},
                                     optional=True)
    return task


def make_pipeline(accelerator: str = "nvidia.com/gpu", gpus: int = 1, secret: str = "kdpipe-mlflow"):
    """The pipeline; GPU steps (teacher fine-tuning, teacher logits, distillation) ask for `gpus` of
    `accelerator` (accelerator="" compiles a CPU-only pipeline); `secret` ("" for none) feeds credentials."""

    @dsl.pipeline(name="kdpipe", description="Distil a fine-tuned transformer classifier into a small student, "
                                             "gate it, export verified ONNX and register it in MLflow.")
    def kdpipe(config_json: str, distill_params_json: str = "", hpo_workers: list = []):  # noqa: B006 (KFP default)
        finish = finish_tracking(config_json=config_json, pipeline_run=RUN)
        with dsl.ExitHandler(finish, name="tracked-run"):
            tokens = validate_tokenizers(config_json=config_json, pipeline_run=RUN)
            data = preprocess(config_json=config_json, pipeline_run=RUN).after(tokens)
            dataset = data.outputs["dataset"]
            teacher = _on_gpu(prepare_teacher(config_json=config_json, pipeline_run=RUN, dataset=dataset),
                              accelerator, gpus)
            teacher_in = {"teacher": teacher.outputs["teacher"]}  # its metadata says whether it is the model itself
            teval = _on_gpu(evaluate_teacher(config_json=config_json, pipeline_run=RUN, dataset=dataset, **teacher_in),
                            accelerator, gpus)
            logits = teval.outputs["teacher_logits"]
            # HPO: one worker task per item of hpo_workers (kdpipe run sets [0..hpo.workers-1]; [] = off), all on
            # one Optuna study; then the best trial's params go to the final distillation.
            with dsl.ParallelFor(hpo_workers, name="hpo-workers") as worker:
                search = _on_gpu(hpo_worker(config_json=config_json, pipeline_run=RUN, worker=worker, dataset=dataset,
                                            teacher_logits=logits, **teacher_in), accelerator, gpus)
            best = hpo_best(config_json=config_json, pipeline_run=RUN, dataset=dataset,
                            given_params_json=distill_params_json).after(search)
            student = _on_gpu(distill_student(config_json=config_json, pipeline_run=RUN, dataset=dataset,
                                              teacher_logits=logits, params_json=best.outputs["params_json"],
                                              best_model=best.outputs["best_model"],
                                              reuse_model=best.outputs["reuse_model"], **teacher_in), accelerator, gpus)
            gate = evaluate_gate(config_json=config_json, pipeline_run=RUN, dataset=dataset,
                                 student=student.outputs["student"],
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
            for task in (tokens, data, teacher, teval, search, best, student, gate, register):
                task.set_caching_options(False)
                _with_secrets(task, secret)
        _with_secrets(finish.set_caching_options(False), secret)

    return kdpipe


kdpipe_pipeline = make_pipeline()


def compile_pipeline(path: str | Path = COMPILED, accelerator: str = "nvidia.com/gpu", gpus: int = 1) -> Path:
    from kfp import compiler

    compiler.Compiler().compile(make_pipeline(accelerator, gpus), str(path))
    return Path(path)
