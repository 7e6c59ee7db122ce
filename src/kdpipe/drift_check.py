"""`kdpipe drift CONFIG --texts URL`: the champion and the teacher it was distilled from, on a sample of recent
texts without labels (a request log, any file of texts), compared with the baseline recorded on the champion when
it was registered (kdpipe.drift). The figures go to an MLflow run of the experiment, and to the caller."""

from __future__ import annotations

import json
import random
import time

import numpy as np

from kdpipe.errors import ConfigError, DataError

DRIFT_ROLE = "drift"


def recent_texts(cfg, ref: str, sample: int, seed: int = 0) -> list[str]:
    """Up to `sample` texts of the file (or folder, or URL) at ref, from the config's text column. An empty file,
    a missing column or an unreachable URL is one DataError naming it."""
    from kdpipe.data import RawSplit, check_columns, check_texts, read_table

    split = RawSplit("recent texts", ref, read_table(ref, cfg.data, "--texts"))
    check_columns(split, cfg.data, need_labels=False)
    texts = [t for t in check_texts(split, cfg.data) if t.strip()]
    if not texts:
        raise DataError(f"{ref}: no texts in column {cfg.data.text_column!r}")
    return random.Random(seed).sample(texts, sample) if len(texts) > sample else texts


def champion_and_teacher(cfg, client) -> tuple[str, dict, str]:
    """The champion's version, its drift baseline, and the teacher it was distilled from (a registry reference when
    kdpipe fine-tuned or adopted it, else the configured teacher of its run)."""
    from kdpipe.registry import DRIFT_BASELINE_TAG, current_champion
    from kdpipe.teacher_reuse import registered_name

    name = cfg.tracking.registered_model
    version = current_champion(client, name)
    if version is None:
        raise ConfigError(f"{name}: no champion in the registry at {cfg.tracking.uri}; nothing to check for drift")
    found = client.get_model_version(name, version)
    if DRIFT_BASELINE_TAG not in found.tags:
        raise ConfigError(f"{name} v{version} has no drift baseline (registered before kdpipe recorded one); the "
                          f"next registered version will have one")
    step_run = client.get_run(found.run_id)
    parent = client.get_run(step_run.data.tags.get("mlflow.parentRunId", found.run_id))
    teacher_version = parent.data.tags.get("kdpipe.teacher_version")
    teacher = (f"models:/{registered_name(cfg)}/{teacher_version}" if teacher_version
               else parent.data.params.get("teacher.model", cfg.teacher.model))
    return version, json.loads(found.tags[DRIFT_BASELINE_TAG]), teacher


def teacher_scores(cfg, ref: str, texts: list[str], schema) -> np.ndarray:
    import datasets
    from transformers import AutoTokenizer

    from kdpipe.data import tokenize
    from kdpipe.modeling import load_classifier, predict_logits
    from kdpipe.sources import fetch_model

    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Loading weights" bars: noise on the command's one-line report
    path = fetch_model(ref, "teacher", cfg.tracking.uri)
    model = load_classifier(path, trust_remote_code=cfg.trust_remote_code, what="teacher")
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    rows = datasets.Dataset.from_dict(tokenize(tokenizer, texts, cfg.data.max_length))
    return schema.scores(predict_logits(model, rows, tokenizer, cfg.teacher.batch_size, "teacher on recent texts"))


def check_drift(cfg, texts_ref: str, sample: int | None = None) -> dict:
    """The drift figures of the champion on recent texts, against its registration baseline, recorded as an MLflow
    run (role `drift`) with a Markdown report."""
    import mlflow

    from kdpipe.drift import compare, profile
    from kdpipe.pyfunc import load_registered
    from kdpipe.tracking import mlflow_client

    client = mlflow_client(cfg)
    mlflow.set_tracking_uri(cfg.tracking.uri)  # the registry the champion is loaded from: the config's
    version, baseline, teacher = champion_and_teacher(cfg, client)
    began = time.perf_counter()
    texts = recent_texts(cfg, texts_ref, sample or cfg.drift.sample)
    read_s = time.perf_counter() - began
    champion = load_registered(f"models:/{cfg.tracking.registered_model}/{version}")
    scores = champion.run(texts)[1]
    champion_s = time.perf_counter() - began - read_s
    theirs = teacher_scores(cfg, teacher, texts, champion.schema)
    teacher_s = time.perf_counter() - began - read_s - champion_s
    now = profile(scores, theirs, champion.schema, champion.threshold, cfg.metrics.threshold, baseline["edges"])
    result = {**compare(baseline, now, cfg.drift.max_disagreement_increase, cfg.drift.max_psi),
              "champion_version": version, "teacher": teacher, "texts": texts_ref,
              "seconds": {"read": round(read_s, 2), "champion": round(champion_s, 2), "teacher": round(teacher_s, 2),
                          "total": round(time.perf_counter() - began, 2)}}
    mlflow.set_experiment(cfg.tracking.experiment)
    with mlflow.start_run(run_name=f"drift v{version}", tags={"kdpipe.role": DRIFT_ROLE,
                                                              "kdpipe.drifted": str(result["drifted"]).lower(),
                                                              "kdpipe.champion_version": version}):
        mlflow.log_params({"texts": texts_ref, "rows": result["rows"], "teacher": teacher,
                           "drift.max_disagreement_increase": cfg.drift.max_disagreement_increase,
                           "drift.max_psi": cfg.drift.max_psi})
        mlflow.log_metrics({"agreement_then": result["agreement_then"], "agreement_now": result["agreement_now"],
                            "disagreement_increase": result["disagreement_increase"], "psi": result["psi"],
                            "seconds_total": result["seconds"]["total"]})
        mlflow.log_text(report(result), "drift.md")
        mlflow.log_dict(result, "drift.json")
    return result


def report(result: dict) -> str:
    head = "DRIFT" if result["drifted"] else "no drift"
    lines = [f"# Drift check of champion v{result['champion_version']}: {head}", "",
             f"{result['rows']} recent texts ({result['texts']}), judged by the teacher {result['teacher']}.", "",
             "| figure | at registration | now |", "| --- | --- | --- |",
             f"| agreement with the teacher | {result['agreement_then']:.4f} | {result['agreement_now']:.4f} |"]
    for label, then in result["per_label_then"].items():
        now = result["per_label_now"].get(label)
        lines.append(f"| agreement, {label} | {then:.4f} | {'-' if now is None else f'{now:.4f}'} |")
    lines += ["", f"Top-score PSI against registration: {result['psi']:.4f}.", ""]
    lines += [f"- {r}" for r in result["reasons"]] or ["- within the thresholds"]
    return "\n".join(lines) + "\n"
