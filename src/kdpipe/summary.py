"""The summary of a pipeline run, read back from MLflow (each step's child run and its result.json): what
`kdpipe run` prints and writes to summary.json."""

from __future__ import annotations

import json
from pathlib import Path

from kdpipe.config import Config
from kdpipe.tracking import BAD_INPUT_TAG, ERROR_TAG, ROLE_TAG, find_parent, mlflow_client, store_failure

def step_results(client, parent) -> dict:
    """Each step's result.json under a pipeline (parent) run, by step name (the run's role), with its run id, its
    error and whether that error was bad input."""
    import tempfile

    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  order_by=["attributes.start_time ASC"], max_results=1000)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for child in children:
            try:
                result = json.loads(Path(client.download_artifacts(child.info.run_id, "result.json", tmp)).read_text())
            except Exception:  # noqa: BLE001 (a step that failed before finishing has no result)
                result = {}
            role = child.data.tags.get(ROLE_TAG)
            seen = sum(1 for name in out if name == role or name.startswith(f"{role}#"))
            # A step run several times (the teacher's shards): teacher_shard, teacher_shard#1, ...
            out[f"{role}#{seen}" if seen else role] = {**result, "_run_id": child.info.run_id,
                                                       "_error": child.data.tags.get(ERROR_TAG),
                                                       "_bad_input": child.data.tags.get(BAD_INPUT_TAG) == "true"}
    return out


def run_outcome(results: dict, failed: bool) -> str:
    """How a pipeline run ended, from its steps' results (step_results) and whether the pipeline failed: the one
    definition, behind the summary's status, compare's outcome column and the exit code (kdpipe.errors.exit_code).
    A step attempt that failed does not fail the run when KFP's retry of it succeeded."""
    if failed:
        return "bad_input" if any(r.get("_bad_input") for r in results.values()) else "error"
    if results.get("preprocess", {}).get("unchanged"):
        return "unchanged"
    registry = results.get("export_register", {}).get("registry")
    if registry:
        return "promoted" if registry.get("champion", {}).get("promoted") else "challenger"
    gate = results.get("evaluate_gate")
    if gate and not gate.get("passed"):
        return "gate_failed"
    return "error"


def teacher_reuse(results: dict) -> dict:
    """What the run took from earlier runs: the fine-tuned teacher (its version and the run that trained it) and
    the teacher's logits (rows reused, rows computed, by how many shard tasks)."""
    prepared, logits = results.get("prepare_teacher", {}), results.get("evaluate_teacher", {}).get("logits") or {}
    shards = sum(1 for name in results if name.split("#")[0] == "teacher_shard")
    return {"reused_from_run": prepared.get("reused_from_run"), "version": prepared.get("teacher_version"),
            "logits": {"rows_reused": logits.get("rows_reused"), "rows_computed": logits.get("rows_computed"),
                       "shards": max(shards, 1)} if logits else None}


def reuse_text(reuse: dict) -> str:
    """teacher_reuse in a few words (compare's column)."""
    parts = [f"teacher v{reuse['version']}"] if reuse.get("reused_from_run") else []
    logits = reuse.get("logits") or {}
    if logits.get("rows_reused"):
        parts.append(f"{logits['rows_reused']}/{logits['rows_reused'] + logits['rows_computed']} logit rows")
    return ", ".join(parts) or "-"


def read_run(cfg: Config, pipeline_run: str) -> tuple:
    """(parent run, its steps' results, their errors) from MLflow; when the store itself is down, (None, {}, the
    outage)."""
    try:
        parent = find_parent(cfg, pipeline_run)
        results = step_results(mlflow_client(cfg), parent) if parent else {}
        return parent, results, [f"{name}: {r['_error']}" for name, r in results.items() if r.get("_error")]
    except Exception as e:
        why = store_failure(e)
        if why is None:
            raise
        return None, {}, [f"the MLflow store at tracking.uri={cfg.tracking.uri} {why}; nothing was registered"]


def build_summary(cfg: Config, pipeline_run: str, wall: float, run_dir: Path | str, failure: str | None,
                  read: tuple | None = None) -> dict:
    """Everything MLflow knows of the run (`read`: what read_run returned, when the caller has it)."""
    parent, results, errors = read or read_run(cfg, pipeline_run)
    gate = results.get("evaluate_gate", {})
    export = results.get("export_register", {})
    timings = {name: res.get("step_seconds") for name, res in results.items()}
    hpo = results.get("hpo_best", {})
    if hpo.get("search_seconds"):
        timings["hpo_search"] = hpo["search_seconds"]  # the workers ran side by side: the search's own wall time
    shards = [r for name, r in results.items() if name.split("#")[0] == "teacher_shard"]
    if shards:  # side by side: the pass's wall time is its slowest shard's
        for name in [n for n in timings if n.split("#")[0] == "teacher_shard"]:
            timings.pop(name)
        timings["teacher_shards"] = max(r.get("step_seconds") or 0 for r in shards)
    step_total = sum(v for v in timings.values() if v)
    failed = bool(failure) or (parent.data.tags.get(ERROR_TAG) is not None if parent else bool(errors))
    status = run_outcome(results, failed)
    retried = [] if failed else errors  # attempts that failed, then succeeded when KFP ran them again
    errors = errors if failed else []
    return {
        "status": status,
        "pipeline_run": pipeline_run,
        "pipeline_root": str(run_dir),
        "teacher": {"metrics": results.get("evaluate_teacher", {}).get("metrics"),
                    "split": results.get("evaluate_teacher", {}).get("split"),
                    "finetuned": results.get("prepare_teacher", {}).get("finetuned"),
                    **{k: results.get("prepare_teacher", {}).get(k) for k in ("best_epoch", "epochs_run")},
                    "search_trials": len(results.get("prepare_teacher", {}).get("search") or []),
                    **teacher_reuse(results),
                    "latency_ms_b1": results.get("evaluate_teacher", {}).get("latency_ms_b1")},
        "student": {"metrics": gate.get("metrics"), "split": gate.get("split"), "latency_ms_b1": gate.get("latency_ms_b1"),
                    "parameters": results.get("distill_student", {}).get("parameters")},
        "hpo": {k: hpo.get(k) for k in ("study", "metric", "trials", "best_trial", "best_value", "best_params")}
        if hpo else None,
        "gate": {"passed": bool(gate.get("passed")), "reasons": gate.get("reasons", []), "metric": gate.get("metric"),
                 "split": gate.get("split"), "rows": gate.get("rows"), "notes": gate.get("notes", []),
                 "fidelity": gate.get("fidelity"), "champion": gate.get("champion"),
                 # The registry's compare-and-set has the last word (another run may have moved the champion).
                 "promote_to_champion": export.get("registry", {}).get("champion", {}).get(
                     "promoted", gate.get("promote_to_champion"))} if gate else None,
        "onnx": {"path": export.get("path"), "int8_path": export.get("int8_path"), "served": export.get("served"),
                 "max_abs_logit_diff": export.get("max_abs_logit_diff"), "latency_ms": export.get("latency_ms"),
                 "int8_label_flip_rate": export.get("int8_label_flip_rate"), "int8_rejected": export.get("int8_rejected"),
                 "int8_variant": export.get("int8_variant"), "int8_search_seconds": export.get("int8_search_seconds")}
        if export else None,
        "registry": export.get("registry"),
        "mlflow": {"tracking_uri": cfg.tracking.uri, "experiment": cfg.tracking.experiment,
                   "parent_run_id": parent.info.run_id if parent else None},
        "timings": {"steps": timings, "steps_total_s": step_total, "pipeline_wall_s": wall,
                    "orchestration_overhead_s": wall - step_total,
                    "orchestration_overhead_fraction": (wall - step_total) / wall if wall else None},
        "errors": errors or ([failure] if failure else []),
        "retried": retried,
        "unchanged": results.get("preprocess", {}).get("unchanged"),
        "drift": results.get("preprocess", {}).get("drift"),
    }


def print_summary(summary: dict, steps: bool = True) -> None:
    """The summary for a person; `steps`: with each step's time (kdpipe run has shown them as the steps ended)."""
    def fmt(metrics):
        return ", ".join(f"{k} {v:.4f}" for k, v in (metrics or {}).items() if not k.startswith("roc_auc_")
                         or k == "roc_auc_macro") or "-"

    print("\nkdpipe run", summary["pipeline_run"], "->", summary["status"].upper())
    if steps:
        print(f"  {'step':<22}{'seconds':>9}")
        for step, seconds in summary["timings"]["steps"].items():
            print(f"  {step:<22}{'failed' if seconds is None else f'{seconds:.1f}':>9}")
    t = summary["timings"]
    print(f"  {'pipeline wall time':<22}{t['pipeline_wall_s']:>9.1f}  (orchestration overhead "
          f"{100 * (t['orchestration_overhead_fraction'] or 0):.1f}%)")
    if summary.get("unchanged"):  # nothing trained, nothing registered (its reason says the drift figures)
        print(f"  {summary['unchanged']}")
        print(f"  MLflow parent run {summary['mlflow']['parent_run_id']} ({summary['mlflow']['tracking_uri']})")
        return
    if summary.get("drift"):
        print(f"  {summary['drift']['summary']}" + (": retrained with the recent texts" if summary["drift"]["drifted"]
                                                    else ""))
    teacher = summary["teacher"]
    print(f"  teacher ({teacher.get('split') or '-'}): {fmt(teacher['metrics'])}")
    if teacher.get("reused_from_run"):
        print(f"    reused: registered teacher v{teacher['version']}, fine-tuned by run {teacher['reused_from_run']}")
    elif teacher.get("finetuned"):
        kept = (f": epoch {teacher['best_epoch']:g} of {teacher['epochs_run']:g} run"
                if teacher.get("best_epoch") is not None and teacher.get("epochs_run") is not None else "")
        searched = f", best of {teacher['search_trials']} search trials" if teacher.get("search_trials") else ""
        print(f"    fine-tuned{kept}{searched}, registered as teacher v{teacher['version']} (report: teacher.md)")
    if teacher.get("logits"):
        n = teacher["logits"]
        print(f"    logits: {n['rows_reused']} rows reused, {n['rows_computed']} computed"
              + (f" ({n['shards']} shards)" if n["shards"] > 1 else ""))
    if summary.get("hpo"):
        h = summary["hpo"]
        done = ", ".join(f"{n} {state}" for state, n in h["trials"].items() if n)
        print(f"  hpo: {done}; best trial {h['best_trial']} {h['metric']} {h['best_value'] or 0:.4f} {h['best_params']}")
    print(f"  student ({summary['student'].get('split') or '-'}): {fmt(summary['student']['metrics'])}")
    gate = summary["gate"]
    print(f"  gate: {'not reached' if gate is None else 'passed' if gate['passed'] else 'FAILED'}")
    for reason in (gate or {}).get("reasons", []):
        print(f"    - {reason}")
    if gate and gate.get("fidelity"):
        f = gate["fidelity"]
        print(f"    fidelity: decides as the teacher on {f['teacher_agreement']:.3f} of rows; "
              f"calibration error {f['calibration_error']:.4f}")
    for note in (gate or {}).get("notes", []):
        print(f"    note: {note}")
    if summary.get("registry"):
        r = summary["registry"]
        onnx = summary["onnx"]
        variant = f" ({onnx['int8_variant']}, of the export search)" if onnx["served"] == "int8" and onnx.get("int8_variant") else ""
        print(f"  registered {r['registered_model']} v{r['version']} aliases {r['aliases']}; serves ONNX "
              f"{onnx['served']}{variant}: {onnx['int8_path' if onnx['served'] == 'int8' else 'path']}")
        if r.get("champion", {}).get("decided_again"):
            print(f"    champion moved to v{r['champion']['champion_before']} while this run was judged: decided again")
    for error in summary["errors"]:
        print(f"  error: {error}")
    for attempt in summary.get("retried", []):
        print(f"  failed, then succeeded on retry: {attempt}")
    print(f"  MLflow parent run {summary['mlflow']['parent_run_id']} ({summary['mlflow']['tracking_uri']})")
