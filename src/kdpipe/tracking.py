"""MLflow: one parent run per pipeline run, one child run per step, the Model Registry with aliases.

Steps run in separate processes (pods), so the parent is found by its tag `kdpipe.pipeline_run`, created by
the first step that needs it. Credentials come from the environment (MLFLOW_TRACKING_USERNAME/PASSWORD or
TOKEN, from a Kubernetes Secret), never from the config.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from kdpipe import __version__
from kdpipe.errors import KdpipeError

RUN_TAG, ROLE_TAG, ERROR_TAG = "kdpipe.pipeline_run", "kdpipe.role", "kdpipe.error"


def _mlflow(cfg):
    import mlflow

    mlflow.set_tracking_uri(cfg.tracking.uri)
    return mlflow


def experiment_id(cfg) -> str:
    mlflow = _mlflow(cfg)
    exp = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if cfg.tracking.uri.startswith("sqlite:///"):
        # Keep artifacts beside the SQLite file, not in whatever directory a step happens to run in.
        location = (Path(urlsplit(cfg.tracking.uri).path).parent / "mlartifacts").resolve().as_uri()
    try:
        return mlflow.create_experiment(cfg.tracking.experiment, artifact_location=location)
    except Exception:  # created meanwhile by a parallel step
        return mlflow.get_experiment_by_name(cfg.tracking.experiment).experiment_id


def code_version() -> str:
    sha = os.environ.get("KDPIPE_GIT_SHA")
    if not sha:
        try:
            sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                                 cwd=Path(__file__).parent).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def find_parent(cfg, pipeline_run: str):
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(cfg.tracking.uri).search_runs(
        [experiment_id(cfg)], filter_string=f"tags.`{RUN_TAG}` = '{pipeline_run}' and tags.`{ROLE_TAG}` = 'pipeline'",
        order_by=["attributes.start_time ASC"], max_results=1)
    return runs[0] if runs else None


def parent_run_id(cfg, pipeline_run: str) -> str:
    from mlflow.tracking import MlflowClient

    found = find_parent(cfg, pipeline_run)
    if found:
        return found.info.run_id
    client = MlflowClient(cfg.tracking.uri)
    run = client.create_run(experiment_id(cfg), run_name=pipeline_run, tags={
        RUN_TAG: pipeline_run, ROLE_TAG: "pipeline", "kdpipe.config_hash": cfg.hash(),
        "kdpipe.code_version": code_version(), "mlflow.source.name": "kdpipe"})
    for key, value in flatten(cfg.to_dict()).items():
        client.log_param(run.info.run_id, key, str(value)[:6000])
    return run.info.run_id


def tag_parent(cfg, pipeline_run: str, tags: dict) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking.uri)
    run_id = parent_run_id(cfg, pipeline_run)
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


@contextlib.contextmanager
def step_run(cfg, pipeline_run: str, step: str):
    """A child run for one step; a failure is recorded on it (tag kdpipe.error, status FAILED) and re-raised."""
    mlflow = _mlflow(cfg)
    parent = parent_run_id(cfg, pipeline_run)
    with mlflow.start_run(run_name=step, experiment_id=experiment_id(cfg), parent_run_id=parent,
                          tags={RUN_TAG: pipeline_run, ROLE_TAG: step}) as run:
        try:
            yield run
        except Exception as e:
            mlflow.set_tag(ERROR_TAG, f"{type(e).__name__}: {e}"[:5000])
            if isinstance(e, KdpipeError):
                # Bad input or setting: the message says what to do; a library traceback would only bury it.
                mlflow.end_run("FAILED")
                raise SystemExit(f"kdpipe: {type(e).__name__}: {e}") from None
            raise


def numbers(result: dict) -> dict[str, float]:
    """The numeric leaves of a step result, under flat dotted names (booleans are not numbers here)."""
    return {k: float(v) for k, v in flatten(result).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_result(result: dict) -> None:
    """Numbers become metrics; everything else stays in the step's JSON artifact."""
    import mlflow

    metrics = numbers(result)
    if metrics:
        mlflow.log_metrics({k.replace("@", "_"): v for k, v in metrics.items()})


def finish_parent(cfg, pipeline_run: str, succeeded: bool, error: str | None = None) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking.uri)
    run_id = parent_run_id(cfg, pipeline_run)
    if not succeeded:
        failed = [r for r in child_runs(cfg, run_id) if r.data.tags.get(ERROR_TAG)]
        message = failed[0].data.tags[ERROR_TAG] if failed else (error or "pipeline failed")
        client.set_tag(run_id, ERROR_TAG, message[:5000])
    client.set_terminated(run_id, "FINISHED" if succeeded else "FAILED")
    return run_id


def child_runs(cfg, parent_id: str) -> list:
    from mlflow.tracking import MlflowClient

    return MlflowClient(cfg.tracking.uri).search_runs(
        [experiment_id(cfg)], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
        order_by=["attributes.start_time ASC"], max_results=1000)


# ---------------------------------------------------------------- registry

def champion_metric(cfg, metric: str) -> float | None:
    """The gate metric of the version holding the `champion` alias, if any."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking.uri)
    try:
        version = client.get_model_version_by_alias(cfg.tracking.registered_model, "champion")
    except MlflowException:
        return None
    run = client.get_run(version.run_id)
    if run.data.tags.get("kdpipe.gate_metric") != metric:
        return None
    return run.data.metrics.get("gate_metric_value")


def register_onnx(cfg, onnx_dir: str | Path, gate: dict) -> dict:
    """Log the exported model (ONNX flavor, signature, input example, tokenizer files alongside) into the
    active run, register a version, alias it `challenger` (and `champion` when the gate says so).
    A failure part-way deletes the new version: nothing half-registered is left."""
    import mlflow
    import numpy as np
    import onnx
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    from kdpipe.export import FP32, session

    onnx_dir = Path(onnx_dir)
    sess = session(onnx_dir / FP32)
    example = {i.name: np.array([[101, 7592, 2088, 102]], dtype=np.int64) if i.name == "input_ids"
               else (np.ones if i.name == "attention_mask" else np.zeros)((1, 4), dtype=np.int64)
               for i in sess.get_inputs()}
    outputs = dict(zip(["logits", "probabilities"], sess.run(["logits", "probabilities"], example)))
    name = cfg.tracking.registered_model
    client = MlflowClient(cfg.tracking.uri)
    mlflow.set_tag("kdpipe.gate_metric", gate["metric"])
    mlflow.log_metric("gate_metric_value", gate["value"])
    info = mlflow.onnx.log_model(onnx.load(str(onnx_dir / FP32)), name="model", registered_model_name=name,
                                 signature=infer_signature(example, outputs), input_example=example,
                                 onnx_execution_providers=["CPUExecutionProvider"])
    version = str(info.registered_model_version)
    try:
        mlflow.log_artifacts(str(onnx_dir), artifact_path="onnx_package")  # tokenizer, int8 model, export.json
        client.set_registered_model_alias(name, "challenger", version)
        if gate.get("promote_to_champion"):
            client.set_registered_model_alias(name, "champion", version)
        client.set_model_version_tag(name, version, "kdpipe.gate", "passed")
    except Exception:
        client.delete_model_version(name, version)
        raise
    aliases = ["challenger"] + (["champion"] if gate.get("promote_to_champion") else [])
    return {"registered_model": name, "version": version, "aliases": aliases, "model_uri": info.model_uri}
