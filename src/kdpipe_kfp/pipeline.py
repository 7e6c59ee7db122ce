"""The DAG. Wiring only: every step's logic lives in kdpipe.steps, its inputs, outputs and task options are
declared once by its component (kdpipe_kfp.components), and `StepCaller` applies those options to every task."""

from dataclasses import dataclass, field
from pathlib import Path

from kfp import dsl

from kdpipe_kfp.components import (
    COMPONENTS,
    GPU_IMAGE,
    IMAGE,
    OPTIONS,
    distill_student,
    evaluate_gate,
    evaluate_teacher,
    export_register,
    finish_tracking,
    hpo_best,
    hpo_worker,
    prepare_teacher,
    preprocess,
    teacher_shard,
    validate_tokenizers,
)

RUN = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
# Credentials reach the steps only as environment variables from a Kubernetes Secret (k8s/base).
SECRET_KEYS = ("MLFLOW_TRACKING_TOKEN", "HF_TOKEN", "OPTUNA_STORAGE")


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


@dataclass
class StepCaller:
    """Calls a step's component with the inputs every step takes (the config, the pipeline run's name) and sets
    its task up as its component declares: caching off (every step writes its MLflow run; a cached step would
    skip that), the Secret's keys as environment, its image, GPUs when it trains, its retries."""

    config_json: object
    placement: Placement
    secret: str

    def __call__(self, component, **inputs):
        task = component(config_json=self.config_json, pipeline_run=RUN, **inputs)
        options = OPTIONS[component.name]
        task.set_caching_options(False)
        if self.secret:
            from kfp import kubernetes

            kubernetes.use_secret_as_env(task, self.secret, {k: k for k in SECRET_KEYS}, optional=True)
        on_gpu = options.trains and self.placement.on_gpu
        task.set_container_image(self.placement.gpu_image if on_gpu else self.placement.image)
        if on_gpu:
            from kfp import kubernetes

            task.set_accelerator_type(self.placement.accelerator).set_accelerator_limit(self.placement.gpus)
            for key, value in self.placement.node_selector.items():
                kubernetes.add_node_selector(task, key, value)
            for toleration in self.placement.tolerations:
                kubernetes.add_toleration(task, **toleration)
        if options.retries:
            task.set_retry(num_retries=options.retries, backoff_duration=options.backoff)
        return task


def make_pipeline(placement: Placement = Placement(), secret: str = "kdpipe-mlflow"):
    """The pipeline, its steps placed by `placement`; `secret` ("" for none) feeds credentials."""

    @dsl.pipeline(name="kdpipe", description="Distil a fine-tuned transformer classifier into a small student, "
                                             "gate it, export verified ONNX and register it in MLflow.")
    def kdpipe(config_json: str, distill_params_json: str = "", hpo_workers: list = [],  # noqa: B006 (KFP default)
               force: bool = False, teacher_shards: list = []):  # noqa: B006 (KFP default)
        step = StepCaller(config_json, placement, secret)
        finish = step(finish_tracking)
        with dsl.ExitHandler(finish, name="tracked-run"):
            tokens = step(validate_tokenizers)
            data = step(preprocess, force=force).after(tokens)
            dataset = data.outputs["dataset"]
            # Nothing to train when config and data are the champion's (a nightly schedule on unchanged data).
            with dsl.If(data.outputs["Output"] == True, name="changed"):  # noqa: E712 (a KFP condition)
                teacher = {"teacher": step(prepare_teacher, dataset=dataset, force=force).outputs["teacher"]}
                # The teacher's pass over the rows the logit store lacks: one task per item of teacher_shards
                # (kdpipe run sets [0..teacher.shards-1]; [] = one shard, done by evaluate-teacher itself), each
                # on the GPU pool; evaluate-teacher then finds their rows in the store.
                with dsl.ParallelFor(teacher_shards, name="teacher-shards") as shard:
                    shards = step(teacher_shard, shard=shard, dataset=dataset, **teacher)
                teval = step(evaluate_teacher, dataset=dataset, **teacher).after(shards)
                logits = teval.outputs["teacher_logits"]
                # HPO: one worker task per item of hpo_workers (kdpipe run sets [0..hpo.workers-1]; [] = off), all on
                # one Optuna study; then the best trial's params go to the final distillation.
                with dsl.ParallelFor(hpo_workers, name="hpo-workers") as worker:
                    search = step(hpo_worker, worker=worker, dataset=dataset, teacher_logits=logits, **teacher)
                best = step(hpo_best, dataset=dataset, given_params_json=distill_params_json).after(search)
                student = step(distill_student, dataset=dataset, teacher_logits=logits,
                               params_json=best.outputs["params_json"], best_model=best.outputs["best_model"],
                               reuse_model=best.outputs["reuse_model"], **teacher)
                gate = step(evaluate_gate, dataset=dataset, student=student.outputs["student"],
                            teacher_logits=logits, teacher_metrics_json=teval.outputs["metrics_json"],
                            student_latency_ms=student.outputs["latency_ms_b1"])
                with dsl.If(gate.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition)
                    step(export_register, dataset=dataset, student=student.outputs["student"],
                         teacher_logits=logits, decision_json=gate.outputs["decision_json"])

    return kdpipe


kdpipe_pipeline = make_pipeline()


def compile_pipeline(path: str | Path, placement: Placement = Placement()) -> Path:
    from kfp import compiler

    compiler.Compiler().compile(make_pipeline(placement), str(path))
    return Path(path)


def compile_components(folder: str | Path) -> list[Path]:
    """Each step's component spec, `<step>.yaml` (for kfp.components.load_component_from_file: a step reused in
    a pipeline of your own)."""
    from kfp import compiler

    Path(folder).mkdir(parents=True, exist_ok=True)
    paths = [Path(folder) / f"{name.replace('-', '_')}.yaml" for name in COMPONENTS]
    for path, component in zip(paths, COMPONENTS.values()):
        compiler.Compiler().compile(component, str(path))
    return paths
