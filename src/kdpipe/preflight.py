"""Checks made before the pipeline starts (`kdpipe run`), each failing in seconds with one line that names the
key, file or URL: mistakes that would otherwise surface after KFP has started, models have loaded and a
retry policy has run a step three times. The steps keep their own checks: a cluster run starts without this
machine's pre-flight (validate-tokenizers, the first step, repeats the model checks)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from kdpipe.config import Config
from kdpipe.errors import ConfigError
from kdpipe.sources import is_url

TIMEOUT_S = 3


def check_all(cfg: Config) -> None:
    check_tracking(cfg)  # first: a registered model (models:/...) is looked up there
    check_models(cfg)
    check_hpo_storage(cfg)
    check_local_inputs(cfg)


def check_local_inputs(cfg: Config) -> None:
    """Local data files: read, every row's text and labels validated (as preprocess does, minus tokenization); the
    recent texts of drift.texts read as the drift check reads them.
    Raises DataError naming the file, column and row."""
    from kdpipe.data import load_and_validate, read_unlabeled
    from kdpipe.drift_check import recent_texts

    if cfg.data.dataset is None:
        check_metric_names(cfg, load_and_validate(cfg.data)[1])
        if cfg.data.unlabeled and not is_url(cfg.data.unlabeled):
            read_unlabeled(cfg.data, set())
    if cfg.drift.texts and not is_url(cfg.drift.texts):
        recent_texts(cfg, cfg.drift.texts, cfg.drift.sample)


def check_metric_names(cfg: Config, schema) -> None:
    """gate.metric and hpo.metric name metrics this task reports (known once the labels are): a typo would
    otherwise fail the gate only after all the training."""
    for key, value in (("gate.metric", cfg.gate.metric), ("hpo.metric", cfg.hpo.metric if cfg.hpo.enabled else "auto")):
        if value != "auto" and value not in schema.metric_names:
            raise ConfigError(f"{key} {value!r}: not a metric of this {schema.problem_type} task; choose one of "
                              f"{schema.metric_names[:12]} or auto")


def check_models(cfg: Config) -> None:
    """Teacher and student: loadable as safetensors, no custom code unless trusted; student.layers within the
    teacher's layers."""
    from kdpipe.layer_map import check_loss_layers
    from kdpipe.modeling import inspect_model

    uri = cfg.tracking.uri
    teacher = inspect_model(cfg.teacher.model, "teacher.model", cfg.trust_remote_code, cfg.teacher.revision, uri)
    student = None
    if cfg.student.model:
        student = inspect_model(cfg.student.model, "student.model", cfg.trust_remote_code, cfg.student.revision, uri)
    layers = (teacher or {}).get("num_hidden_layers")
    if cfg.student.layers and layers is not None and max(cfg.student.layers) >= layers:
        raise ConfigError(f"student.layers {cfg.student.layers}: the teacher {cfg.teacher.model!r} has {layers} "
                          f"layers (indices 0..{layers - 1})")
    student_layers = len(cfg.student.layers) if cfg.student.layers else (student or {}).get("num_hidden_layers")
    if layers is not None and student_layers is not None:
        check_loss_layers(cfg.distillation, student_layers, layers)
    for key, config in (("teacher.model", teacher), ("student.model", student)):
        positions = (config or {}).get("max_position_embeddings")
        if positions and cfg.data.max_length > positions:  # else an index error inside the model, in every retry
            raise ConfigError(f"data.max_length {cfg.data.max_length}: the {key.split('.')[0]} "
                              f"{getattr(cfg, key.split('.')[0]).model!r} reads at most {positions} tokens "
                              f"(max_position_embeddings); set data.max_length to {positions} or less")


def check_tracking(cfg: Config) -> None:
    """The tracking server answers (one request, short timeout), or the SQLite file's folder is writable."""
    uri = cfg.tracking.uri
    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https"):
        _answers(f"{uri.rstrip('/')}/health", "tracking.uri", uri, "start the MLflow server or fix tracking.uri")
    elif scheme == "sqlite":
        _writable_folder(Path(urlsplit(uri).path).parent, "tracking.uri", uri)


def check_hpo_storage(cfg: Config) -> None:
    """With HPO on: the Optuna storage is reachable (a database answers; a file's folder is writable)."""
    if not cfg.hpo.enabled:
        return
    from kdpipe.hpo import storage_url

    url = storage_url(cfg.hpo.storage)
    if url.startswith("journal:"):  # the journal storage creates its folders
        _writable_folder(Path(url.removeprefix("journal:")).parent, "hpo.storage", cfg.hpo.storage, creatable=True)
    elif url.startswith("sqlite:"):
        _writable_folder(Path(urlsplit(url).path).parent, "hpo.storage", cfg.hpo.storage)
    else:
        import sqlalchemy

        shown = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
        try:
            engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": TIMEOUT_S})
            with engine.connect():
                pass
        except Exception as e:  # driver errors differ; all mean "no database here for us"
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ConfigError(f"hpo.storage {shown}: cannot connect ({type(e).__name__}: {first[:200]}); start the "
                              f"database or fix hpo.storage") from None


def _answers(url: str, key: str, shown: str, fix: str) -> None:
    import requests

    try:
        response = requests.get(url, timeout=TIMEOUT_S)
    except requests.RequestException as e:
        raise ConfigError(f"{key} {shown}: no answer in {TIMEOUT_S} s ({type(e).__name__}); {fix}") from None
    if response.status_code >= 400:
        raise ConfigError(f"{key} {shown}: answered HTTP {response.status_code} to {url}; {fix}")


def _writable_folder(folder: Path, key: str, shown: str, creatable: bool = False) -> None:
    """The folder exists and is writable (SQLite creates no folders), or, when `creatable`, its nearest existing
    parent is writable."""
    existing = folder
    while creatable and not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ConfigError(f"{key} {shown}: the folder {folder} does not exist or is not writable")
