"""A teacher that kdpipe fine-tunes is fine-tuned once: recorded in the MLflow Model Registry under a key of
everything that decides it, and adopted by any later run with the same key.

The record is a version of the registered model `teacher.registered_model` (default `<tracking.registered_model>-
teacher`): the step's run holds the model folder (save_pretrained, safetensors) as its artifact `teacher/`, the
version points at it and carries the key and the weights' digest as tags. A user can also name that version as
`teacher.model: models:/NAME/VERSION`; it is then a classifier for the labels and is used as it is."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from kdpipe.artifacts import Prepared
from kdpipe.config import Config

log = logging.getLogger("kdpipe.teacher")

KEY_TAG, DIGEST_TAG, RUN_TAG = "kdpipe.teacher_key", "kdpipe.teacher_digest", "kdpipe.pipeline_run"
FILES_TAG = "kdpipe.teacher_files"  # a hash of the recorded folder's files: checked before a version is used
REUSED_TAG = "kdpipe.teacher_reused_from"  # on the step's and the pipeline's run: the run that fine-tuned it
ARTIFACT = "teacher"


def teacher_key(cfg: Config, prep: Prepared) -> str:
    """Everything that decides the fine-tuned teacher: the source model and revision, the fine-tuning settings,
    the seed, precision and number of data-parallel processes it trains with, the data (train and validation
    fingerprints: the tokenized rows and their labels), the label schema and max_length. Not the student's
    settings: changing those keeps the key."""
    from kdpipe.parallel import processes

    t, d = cfg.teacher, cfg.distillation
    decides = {"model": t.model, "revision": t.revision, "epochs": t.epochs, "learning_rate": t.learning_rate,
               "early_stopping_patience": t.early_stopping_patience, "best_epoch_kept": True,
               "metric": prep.schema.primary_metric(cfg.gate.metric),
               "batch_size": t.batch_size, "seed": d.seed, "mixed_precision": d.mixed_precision,
               "group_by_length": d.group_by_length,
               "processes": processes(cfg), "data": [prep.fingerprint("train"), prep.fingerprint("validation")],
               "schema": prep.info["schema"], "max_length": prep.info["max_length"]}
    if t.search_trials:  # the settings the search draws are not those above
        decides = {k: v for k, v in decides.items() if k not in t.search_space}
        decides["search"] = {"trials": t.search_trials, "seed": cfg.hpo.seed,
                             "space": {k: v.model_dump() for k, v in sorted(t.search_space.items())}}
    return hashlib.sha256(json.dumps(decides, sort_keys=True).encode()).hexdigest()[:24]


def registered_name(cfg: Config) -> str:
    return cfg.teacher.registered_model or f"{cfg.tracking.registered_model}-teacher"


def files_digest(folder: str | Path) -> str:
    """A hash of every file in a model folder (names and bytes): what was recorded is what is used."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"|")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:32]


def record_teacher(cfg: Config, run_id: str, model_dir: str, key: str, digest: str, pipeline_run: str) -> str:
    """Log the fine-tuned teacher to the step's run and register it as a new version (the model's files are
    uploaded before the version exists: no version points at a half-uploaded folder). Returns the version."""
    from kdpipe.tracking import mlflow_client

    client, name = mlflow_client(cfg), registered_name(cfg)
    client.log_artifacts(run_id, model_dir, ARTIFACT)
    try:
        client.create_registered_model(name, description="Teachers fine-tuned by kdpipe, one version per key "
                                                         "(tag kdpipe.teacher_key); later runs with the key adopt them")
    except Exception:  # noqa: BLE001 (it exists: created by an earlier run)
        pass
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{ARTIFACT}"
    version = client.create_model_version(name, source=source, run_id=run_id,
                                          tags={KEY_TAG: key, DIGEST_TAG: digest, RUN_TAG: pipeline_run,
                                                FILES_TAG: files_digest(model_dir)},
                                          description=f"fine-tuned by pipeline run {pipeline_run}")
    return str(version.version)


def adopt_teacher(cfg: Config, key: str) -> dict | None:
    """The newest recorded teacher with this key, under any registered model name (a run registering its
    student elsewhere still finds it), whose files are those recorded, as {version, run_id, pipeline_run,
    reference, digest}; None when there is none. A recorded teacher that was deleted or damaged is passed over,
    with one line saying so. Nothing is loaded: the files' hash stands for the weights, and the weights' digest
    (the logit store's key) was recorded with them."""
    from kdpipe.tracking import mlflow_client

    versions = mlflow_client(cfg).search_model_versions(f"tags.`{KEY_TAG}` = '{key}'")
    for v in sorted(versions, key=lambda v: -v.creation_timestamp):
        reference = f"models:/{v.name}/{v.version}"
        digest = _verified_digest(cfg, reference, v.tags)
        if digest:
            return {"version": str(v.version), "run_id": v.run_id, "pipeline_run": v.tags.get(RUN_TAG),
                    "reference": reference, "digest": digest}
    return None


def recorded_digest(cfg: Config, reference: str) -> str:
    """The weights' digest of a teacher given as a registered version kdpipe recorded (models:/NAME/VERSION or
    @ALIAS), checked against its files; "" for any other teacher (its digest is computed from the loaded model)."""
    from kdpipe.sources import REGISTRY, registered_version

    if not reference.startswith(REGISTRY):
        return ""
    _, version = registered_version(reference, "teacher.model", cfg.tracking.uri)
    return _verified_digest(cfg, reference, version.tags) if DIGEST_TAG in version.tags else ""


def _verified_digest(cfg: Config, reference: str, tags: dict) -> str:
    from kdpipe.sources import fetch_model

    try:
        folder = fetch_model(reference, "teacher", cfg.tracking.uri)
        found = files_digest(folder)
        if found != tags.get(FILES_TAG):
            raise ValueError(f"its files changed since it was recorded (hash {found}, recorded "
                             f"{tags.get(FILES_TAG)})")
    except Exception as e:  # noqa: BLE001 (deleted, damaged, unreadable: fine-tune again)
        log.warning("kdpipe: recorded teacher %s cannot be used: %s; not adopted", reference,
                    str(e).splitlines()[0][:300] if str(e) else type(e).__name__)
        return ""
    return tags.get(DIGEST_TAG, "")
