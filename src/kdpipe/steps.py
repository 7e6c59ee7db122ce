"""The pipeline's steps: each takes the config, the pipeline run's name and its declared inputs (folders of input
artifacts, plain values), writes only into its own output folders, and returns its result. The lifecycle
(MLflow run, timing, metrics, result.json, failures) is `kdpipe.step.tracked_step`'s, for every step. A step's
function name is its name everywhere: its KFP component (kdpipe_kfp.components), its MLflow role, its key in the
summary. The KFP components call exactly these; so can a test or a notebook."""

from __future__ import annotations

import json
from pathlib import Path

from kdpipe.gate import GateDecision
from kdpipe.step import StepContext, hpo_run, no_run, tracked_step, under_hpo_run


@tracked_step()
def validate_tokenizers(ctx: StepContext) -> dict:
    """Teacher and student must load safely and turn text into the same ids: stops the run before any training.
    The first step, with no retry: bad models are refused here, not after the teacher's fine-tuning, three times."""
    from kdpipe.preflight import check_models
    from kdpipe.tokenizers import validate_tokenizers

    check_models(ctx.cfg)
    return validate_tokenizers(ctx.cfg)


@tracked_step()
def preprocess(ctx: StepContext, dataset_dir: str, force: bool = False) -> dict:
    """Validated, tokenized splits; and whether to train at all: `changed` is False when the config and the data
    are those of the run that produced the current champion (unless `force`) and, with drift.texts, the champion
    has not drifted on them (kdpipe.drift_check); the pipeline stops there. A drift-triggered retrain adds the
    recent texts to the dataset (a held-out RECENT split, more transfer rows)."""
    from kdpipe.champion import RETRAIN_KEY_TAG, retrain_key, unchanged_since_champion
    from kdpipe.data import preprocess
    from kdpipe.drift_check import check_before_training, in_one_line, record, report
    from kdpipe.preflight import check_metric_names
    from kdpipe.task import LabelSchema

    drift, recent = check_before_training(ctx.cfg) if ctx.cfg.drift.texts else (None, None)
    if drift and not drift.get("skipped"):
        ctx.set_tags(record(drift)["tags"])
        ctx.log_text(report(drift), "drift.md")
    info = preprocess(ctx.cfg, dataset_dir, recent=recent if drift and drift["drifted"] else None)
    check_metric_names(ctx.cfg, LabelSchema(**info["schema"]))
    key = retrain_key(ctx.cfg, info["data_fingerprints"])
    unchanged = None if force or (drift and drift["drifted"]) else unchanged_since_champion(ctx.cfg, key)
    ctx.tag_parent({"kdpipe.data_fingerprint": info["fingerprints"]["train"], RETRAIN_KEY_TAG: key,
                    "kdpipe.problem_type": info["schema"]["problem_type"],
                    **({"kdpipe.drifted": str(drift["drifted"]).lower()} if drift and not drift.get("skipped") else {})})
    ctx.log_datasets(dataset_dir, pipeline_run_too=True)
    result = {"rows": info["sizes"], "num_labels": len(info["schema"]["label_names"]),
              "problem_type": info["schema"]["problem_type"], "fingerprint": info["fingerprints"]["train"],
              "train_tokens_mean": info["train_tokens_mean"],
              "train_truncated_fraction": info["train_truncated_fraction"], "changed": unchanged is None,
              "forced": force, "transfer": info["transfer"]}  # data.unlabeled rows used, dropped; augmented; recent
    if drift:
        result["drift"] = {**{k: v for k, v in drift.items() if k != "per_label_then"}, "summary": in_one_line(drift),
                           "recent_rows": info["transfer"].get("recent")}  # None: not retrained on them
    if unchanged:
        result["unchanged"] = unchanged + (f"; {in_one_line(drift)}" if drift else "")
    return result


@tracked_step()
def prepare_teacher(ctx: StepContext, dataset_dir: str, teacher_dir: str, force: bool = False,
                    report_file: str | None = None) -> dict:
    """The teacher later steps load, as the result's `teacher_ref`: "" (fine-tuned here, into teacher_dir), the
    registered version of a teacher an earlier run fine-tuned with the same key (teacher.reuse auto, not
    `force`), or the configured teacher when it is already a classifier for these labels. Its Markdown report (a
    fine-tune's learning curve) goes onto the step's MLflow run and into report_file (the KFP component's)."""
    from kdpipe.teacher_tuning import REPORT, report

    result = _teacher_for(ctx, dataset_dir, teacher_dir, force)
    text = report(ctx.cfg, result)
    ctx.log_text(text, REPORT)
    if report_file:
        Path(report_file).write_text(text)
    return result


def _teacher_for(ctx: StepContext, dataset_dir: str, teacher_dir: str, force: bool) -> dict:
    from kdpipe.artifacts import load_prepared
    from kdpipe.teacher import finetune_teacher, teacher_needs_finetuning
    from kdpipe.teacher_reuse import REUSED_TAG, adopt_teacher, record_teacher, recorded_digest, teacher_key
    from kdpipe.teacher_tuning import learning_curve, search_teacher

    cfg, prep = ctx.cfg, load_prepared(dataset_dir)
    needed, why = teacher_needs_finetuning(cfg, prep.schema)
    Path(teacher_dir).mkdir(parents=True, exist_ok=True)  # the output artifact exists either way
    if not needed:  # `teacher_digest`: its weights' digest when kdpipe recorded it (else computed when loaded)
        return {"finetuned": False, "reused": False, "reason": why, "teacher_ref": cfg.teacher.model,
                "teacher_digest": recorded_digest(cfg, cfg.teacher.model)}
    key = teacher_key(cfg, prep)
    ctx.set_tags({"kdpipe.teacher_key": key})
    adopted = adopt_teacher(cfg, key) if cfg.teacher.reuse == "auto" and not force else None
    if adopted:
        ctx.set_tags({REUSED_TAG: adopted["run_id"]})
        ctx.tag_parent({REUSED_TAG: adopted["run_id"], "kdpipe.teacher_version": adopted["version"]})
        return {"finetuned": False, "reused": True, "teacher_ref": adopted["reference"], "teacher_key": key,
                "teacher_digest": adopted["digest"],
                "teacher_version": adopted["version"], "reused_from_run": adopted["run_id"],
                "reused_from_pipeline_run": adopted["pipeline_run"],
                "reason": f"{why}; fine-tuned with the same key by pipeline run {adopted['pipeline_run']} "
                          f"({adopted['reference']}), adopted"}
    ctx.log_datasets(dataset_dir, ["train", "validation"])
    tune = search_teacher if cfg.teacher.search_trials else finetune_teacher
    trained = tune(cfg, dataset_dir, teacher_dir, keeper=ctx.checkpoints())
    # The learning curve: each epoch's training loss and validation figures, as MLflow curves, in the step's
    # result and in its report (with the search's trials).
    curve = learning_curve(trained.pop("epoch_history", []))
    for name in sorted({k for h in curve for k in h if k != "epoch"}):
        ctx.log_history(f"teacher_{name}", [(int(round(h["epoch"])), h[name]) for h in curve if name in h])
    version = record_teacher(cfg, ctx.run_id, trained["model_dir"], key, trained["digest"], ctx.pipeline_run)
    ctx.tag_parent({"kdpipe.teacher_version": version})
    return {"finetuned": True, "reused": False, "reason": why, "teacher_ref": "", "teacher_key": key,
            "teacher_digest": trained["digest"], "teacher_version": version, "metrics": trained["metrics"],
            "train_runtime_s": trained["train_runtime_s"], "learning_curve": curve,
            "epochs_run": trained.get("epochs_run"), "best_epoch": trained.get("best_epoch"),
            "selected_by": prep.schema.primary_metric(cfg.gate.metric),
            **{k: trained[k] for k in ("params", "search", "search_best_trial") if k in trained}}


@tracked_step()
def teacher_shard(ctx: StepContext, dataset_dir: str, teacher_dir: str, teacher_ref: str, shard: int,
                  digest: str = "") -> dict:
    """One task of the sharded teacher pass (teacher.shards > 1): computes its share of the rows the logit store
    lacks and stores them; evaluate_teacher then finds them there. `digest`: the teacher's recorded weights
    digest (prepare_teacher's), so that a shard with nothing to compute loads no model."""
    import os

    from kdpipe.artifacts import load_prepared
    from kdpipe.teacher import TeacherModel, label_rows, teacher_source

    cfg = ctx.cfg
    teacher = TeacherModel(cfg, teacher_source(cfg, teacher_dir, teacher_ref), digest)
    _, counts = label_rows(cfg, load_prepared(dataset_dir), teacher, ctx.pipeline_run, shard, cfg.teacher.shards,
                           threads=max(1, (os.cpu_count() or 1) // cfg.teacher.shards))
    return {"shard": shard, "shards": cfg.teacher.shards, **counts}


@tracked_step()
def evaluate_teacher(ctx: StepContext, dataset_dir: str, teacher_dir: str, teacher_ref: str, logits_dir: str,
                     digest: str = "") -> dict:
    from kdpipe.teacher import evaluate_teacher, teacher_source

    result = evaluate_teacher(ctx.cfg, dataset_dir, teacher_source(ctx.cfg, teacher_dir, teacher_ref), logits_dir,
                              ctx.pipeline_run, digest)
    counts = result["logits"]
    ctx.log_datasets(dataset_dir)
    ctx.tag_parent({"kdpipe.teacher_logits_reused": counts["rows_reused"],
                    "kdpipe.teacher_logits_computed": counts["rows_computed"]})
    return result


@tracked_step(run=under_hpo_run)
def hpo_worker(ctx: StepContext, dataset_dir: str, teacher_dir: str, teacher_ref: str, logits_dir: str,
               worker: int) -> dict:
    """One of hpo.workers parallel workers on the shared study. Not a run of its own: each trial is an MLflow run
    under the HPO run (ctx.run_id), and a failure is recorded on the HPO run."""
    import tempfile

    from kdpipe.errors import ConfigError
    from kdpipe.hpo import run_trials
    from kdpipe.teacher import teacher_source
    from kdpipe.tracking import TrialRuns

    cfg = ctx.cfg
    if not cfg.hpo.enabled or worker >= cfg.hpo.workers:
        raise ConfigError(f"HPO worker {worker} started, but the config has hpo.enabled={cfg.hpo.enabled}, "
                          f"hpo.workers={cfg.hpo.workers}: the pipeline parameter hpo_workers must be "
                          f"{list(range(cfg.hpo.workers)) if cfg.hpo.enabled else []} (kdpipe run sets it)")
    # Trial models are scratch: with hpo.reuse_best_model each is logged to its trial run, where hpo-best finds it.
    with tempfile.TemporaryDirectory(prefix="kdpipe-trials-") as work:
        return run_trials(cfg, dataset_dir, teacher_source(cfg, teacher_dir, teacher_ref), logits_dir, work,
                          trial_log=TrialRuns(cfg, ctx.pipeline_run, ctx.run_id), worker=worker)


@tracked_step(run=hpo_run)
def hpo_best(ctx: StepContext, dataset_dir: str, report_path: str, best_model_dir: str, params_json: str = "") -> dict:
    """After the workers: the best trial's params (over params_json) for the final distillation, Optuna's plots
    at report_path, and with hpo.reuse_best_model the best trial's model in best_model_dir. With HPO off,
    params_json passes through and nothing is tracked."""
    from kdpipe.artifacts import load_prepared
    from kdpipe.errors import SearchFailed
    from kdpipe.hpo import lost_trials, open_study, study_summary, write_report
    from kdpipe.tracking import download_trial_model, mark_lost_trials

    cfg = ctx.cfg
    given = json.loads(params_json) if params_json else {}
    Path(best_model_dir).mkdir(parents=True, exist_ok=True)  # the output artifact exists even when left empty
    if not cfg.hpo.enabled:
        Path(report_path).write_text("<p>HPO is off (hpo.enabled: false): distillation uses the config.</p>")
        return {"hpo": False, "params": given, "reuse_model": False}
    study = open_study(cfg, fingerprint=load_prepared(dataset_dir).fingerprint("train"))
    summary = study_summary(study)
    mark_lost_trials(cfg, ctx.run_id, lost_trials(study))
    ctx.log_text_file(write_report(study, report_path), "report.html")
    if summary["best_params"] is None:
        raise SearchFailed(f"no HPO trial of study {study.study_name} completed ({summary['trials']}); "
                           "each trial's run under this HPO run in MLflow says why")
    ctx.log_params({"study": study.study_name, "n_trials": cfg.hpo.n_trials, "workers": cfg.hpo.workers,
                    "pruner": cfg.hpo.pruner, "metric": summary["metric"]})
    ctx.log_params(summary["best_params"], prefix="best.")
    reuse = cfg.hpo.reuse_best_model and download_trial_model(cfg, ctx.pipeline_run, ctx.run_id,
                                                              summary["best_trial"], best_model_dir)
    return {"hpo": True, **summary, "params": {**given, **summary["best_params"]}, "reuse_model": bool(reuse)}


@tracked_step()
def distill_student(ctx: StepContext, dataset_dir: str, teacher_dir: str, teacher_ref: str, logits_dir: str,
                 student_dir: str, params_json: str = "", reuse_model_dir: str = "") -> dict:
    """Train the student with distillation.* (overridden by params_json, e.g. the best HPO trial's), or take the
    best trial's model (reuse_model_dir, from hpo-best) as it is."""
    from kdpipe.artifacts import Student
    from kdpipe.data import TRANSFER
    from kdpipe.distill import adopt_model, distill_student
    from kdpipe.teacher import teacher_source

    params = json.loads(params_json) if params_json else None
    if reuse_model_dir:
        result = adopt_model(ctx.cfg, dataset_dir, Student(reuse_model_dir).model_dir, student_dir, params)
    else:
        result = distill_student(ctx.cfg, dataset_dir, teacher_source(ctx.cfg, teacher_dir, teacher_ref), logits_dir,
                                 student_dir, params, measure_latency=True, keeper=ctx.checkpoints())
    ctx.log_params(result["params"], prefix="distillation.")
    ctx.log_datasets(dataset_dir, ["train", "validation", TRANSFER])
    ctx.log_history("eval_loss", [(int(round(h["epoch"])), h["eval_loss"]) for h in result.pop("epoch_history", [])])
    return result


@tracked_step()
def evaluate_gate(ctx: StepContext, dataset_dir: str, student_dir: str, teacher_logits_dir: str, teacher_metrics: dict,
              student_latency_ms: float | None) -> dict:
    """Judge the student on the evaluation split (test when labelled, else validation) from its logits computed
    once by distillation: thresholds, retention, latency, fidelity to the teacher, calibration, and the champion
    re-scored on the same rows. Needs no torch."""
    import numpy as np

    from kdpipe import gate
    from kdpipe.artifacts import Student, load_prepared, teacher_logits
    from kdpipe.champion import champion_version, judge_champion
    from kdpipe.metrics import compute_metrics, fidelity_to_teacher

    cfg, prep = ctx.cfg, load_prepared(dataset_dir)
    split, schema = prep.eval_split, prep.schema
    rows = prep.dataset[split]
    labels = np.asarray(rows["labels"])
    student = Student(student_dir)
    logits = student.logits.load(split, prep.fingerprint(split))
    thresholds = student.thresholds(cfg.metrics.threshold)
    metrics = compute_metrics(logits, labels, schema, thresholds)
    metric = schema.primary_metric(cfg.gate.metric)
    teachers = teacher_logits(teacher_logits_dir).load(split, prep.fingerprint(split))
    fidelity = fidelity_to_teacher(logits, teachers, labels, schema, thresholds, cfg.metrics.threshold)
    version = champion_version(cfg)
    champion = judge_champion(cfg, version, schema, metric, rows["text"], labels, logits, thresholds,
                              _recent(prep, student, teacher_logits_dir))
    decision = gate.evaluate_gate(cfg.gate, metric, metrics, teacher_metrics, student_latency_ms, champion, fidelity)
    # The registry step moves the champion alias only if this is still the champion (compare-and-set).
    decision.split, decision.rows, decision.champion_version = split, len(labels), version
    decision.notes = _gate_notes(cfg, split, thresholds)
    decision.thresholds = dict(zip(schema.label_names, thresholds)) if isinstance(thresholds, list) else None
    result = {**decision.to_dict(), "label_names": schema.label_names}
    if not schema.multi_label:
        k = schema.num_labels
        matrix = np.zeros((k, k), dtype=int)
        np.add.at(matrix, (labels, schema.decide(logits)), 1)
        result["confusion_matrix"] = matrix.tolist()
    ctx.set_tags({"kdpipe.gate_passed": decision.passed, "kdpipe.gate_metric": metric, "kdpipe.gate_split": split})
    ctx.log_datasets(dataset_dir, [split])
    return result


def _recent(prep, student, teacher_logits_dir: str) -> tuple | None:
    """The recent texts a drift-triggered retrain held out, with the student's and the teacher's logits on them
    (the teacher-judged comparison's rows), or None."""
    from kdpipe.artifacts import teacher_logits
    from kdpipe.data import RECENT

    if RECENT not in prep.dataset:
        return None
    fingerprint = prep.fingerprint(RECENT)
    return (prep.dataset[RECENT]["text"], student.logits.load(RECENT, fingerprint),
            teacher_logits(teacher_logits_dir).load(RECENT, fingerprint))


def _gate_notes(cfg, split: str, thresholds) -> list[str]:
    """What the reader of the gate's number must know about it."""
    if split == "test":
        return ["judged on data.test (held out: training, HPO and thresholds selected on validation)"]
    chosen = [what for what, on in (("HPO chose the hyperparameters", cfg.hpo.enabled),
                                    ("the decision thresholds were tuned", isinstance(thresholds, list))) if on]
    if not chosen:
        return ["judged on validation (no labelled data.test)"]
    return [f"judged on validation, where {' and '.join(chosen)}: the gate's number is optimistic; give a labelled "
            f"data.test for a held-out number"]


@tracked_step()
def export_register(ctx: StepContext, dataset_dir: str, student_dir: str, teacher_logits_dir: str, gate: GateDecision,
                    onnx_dir: str) -> dict:
    """Only reached when the gate passed: export + verify the ONNX model, then register it with its aliases (the
    champion judged again, on the gate's rows, if another run moved the alias meanwhile) and its drift baseline
    (the served variant against the teacher on the gate's rows and held-out recent texts: what `kdpipe drift` and
    a drift-checking run compare recent text with)."""
    import numpy as np

    from kdpipe.artifacts import Export, Student, load_prepared, teacher_logits
    from kdpipe.champion import judge_champion
    from kdpipe.drift import profile
    from kdpipe.serving import OnnxClassifier
    from kdpipe.export import export_onnx
    from kdpipe.export_search import search_table
    from kdpipe.model_card import model_card
    from kdpipe.registry import register_onnx
    from kdpipe.run_record import log_model_metrics

    if not gate.passed:
        raise RuntimeError("export_register reached with a failed gate; refusing to register")
    cfg, prep = ctx.cfg, load_prepared(dataset_dir)
    eval_teacher = teacher_logits(teacher_logits_dir).load(prep.eval_split, prep.fingerprint(prep.eval_split))
    exported = export_onnx(cfg, student_dir, dataset_dir, onnx_dir, metric=gate.metric, teacher_logits=eval_teacher)
    if exported.get("int8_search"):
        ctx.log_text(search_table(exported, cfg.export.search_batch_sizes), "export_search.md")
    student = Student(student_dir)
    rows = prep.dataset[prep.eval_split]
    recent = _recent(prep, student, teacher_logits_dir)

    def rejudge(current: str | None) -> tuple[bool, str]:
        verdict = judge_champion(cfg, current, prep.schema, gate.metric, rows["text"], rows["labels"],
                                 student.logits.load(prep.eval_split, prep.fingerprint(prep.eval_split)),
                                 student.thresholds(cfg.metrics.threshold), recent)
        if verdict is None:
            return True, "the gate passed and there was no champion (its alias was removed while this run was judged)"
        return verdict["promote"], verdict["reason"]

    card = model_card(cfg, prep.info, gate, exported)
    Export(onnx_dir).card.write_text(card)  # travels in the model's folder (and to the Hub)
    examples = prep.dataset["validation"]["text"][:2]
    served = OnnxClassifier(onnx_dir)
    # The baseline: the rows this version was judged on, which neither model trained on (the gate's, and the
    # recent texts a drift-triggered retrain held out: the traffic it was made for).
    texts = list(rows["text"]) + (list(recent[0]) if recent else [])
    teachers = np.concatenate([eval_teacher, recent[2]]) if recent else eval_teacher
    exported["drift_baseline"] = profile(served.run(texts)[1], prep.schema.scores(teachers), prep.schema,
                                         served.threshold, cfg.metrics.threshold)
    exported["registry"] = register_onnx(cfg, onnx_dir, gate, examples, rejudge, card, exported["drift_baseline"])
    log_model_metrics(cfg, exported["registry"]["model_id"], gate, prep.info)
    return exported


@tracked_step(run=no_run)
def finish_tracking(ctx: StepContext, state: str, error: str = "") -> str:
    """Exit handler: the run's steps closed, its outcome and headline figures recorded on the parent run (what
    MLflow's runs table and search_runs show), then the parent ended FINISHED or FAILED to match the pipeline."""
    from kdpipe.run_record import record_outcome
    from kdpipe.tracking import close_steps, end_parent

    succeeded = state.upper() == "SUCCEEDED"
    run_id = close_steps(ctx.cfg, ctx.pipeline_run, succeeded, error or None)
    record_outcome(ctx.cfg, ctx.pipeline_run, succeeded, error or None)
    end_parent(ctx.cfg, run_id, succeeded)
    return run_id
