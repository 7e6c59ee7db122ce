"""The pipeline's steps as plain functions: resolved config (JSON) + paths in, a small result dict out.

Each runs inside an MLflow child run of the pipeline's parent run and leaves `result.json` there and in its
output folder. The KFP components (../../components) call exactly these; so can a test or a notebook.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from kdpipe.config import Config, config_from_json
from kdpipe.tracking import step_run

TEACHER_REF = "teacher_ref.json"


def _finish(out_dir: Path | None, result: dict, started: float) -> dict:
    import mlflow

    from kdpipe.tracking import log_result

    result["step_seconds"] = time.perf_counter() - started
    log_result({k: v for k, v in result.items() if k not in ("params", "best_params")})
    mlflow.log_dict(result, "result.json")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "result.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _load(config_json: str) -> Config:
    return config_from_json(config_json)


def validate_tokenizers_step(config_json: str, pipeline_run: str, out_dir: str) -> dict:
    from kdpipe.tokenizers import validate_tokenizers

    cfg, started, out = _load(config_json), time.perf_counter(), Path(out_dir)
    with step_run(cfg, pipeline_run, "validate_tokenizers"):
        out.mkdir(parents=True, exist_ok=True)
        report = validate_tokenizers(cfg, out / "tokenizer_report.json")
        return _finish(out, {"match": report["match"], "texts_checked": report["texts_checked"]}, started)


def preprocess_step(config_json: str, pipeline_run: str, out_dir: str) -> dict:
    from kdpipe.data import preprocess
    from kdpipe.tracking import tag_parent

    cfg, started = _load(config_json), time.perf_counter()
    with step_run(cfg, pipeline_run, "preprocess"):
        info = preprocess(cfg, out_dir)
        tag_parent(cfg, pipeline_run, {"kdpipe.data_fingerprint": info["fingerprints"]["train"],
                                       "kdpipe.problem_type": info["schema"]["problem_type"]})
        result = {"rows": info["sizes"], "num_labels": len(info["schema"]["label_names"]),
                  "problem_type": info["schema"]["problem_type"], "fingerprint": info["fingerprints"]["train"],
                  "train_tokens_mean": info["train_tokens_mean"],
                  "train_truncated_fraction": info["train_truncated_fraction"]}
        return _finish(None, result, started)


def teacher_location(teacher_dir: str | Path) -> str:
    """A prepare_teacher output: the fine-tuned model folder, or a pointer to the given teacher."""
    ref = Path(teacher_dir) / TEACHER_REF
    return json.loads(ref.read_text())["model"] if ref.is_file() else str(Path(teacher_dir) / "model")


def prepare_teacher_step(config_json: str, pipeline_run: str, data_dir: str, out_dir: str) -> dict:
    """Fine-tunes the teacher only when it is not yet a classifier for these labels; else passes it through."""
    from kdpipe.data import load_prepared
    from kdpipe.teacher import finetune_teacher, teacher_needs_finetuning

    cfg, started, out = _load(config_json), time.perf_counter(), Path(out_dir)
    with step_run(cfg, pipeline_run, "prepare_teacher"):
        needed, why = teacher_needs_finetuning(cfg, load_prepared(data_dir).schema)
        out.mkdir(parents=True, exist_ok=True)
        result = {"finetuned": needed, "reason": why}
        if needed:
            trained = finetune_teacher(cfg, data_dir, out)
            result.update({"metrics": trained["metrics"], "train_runtime_s": trained["train_runtime_s"]})
        else:
            (out / TEACHER_REF).write_text(json.dumps({"model": cfg.teacher.model}))
        return _finish(out, result, started)


def evaluate_teacher_step(config_json: str, pipeline_run: str, data_dir: str, teacher_dir: str, out_dir: str) -> dict:
    from kdpipe.teacher import evaluate_teacher

    cfg, started = _load(config_json), time.perf_counter()
    with step_run(cfg, pipeline_run, "evaluate_teacher"):
        return _finish(Path(out_dir), evaluate_teacher(cfg, data_dir, teacher_location(teacher_dir), out_dir), started)


def distill_step(config_json: str, pipeline_run: str, data_dir: str, teacher_dir: str, logits_dir: str,
                 out_dir: str, params_json: str = "", reuse_model_dir: str = "") -> dict:
    """Train the student with distillation.* (overridden by params_json, e.g. the best HPO trial's), or ship the
    best trial's model (reuse_model_dir) when it was trained on this data with this teacher."""
    import mlflow

    from kdpipe.distill import distill_student, reuse_trial_model

    cfg, started = _load(config_json), time.perf_counter()
    params = json.loads(params_json) if params_json else None
    teacher = teacher_location(teacher_dir)
    with step_run(cfg, pipeline_run, "distill_student"):
        result = reuse_trial_model(reuse_model_dir, data_dir, teacher, out_dir) if reuse_model_dir else None
        if result is None:
            result = distill_student(cfg, data_dir, teacher, logits_dir, out_dir, params)
        mlflow.log_params({f"distillation.{k}": v for k, v in result["params"].items()})
        for h in result["epoch_history"]:
            mlflow.log_metric("eval_loss", h["eval_loss"], step=int(round(h["epoch"])))
        result.pop("epoch_history")
        return _finish(Path(out_dir), result, started)


def hpo_worker_step(config_json: str, pipeline_run: str, data_dir: str, teacher_dir: str, logits_dir: str,
                    out_dir: str, worker: int) -> dict:
    """One of hpo.workers parallel workers on the shared study; its trials become MLflow runs under the HPO
    run. Trial models stay under out_dir (hpo.reuse_best_model can ship the best one)."""
    from kdpipe.errors import ConfigError
    from kdpipe.hpo import run_trials
    from kdpipe.tracking import TrialRuns, failures_recorded, hpo_run_id

    cfg = _load(config_json)
    # Inside a ParallelFor, KFP's local runner gives the job name as "<run>/for-loop-N-iteration-K".
    pipeline_run = pipeline_run.split("/for-loop-")[0]
    hpo_id = hpo_run_id(cfg, pipeline_run)
    with failures_recorded(cfg, hpo_id):
        if not cfg.hpo.enabled or worker >= cfg.hpo.workers:
            raise ConfigError(f"HPO worker {worker} started, but the config has hpo.enabled={cfg.hpo.enabled}, "
                              f"hpo.workers={cfg.hpo.workers}: set the pipeline parameter hpo_workers to "
                              f"{hpo_workers(cfg)} (kdpipe run does this)")
        summary = run_trials(cfg, data_dir, teacher_location(teacher_dir), logits_dir, out_dir,
                             trial_log=TrialRuns(cfg, pipeline_run, hpo_id), worker=worker)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "result.json").write_text(json.dumps(summary, indent=2))
    return summary


def hpo_workers(cfg: Config) -> list[int]:
    """The pipeline parameter hpo_workers: one ParallelFor item per worker, none when HPO is off."""
    return list(range(cfg.hpo.workers)) if cfg.hpo.enabled else []


def hpo_best_step(config_json: str, pipeline_run: str, data_dir: str, out_dir: str, params_json: str = "") -> dict:
    """After the workers: the best trial's params (over any given params_json) for the final distillation, and
    the study's plots (report.html) on the HPO run. With HPO off, params_json passes through."""
    import mlflow

    from kdpipe.data import load_prepared
    from kdpipe.errors import SearchFailed
    from kdpipe.hpo import lost_trials, open_study, study_summary, write_report
    from kdpipe.tracking import hpo_run_id, mark_lost_trials

    cfg, started, out = _load(config_json), time.perf_counter(), Path(out_dir)
    given = json.loads(params_json) if params_json else {}
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.hpo.enabled:
        result = {"hpo": False, "params": given, "best_model_dir": ""}
        (out / "result.json").write_text(json.dumps(result, indent=2))
        return result
    hpo_id = hpo_run_id(cfg, pipeline_run)
    with step_run(cfg, pipeline_run, "hpo", run_id=hpo_id):
        study = open_study(cfg, fingerprint=load_prepared(data_dir).info["fingerprints"]["train"])
        summary = study_summary(study)
        mark_lost_trials(cfg, hpo_id, lost_trials(study))
        mlflow.log_artifact(str(write_report(study, out / "report.html")))
        if summary["best_params"] is None:
            raise SearchFailed(f"no HPO trial of study {study.study_name} completed ({summary['trials']}); "
                               "each trial's run under this HPO run in MLflow says why")
        mlflow.log_params({"study": study.study_name, "n_trials": cfg.hpo.n_trials, "workers": cfg.hpo.workers,
                           "pruner": cfg.hpo.pruner, "metric": summary["metric"]})
        mlflow.log_params({f"best.{k}": v for k, v in summary["best_params"].items()})
        result = {"hpo": True, **summary, "params": {**given, **summary["best_params"]},
                  "best_model_dir": summary["best_model_dir"] if cfg.hpo.reuse_best_model else ""}
        return _finish(out, result, started)


def gate_step(config_json: str, pipeline_run: str, data_dir: str, student_dir: str, teacher_eval_dir: str,
              out_dir: str) -> dict:
    """Evaluate the student (metrics, latency, confusion matrix) and decide: thresholds, retention, champion."""
    import numpy as np

    from kdpipe.data import MULTI, load_prepared
    from kdpipe.gate import evaluate_gate
    from kdpipe.metrics import compute_metrics, primary_metric
    from kdpipe.modeling import load_classifier, load_tokenizer, predict_logits, torch_latency_ms
    from kdpipe.tracking import champion_metric

    cfg, started, out = _load(config_json), time.perf_counter(), Path(out_dir)
    with step_run(cfg, pipeline_run, "evaluate_gate"):
        prep = load_prepared(data_dir)
        model_dir = str(Path(student_dir) / "model")
        model = load_classifier(model_dir, trust_remote_code=cfg.trust_remote_code, what="student")
        tokenizer = load_tokenizer(model_dir)
        val = prep.dataset["validation"]
        logits = predict_logits(model, val, tokenizer, cfg.distillation.eval_batch_size)
        labels = np.asarray(val["labels"])
        metrics = compute_metrics(logits, labels, prep.schema, cfg.metrics.threshold)
        latency = torch_latency_ms(model, 1, cfg.export.latency_seq_len, cfg.export.latency_runs)
        teacher = json.loads((Path(teacher_eval_dir) / "teacher_eval.json").read_text())
        metric = primary_metric(prep.schema, cfg.gate.metric)
        champion = champion_metric(cfg, metric)
        decision = evaluate_gate(cfg.gate, metric, metrics, teacher["metrics"], latency,
                                 None if champion is None else {metric: champion})
        result = {"passed": decision["passed"], "promote_to_champion": decision["promote_to_champion"],
                  "reasons": decision["reasons"], "checks": decision["checks"], "metric": metric,
                  "value": decision.get("value"), "metrics": metrics, "teacher_metrics": teacher["metrics"],
                  "latency_ms_b1": latency, "champion_value": champion, "label_names": prep.schema.label_names}
        if prep.schema.problem_type != MULTI:
            k = prep.schema.num_labels
            matrix = np.zeros((k, k), dtype=int)
            np.add.at(matrix, (labels, logits.argmax(-1)), 1)
            result["confusion_matrix"] = matrix.tolist()
        import mlflow
        mlflow.set_tags({"kdpipe.gate_passed": str(decision["passed"]), "kdpipe.gate_metric": metric})
        mlflow.log_text("\n".join(decision["reasons"]), "gate_reasons.txt")
        return _finish(out, result, started)


def export_register_step(config_json: str, pipeline_run: str, data_dir: str, student_dir: str, gate_dir: str,
                         out_dir: str) -> dict:
    """Only reached when the gate passed: export + verify the ONNX model, then register it with its alias."""
    from kdpipe.export import export_onnx
    from kdpipe.tracking import register_onnx

    cfg, started = _load(config_json), time.perf_counter()
    gate = json.loads((Path(gate_dir) / "result.json").read_text())
    with step_run(cfg, pipeline_run, "export_register"):
        if not gate["passed"]:
            raise RuntimeError("export_register reached with a failed gate; refusing to register")
        exported = export_onnx(cfg, Path(student_dir) / "model", data_dir, out_dir)
        exported["registry"] = register_onnx(cfg, out_dir, gate)
        return _finish(None, exported, started)


def finish_step(config_json: str, pipeline_run: str, state: str, error: str = "") -> str:
    """Exit handler: end the parent run FINISHED or FAILED to match the pipeline."""
    from kdpipe.tracking import finish_parent

    return finish_parent(_load(config_json), pipeline_run, state.upper() == "SUCCEEDED", error or None)


# ---------------------------------------------------------------- helpers for the KFP component bodies

def log_kfp_metrics(metrics, result: dict) -> None:
    """Numbers of a step result into a KFP Metrics artifact (flat names, as the KFP UI shows them)."""
    from kdpipe.tracking import numbers

    for key, value in numbers(result).items():
        metrics.log_metric(key, value)


def markdown(path: str, title: str, result: dict) -> None:
    lines = [f"# {title}", ""]
    for reason in result.get("reasons", []):
        lines.append(f"- {reason}")
    lines += ["", "| key | value |", "| --- | --- |"]
    from kdpipe.tracking import flatten

    for key, value in flatten({k: v for k, v in result.items() if k not in ("reasons", "checks")}).items():
        lines.append(f"| {key} | {value} |")
    Path(path).write_text("\n".join(lines) + "\n")
