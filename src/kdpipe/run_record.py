"""What MLflow itself shows of a pipeline run, so that its runs table, compare view and `search_runs` work across
pipeline runs without `kdpipe compare`: the run's headline figures as metrics on the pipeline (parent) run, its
outcome and registered version as tags, its summary as the run's note (what the UI shows first), and each split
it read as an MLflow dataset input (digest: kdpipe's fingerprint). The names below are stable; docs/operations.md
lists them."""

from __future__ import annotations

import json
import time
import warnings

from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
from mlflow.data.meta_dataset import MetaDataset

from kdpipe.data import RECENT, TRANSFER
from kdpipe.gate import GateDecision
from kdpipe.summary import build_summary, read_run, teacher_reuse
from kdpipe.tracking import mlflow_client

OUTCOME_TAG, VERSION_TAG, ALIASES_TAG = "kdpipe.outcome", "kdpipe.registered_version", "kdpipe.aliases"
SPLIT_TAG, SERVED_TAG, NOTE_TAG = "kdpipe.eval_split", "kdpipe.served_variant", "mlflow.note.content"
CONTEXT_TAG = "mlflow.data.context"  # MLflow's own tag for a dataset input's role (train, validation, ...)


def shipped(export: dict) -> dict:
    """The figures of the variant the registered model serves (export's `served`), not of the PyTorch model."""
    variant = export.get("served")
    if not variant:
        return {}
    latency, size = export.get("latency_ms") or {}, export.get("size_mb") or {}
    return {"variant": variant, "latency_ms_b1": latency.get(f"{variant}_b1"),
            "latency_ms_b32": latency.get(f"{variant}_b32"), "size_mb": size.get(variant)}


def headline(results: dict) -> tuple[dict[str, float], dict[str, str]]:
    """A pipeline run's figures (metric name -> value) and facts (tag -> value), from its steps' results
    (summary.step_results); a run that stopped early has the figures of the steps it finished."""
    metrics, tags = {}, {}
    teacher = results.get("evaluate_teacher", {})
    metrics.update({f"teacher.{k}": v for k, v in (teacher.get("metrics") or {}).items()})
    logits = teacher_reuse(results)["logits"]
    if logits:
        metrics.update({"teacher.logit_rows_reused": logits["rows_reused"],
                        "teacher.logit_rows_computed": logits["rows_computed"]})
    if "evaluate_gate" in results:
        gate = GateDecision.from_result(results["evaluate_gate"])
        metrics.update({f"student.{k}": v for k, v in gate.metrics.items()})
        metrics.update({f"teacher.{k}": v for k, v in gate.teacher_metrics.items()})  # the gate's rows
        if gate.value is not None and gate.teacher_value:
            metrics["retention"] = gate.value / gate.teacher_value
        for key in ("teacher_agreement", "calibration_error"):
            if (gate.fidelity or {}).get(key) is not None:
                metrics[f"fidelity.{key}"] = gate.fidelity[key]
        if gate.champion_value is not None:
            metrics[f"champion.{gate.metric}"] = gate.champion_value
        if gate.latency_ms_b1 is not None:
            metrics["student.torch_latency_ms_b1"] = gate.latency_ms_b1
        tags.update({SPLIT_TAG: gate.split, "kdpipe.gate_metric": gate.metric,
                     "kdpipe.gate_passed": str(gate.passed).lower()})
    export = results.get("export_register", {})
    figures = shipped(export)
    metrics.update({f"shipped.{k}": v for k, v in figures.items() if k != "variant" and v is not None})
    if figures:
        tags[SERVED_TAG] = figures["variant"]
    if export.get("int8_label_flip_rate") is not None:
        metrics["int8.label_flip_rate"] = export["int8_label_flip_rate"]
    registry = export.get("registry") or {}
    if registry.get("version"):
        tags.update({VERSION_TAG: registry["version"], ALIASES_TAG: ",".join(registry.get("aliases", []))})
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}, tags


def record_outcome(cfg, pipeline_run: str, succeeded: bool, error: str | None = None) -> dict | None:
    """The exit handler's record of a finished pipeline run on its parent run: outcome, figures, facts and the
    summary as its note. Returns the summary (None when the store cannot be read)."""
    from mlflow.entities import Metric, RunTag

    parent, results, errors = read_run(cfg, pipeline_run)
    if parent is None:  # the store is down: the steps have said so, and nothing can be recorded
        return None
    wall = time.time() - parent.info.start_time / 1000
    summary = build_summary(cfg, pipeline_run, wall, "", None if succeeded else error or "pipeline failed",
                            read=(parent, results, errors))
    metrics, tags = headline(results)
    tags[OUTCOME_TAG] = summary["status"]
    metrics["time.steps_total_s"] = summary["timings"]["steps_total_s"]
    tags[NOTE_TAG] = note(summary, metrics)
    now = int(time.time() * 1000)
    mlflow_client(cfg).log_batch(parent.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                                 tags=[RunTag(k, str(v)) for k, v in tags.items()])
    return summary


class SplitDataset(MetaDataset):
    """One prepared split as MLflow sees a dataset: named after its source (a file, a URL, or a Hub dataset's
    split), digest = kdpipe's fingerprint of its tokens and labels, its row count in the profile."""

    def __init__(self, cfg, split: str, info: dict):
        d = cfg.data
        where = {TRANSFER: d.unlabeled or d.train, RECENT: cfg.drift.texts}.get(split) or getattr(d, split)
        if d.dataset and split != RECENT:
            source = HuggingFaceDatasetSource(d.dataset, config_name=d.dataset_config, split=where)
            name = f"{d.dataset}{'/' + d.dataset_config if d.dataset_config else ''}:{where}"
        else:
            with warnings.catch_warnings():  # a local path "could be" several local source kinds, all the same
                warnings.simplefilter("ignore")
                source = resolve_dataset_source(str(where))
            name = str(where).rstrip("/").rsplit("/", 1)[-1]
        self.rows = info["sizes"][split]
        super().__init__(source, name=f"{name} ({split})" if split in (TRANSFER, RECENT) else name,
                         digest=info["fingerprints"][split])

    @property
    def profile(self):
        return {"num_rows": self.rows}

    def to_dict(self) -> dict:
        return {**super().to_dict(), "profile": json.dumps(self.profile)}


def log_datasets(cfg, run_ids: list[str], info: dict, splits: list[str] | None = None) -> None:
    """The prepared splits a step read (default: all of them; data_info of the prepared dataset), as dataset
    inputs of each run in `run_ids`, MLflow's context tag saying which split."""
    from mlflow.entities import DatasetInput, InputTag

    inputs = [DatasetInput(SplitDataset(cfg, split, info)._to_mlflow_entity(), tags=[InputTag(CONTEXT_TAG, split)])
              for split in splits or list(info["fingerprints"])]
    for run_id in run_ids:
        mlflow_client(cfg).log_inputs(run_id, datasets=inputs)


def log_model_metrics(cfg, model_id: str, gate: GateDecision, info: dict) -> None:
    """The gate's figures on the registered version's logged model (MLflow 3: the Models page shows them per
    version), tied to the split they were measured on."""
    import mlflow

    figures = {**gate.metrics, **({"retention": gate.value / gate.teacher_value} if gate.teacher_value else {})}
    mlflow.log_metrics({k: float(v) for k, v in figures.items()}, model_id=model_id,
                       dataset=SplitDataset(cfg, gate.split, info))


def note(summary: dict, metrics: dict) -> str:
    """The summary in Markdown: the pipeline run's description in the MLflow UI."""
    lines = [f"**kdpipe run {summary['pipeline_run']}: {summary['status']}**", ""]
    if summary.get("unchanged"):
        lines += [summary["unchanged"], ""]
    elif summary.get("drift"):
        lines += [summary["drift"]["summary"], ""]
    if summary.get("registry"):
        r = summary["registry"]
        lines += [f"Registered `{r['registered_model']}` v{r['version']} ({', '.join(r['aliases'])}).", ""]
    teacher = summary.get("teacher") or {}
    if teacher.get("reused_from_run"):
        lines += [f"Teacher v{teacher['version']} reused, fine-tuned by run `{teacher['reused_from_run']}`.", ""]
    if metrics:
        lines += ["| figure | value |", "| --- | --- |"] + [f"| {k} | {v:.4g} |" for k, v in sorted(metrics.items())]
        lines.append("")
    gate = summary.get("gate")
    if gate:
        lines.append(f"Gate {'passed' if gate['passed'] else '**failed**'} ({gate['metric']} on {gate['split']}, "
                     f"{gate['rows']} rows):")
        lines += [f"- {r}" for r in gate["reasons"]] + [f"- note: {n}" for n in gate["notes"]] + [""]
    lines += [f"Error: {e}" for e in summary["errors"]]
    return "\n".join(lines).strip() + "\n"
