"""The MLflow Model Registry: a verified model registered as a version with aliases (`challenger`, and `champion`
when it beats the current one), moved by compare-and-set so that racing runs leave the better model champion."""

from __future__ import annotations

import contextlib
from pathlib import Path

from kdpipe.tracking import mlflow_client


def champion(cfg, metric: str) -> tuple[str | None, float | None]:
    """The version holding the `champion` alias and its gate metric (None when it was judged on another metric)."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(cfg)
    try:
        version = client.get_model_version_by_alias(cfg.tracking.registered_model, "champion")
    except MlflowException:
        return None, None
    run = client.get_run(version.run_id)
    value = run.data.metrics.get("gate_metric_value") if run.data.tags.get("kdpipe.gate_metric") == metric else None
    return str(version.version), value


LOCK_SUFFIX = ".kdpipe-lock"


@contextlib.contextmanager
def registry_lock(cfg, name: str, wait_s: float = 120, lease_s: float = 60):
    """A mutex over any MLflow store: creating a registered model is atomic (its name is unique in every backend),
    so the run that creates `<name>.kdpipe-lock` holds the lock and deletes it after. A lock older than its lease
    was left by a dead process and is broken."""
    import random
    import time

    from mlflow.exceptions import MlflowException

    client, lock = mlflow_client(cfg), name + LOCK_SUFFIX
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.create_registered_model(lock, tags={"expires": str(time.time() + lease_s)},
                                           description="kdpipe: a run is moving this model's aliases")
            break
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        try:
            held = client.get_registered_model(lock).tags
            if float(held.get("expires", "inf")) < time.time():
                client.delete_registered_model(lock)  # its holder died inside the lock
                continue
        except MlflowException:
            continue  # released meanwhile
        if time.monotonic() > deadline:
            raise TimeoutError(f"registered model {name!r}: another run held {lock!r} for over {wait_s:.0f} s")
        time.sleep(0.05 + random.random() * 0.2)
    try:
        yield
    finally:
        client.delete_registered_model(lock)


def take_champion_if_better(cfg, version: str, gate: dict) -> dict:
    """Compare-and-set of the `champion` alias: the gate judged the champion it saw; if another run moved the
    alias since, decide again against the new champion. Under registry_lock, so of two runs registering at once
    the better one ends as champion."""
    from kdpipe.gate import beats_champion

    name, metric, judged = cfg.tracking.registered_model, gate["metric"], gate.get("champion_version")
    with registry_lock(cfg, name):
        current, current_value = champion(cfg, metric)
        promote = bool(gate.get("promote_to_champion"))
        if current != judged:
            promote = gate["passed"] and beats_champion(gate["value"], current_value,
                                                        cfg.gate.min_improvement_over_champion)
        if promote:
            mlflow_client(cfg).set_registered_model_alias(name, "champion", version)
    return {"promoted": promote, "judged_champion": judged, "champion_before": current,
            "decided_again": current != judged}


def register_onnx(cfg, onnx_dir: str | Path, gate: dict) -> dict:
    """Log the exported model (ONNX flavor, signature, input example, tokenizer files alongside) into the
    active run, register a version, alias it `challenger` (and `champion` when the gate says so).
    A failure part-way deletes the new version: nothing half-registered is left."""
    import mlflow
    import numpy as np
    import onnx
    from mlflow.models import infer_signature

    from kdpipe.export import FP32, session

    onnx_dir = Path(onnx_dir)
    sess = session(onnx_dir / FP32)
    example = {i.name: np.array([[101, 7592, 2088, 102]], dtype=np.int64) if i.name == "input_ids"
               else (np.ones if i.name == "attention_mask" else np.zeros)((1, 4), dtype=np.int64)
               for i in sess.get_inputs()}
    outputs = dict(zip(["logits", "probabilities"], sess.run(["logits", "probabilities"], example)))
    name = cfg.tracking.registered_model
    client = mlflow_client(cfg)
    mlflow.set_tag("kdpipe.gate_metric", gate["metric"])
    mlflow.log_metric("gate_metric_value", gate["value"])
    info = mlflow.onnx.log_model(onnx.load(str(onnx_dir / FP32)), name="model", registered_model_name=name,
                                 signature=infer_signature(example, outputs), input_example=example,
                                 onnx_execution_providers=["CPUExecutionProvider"])
    version = str(info.registered_model_version)
    try:
        mlflow.log_artifacts(str(onnx_dir), artifact_path="onnx_package")  # tokenizer, int8 model, export.json
        client.set_registered_model_alias(name, "challenger", version)
        client.set_model_version_tag(name, version, "kdpipe.gate", "passed")
        decision = take_champion_if_better(cfg, version, gate)
    except Exception:
        client.delete_model_version(name, version)
        raise
    aliases = ["challenger"] + (["champion"] if decision["promoted"] else [])
    return {"registered_model": name, "version": version, "aliases": aliases, "model_uri": info.model_uri,
            "champion": decision}
