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


class NoBaseline(ConfigError):
    """No champion, or one registered before kdpipe recorded drift baselines: nothing to compare recent texts with."""


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
        raise NoBaseline(f"{name}: no champion in the registry at {cfg.tracking.uri}; nothing to check for drift")
    found = client.get_model_version(name, version)
    if DRIFT_BASELINE_TAG not in found.tags:
        raise NoBaseline(f"{name} v{version} has no drift baseline (registered before kdpipe recorded one); the "
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


def measure(cfg, texts: list[str], texts_ref: str) -> dict:
    """The drift figures of the champion on `texts` against its registration baseline (kdpipe.drift.compare),
    with the champion's version, its teacher and the seconds each part took."""
    import mlflow

    from kdpipe.drift import compare, profile
    from kdpipe.pyfunc import load_registered
    from kdpipe.tracking import mlflow_client

    mlflow.set_tracking_uri(cfg.tracking.uri)  # the registry the champion is loaded from: the config's
    version, baseline, teacher = champion_and_teacher(cfg, mlflow_client(cfg))
    began = time.perf_counter()
    champion = load_registered(f"models:/{cfg.tracking.registered_model}/{version}")
    scores = champion.run(texts)[1]
    champion_s = time.perf_counter() - began
    theirs = teacher_scores(cfg, teacher, texts, champion.schema)
    teacher_s = time.perf_counter() - began - champion_s
    now = profile(scores, theirs, champion.schema, champion.threshold, cfg.metrics.threshold, like=baseline)
    d = cfg.drift
    return {**compare(baseline, now, d.max_disagreement_increase, d.max_psi, d.max_teacher_psi),
            "champion_version": version, "teacher": teacher, "texts": texts_ref,
            "seconds": {"champion": round(champion_s, 2), "teacher": round(teacher_s, 2)}}


def record(result: dict) -> dict:
    """A drift result's figures and outcome as MLflow metrics and tags, the same in the command's run and in the
    pipeline's preprocess step."""
    metrics = {k: result[k] for k in ("agreement_then", "agreement_now", "disagreement_increase", "psi",
                                      "teacher_psi") if result.get(k) is not None}
    return {"metrics": metrics, "tags": {"kdpipe.drifted": str(result["drifted"]).lower(),
                                         "kdpipe.champion_version": result["champion_version"]}}


def check_before_training(cfg) -> tuple[dict, list[str]]:
    """preprocess's drift check (drift.texts set): the recent texts (a bad file is one DataError, before anything
    trains) and the champion's figures on them, or {"drifted": False, "skipped": why} when there is no baseline."""
    texts = recent_texts(cfg, cfg.drift.texts, cfg.drift.sample)
    try:
        return measure(cfg, texts, cfg.drift.texts), texts
    except NoBaseline as e:
        return {"drifted": False, "skipped": str(e), "texts": cfg.drift.texts}, texts


def check_drift(cfg, texts_ref: str, sample: int | None = None) -> dict:
    """`kdpipe drift`: the drift figures of the champion on a sample of recent texts, recorded as an MLflow run
    (role `drift`) with a Markdown report."""
    import mlflow

    began = time.perf_counter()
    texts = recent_texts(cfg, texts_ref, sample or cfg.drift.sample)
    read_s = time.perf_counter() - began
    result = measure(cfg, texts, texts_ref)
    result["seconds"] = {"read": round(read_s, 2), **result["seconds"],
                         "total": round(time.perf_counter() - began, 2)}
    recorded = record(result)
    mlflow.set_experiment(cfg.tracking.experiment)
    with mlflow.start_run(run_name=f"drift v{result['champion_version']}",
                          tags={"kdpipe.role": DRIFT_ROLE, **recorded["tags"]}):
        mlflow.log_params({"texts": texts_ref, "rows": result["rows"], "teacher": result["teacher"],
                           **{f"drift.{k}": v for k, v in cfg.drift.model_dump().items() if k != "texts"}})
        mlflow.log_metrics({**recorded["metrics"], "seconds_total": result["seconds"]["total"]})
        mlflow.log_text(report(result), "drift.md")
        mlflow.log_dict(result, "drift.json")
    return result


def in_one_line(result: dict) -> str:
    """A drift result as the run's summary says it."""
    if result.get("skipped"):
        return f"drift not checked: {result['skipped']}"
    teacher_psi = "-" if result.get("teacher_psi") is None else f"{result['teacher_psi']:.3f}"
    figures = (f"on {result['rows']} recent texts: agreement with the teacher {result['agreement_now']:.3f} "
               f"({result['agreement_then']:.3f} at registration), top-score PSI champion {result['psi']:.3f}, "
               f"teacher {teacher_psi}")
    return f"DRIFT {figures}: {'; '.join(result['reasons'])}" if result["drifted"] else f"no drift {figures}"


def report(result: dict) -> str:
    head = "DRIFT" if result["drifted"] else "no drift"
    lines = [f"# Drift check of champion v{result['champion_version']}: {head}", "",
             f"{result['rows']} recent texts ({result['texts']}), judged by the teacher {result['teacher']}.", "",
             "| figure | at registration | now |", "| --- | --- | --- |",
             f"| agreement with the teacher | {result['agreement_then']:.4f} | {result['agreement_now']:.4f} |"]
    for label, then in result["per_label_then"].items():
        now = result["per_label_now"].get(label)
        lines.append(f"| agreement, {label} | {then:.4f} | {'-' if now is None else f'{now:.4f}'} |")
    teacher_psi = "-" if result.get("teacher_psi") is None else f"{result['teacher_psi']:.4f}"
    lines += ["", f"Top-score PSI against registration: champion {result['psi']:.4f}, teacher {teacher_psi}.", ""]
    lines += [f"- {r}" for r in result["reasons"]] or ["- within the thresholds"]
    return "\n".join(lines) + "\n"
