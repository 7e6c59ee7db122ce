"""The MLflow Model Registry: a verified model registered as a version with aliases (`challenger`, and `champion`
when it beats the current one), moved by compare-and-set so that racing runs leave the better model champion."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from kdpipe.tracking import client_for, mlflow_client


LOCK_SUFFIX = ".kdpipe-lock"


@contextlib.contextmanager
def registry_lock(uri: str, name: str, wait_s: float = 120, lease_s: float = 60):
    """A mutex over any MLflow store: creating a registered model is atomic (its name is unique in every backend),
    so the run that creates `<name>.kdpipe-lock` holds the lock and deletes it after. A lock older than its lease
    was left by a dead process and is broken."""
    import random
    import time

    from mlflow.exceptions import MlflowException

    client, lock = client_for(uri), name + LOCK_SUFFIX
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


def take_champion_if_better(cfg, version: str, gate: dict, rejudge) -> dict:
    """Compare-and-set of the `champion` alias: the gate judged the champion it saw; if another run moved the
    alias since, `rejudge(current_version) -> (promote, reason)` decides again against the new champion
    (re-scored on this run's rows). Under registry_lock, so of two runs registering at once the better one ends
    as champion. The version's decision and its reason (the one that decided) are tagged last."""
    name, judged = cfg.tracking.registered_model, gate.champion_version
    client = mlflow_client(cfg)
    with registry_lock(cfg.tracking.uri, name):
        current = current_champion(client, name)
        promote = gate.promote_to_champion
        why = (gate.champion or {}).get("reason") or "the gate passed and there was no champion"
        if current != judged:
            promote, why = rejudge(current)
            promote = bool(gate.passed and promote)
        if promote:
            set_champion(client, name, version, current, f"kdpipe run: {why}")
        client.set_model_version_tag(name, version, DECISION_REASON_TAG, why[:5000])
        client.set_model_version_tag(name, version, DECISION_TAG, "champion" if promote else "challenger")
    return {"promoted": promote, "judged_champion": judged, "champion_before": current,
            "decided_again": current != judged, "reason": why}


def settle_undecided(client, name: str) -> dict[str, str]:
    """Versions whose registering run ended (killed, failed, deleted) before their decision was tagged: one that
    took the champion alias has its decision finished; any other is marked abandoned (tag, reason, description)
    and loses the challenger alias. Versions of running runs are being decided; those of finished runs were
    (registered before the decision tag existed). Returns {version: what became of it}."""
    from mlflow.exceptions import MlflowException

    settled = {}
    for found in client.search_model_versions(f"name = '{name}'"):
        if found.tags.get(DECISION_TAG) or not found.run_id:
            continue
        try:
            status = client.get_run(found.run_id).info.status
        except MlflowException:
            status = "DELETED"
        if status in ("RUNNING", "SCHEDULED", "FINISHED"):
            continue
        version = client.get_model_version(name, found.version)  # with its aliases
        if "champion" in version.aliases:
            decision, why = "champion", f"its run ({found.run_id}) ended {status} after moving the champion alias"
        else:
            decision = "abandoned"
            why = (f"its run ({found.run_id}) ended {status} before deciding its aliases; `kdpipe promote {name} "
                   f"{found.version}{'' if version.tags.get('kdpipe.gate') == 'passed' else ' --force'}` serves it")
            client.update_model_version(name, found.version, description=f"kdpipe: abandoned: {why}\n\n"
                                                                           f"{version.description or ''}".strip())
            if "challenger" in version.aliases:
                client.delete_registered_model_alias(name, "challenger")
        client.set_model_version_tag(name, found.version, DECISION_REASON_TAG, why)
        client.set_model_version_tag(name, found.version, DECISION_TAG, decision)
        settled[str(found.version)] = decision
    return settled


def register_onnx(cfg, onnx_dir: str | Path, gate: dict, example_texts: list[str], rejudge, card: str = "",
                  drift_baseline: dict | None = None) -> dict:
    """Log the exported model as a text-in MLflow pyfunc (kdpipe.pyfunc: ONNX files and tokenizer as its artifact)
    into the active run, register a version, alias it `challenger` (and `champion` when the gate says so), with
    its drift baseline as the version's tag kdpipe.drift_baseline. A failure part-way deletes the new version:
    nothing half-registered is left."""
    import mlflow

    from kdpipe.pyfunc import log_text_model

    name = cfg.tracking.registered_model
    client = mlflow_client(cfg)
    settle_undecided(client, name)  # versions a killed run left half-registered (none for a new model)
    mlflow.set_tag("kdpipe.gate_metric", gate.metric)
    mlflow.log_metric("gate_metric_value", gate.value)
    serving = {"log_requests": cfg.serving.log_requests, "log_sample_rate": cfg.serving.log_sample_rate,
               "log_text_column": cfg.data.text_column}
    info = log_text_model(onnx_dir, name, example_texts, serving)
    version = str(info.registered_model_version)
    try:
        client.set_registered_model_alias(name, "challenger", version)
        client.set_model_version_tag(name, version, "kdpipe.gate", "passed")
        if drift_baseline:
            client.set_model_version_tag(name, version, DRIFT_BASELINE_TAG, json.dumps(drift_baseline))
        if card:
            client.update_model_version(name, version, description=card)  # the model card, in the registry's UI
        decision = take_champion_if_better(cfg, version, gate, rejudge)
    except Exception:
        client.delete_model_version(name, version)
        raise
    aliases = ["challenger"] + (["champion"] if decision["promoted"] else [])
    return {"registered_model": name, "version": version, "aliases": aliases, "model_uri": info.model_uri,
            "model_id": info.model_id, "champion": decision}


PREVIOUS_TAG, REASON_TAG = "kdpipe.previous_champion", "kdpipe.champion_reason"
# Tagged last when a run registers a version: champion | challenger (| abandoned, by settle_undecided), and why.
DECISION_TAG, DECISION_REASON_TAG = "kdpipe.decision", "kdpipe.decision_reason"
DRIFT_BASELINE_TAG = "kdpipe.drift_baseline"  # kdpipe.drift.profile of the served model on the gate's rows


def set_champion(client, name: str, version: str, previous: str | None, reason: str) -> None:
    """Move the alias, recording on the new champion which version it replaced and why (what rollback reads)."""
    client.set_model_version_tag(name, version, PREVIOUS_TAG, previous or "")
    client.set_model_version_tag(name, version, REASON_TAG, reason[:5000])
    client.set_registered_model_alias(name, "champion", version)


def promote(uri: str, name: str, version: str, reason: str, force: bool = False) -> dict:
    """`kdpipe promote`: make `version` the champion by hand. A version that never passed the gate is refused
    unless `force`."""
    from mlflow.exceptions import MlflowException

    from kdpipe.errors import ConfigError

    client = client_for(uri)
    try:
        found = client.get_model_version(name, version)
    except MlflowException:
        raise ConfigError(f"registered model {name!r} has no version {version!r} at {uri}; "
                          f"`kdpipe compare` lists the registered versions") from None
    if found.tags.get("kdpipe.gate") != "passed" and not force:
        raise ConfigError(f"{name} v{version} never passed kdpipe's evaluation gate (tag kdpipe.gate is "
                          f"{found.tags.get('kdpipe.gate')!r}); --force promotes it anyway")
    with registry_lock(uri, name):
        settled = settle_undecided(client, name)
        previous = current_champion(client, name)
        if previous != str(version):
            set_champion(client, name, str(version), previous, reason)
    return {"registered_model": name, "champion": str(version), "previous": previous, "reason": reason,
            "settled": settled}


def rollback(uri: str, name: str, reason: str) -> dict:
    """`kdpipe rollback`: the champion goes back to the version it replaced (recorded when it was promoted)."""
    from kdpipe.errors import ConfigError

    client = client_for(uri)
    current = current_champion(client, name)
    if current is None:
        raise ConfigError(f"registered model {name!r} at {uri} has no champion to roll back")
    previous = client.get_model_version(name, current).tags.get(PREVIOUS_TAG)
    if not previous:
        raise ConfigError(f"{name} v{current} replaced no earlier champion (no {PREVIOUS_TAG} tag): nothing to roll "
                          f"back to; `kdpipe promote {name} VERSION` picks one")
    return promote(uri, name, previous, f"rollback from v{current}: {reason}", force=True)


def current_champion(client, name: str) -> str | None:
    """The version the `champion` alias points at (None: no champion yet): the one lookup of it."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, "champion").version)
    except MlflowException:
        return None
