"""`kdpipe compare`: the pipeline runs of an experiment side by side, read back from MLflow (mlflow.search_runs
and each step's result.json): data, teacher and student metric, retention, latency, size, gate decision,
registered version and its aliases now, and the settings that differ. An HTML report adds a Pareto plot."""

from __future__ import annotations

import json
from pathlib import Path

from kdpipe.gate import GateDecision
from kdpipe.run_record import shipped
from kdpipe.summary import reuse_text, run_outcome, step_results, teacher_reuse
from kdpipe.tracking import ERROR_TAG, ROLE_TAG, RUN_TAG

IGNORED_SETTINGS = ("tracking.tags", "output_dir")  # labels and local folders, not what decides a model


def pipeline_runs(client, experiment_id: str, run_ids: list[str] | None = None, last: int | None = None) -> list:
    """The pipeline (parent) runs: the given ids, or the experiment's newest `last` (all by default), oldest
    first."""
    if run_ids:
        return [client.get_run(r) for r in run_ids]
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'pipeline'",
                              order_by=["attributes.start_time DESC"], max_results=last or 1000)
    return list(reversed(runs))


def _trials(client, parent, hpo: dict | None) -> list[float]:
    """The HPO trials' metric values (trial runs under the HPO run)."""
    if not hpo or not hpo.get("metric"):
        return []
    trials = client.search_runs([parent.info.experiment_id],
                                filter_string=f"tags.mlflow.parentRunId = '{hpo['_run_id']}'", max_results=1000)
    return [t.data.metrics[hpo["metric"]] for t in trials if hpo["metric"] in t.data.metrics]


def describe(client, parent) -> dict:
    """One pipeline run as a row of the comparison."""
    results = step_results(client, parent)
    export = results.get("export_register", {})
    gate = GateDecision.from_result(results["evaluate_gate"]) if "evaluate_gate" in results else GateDecision(False)
    registry = export.get("registry") or {}
    metric, teacher, student = gate.metric, gate.teacher_value, gate.value
    outcome = run_outcome(results, bool(parent.data.tags.get(ERROR_TAG)))
    if outcome == "error" and parent.info.status == "RUNNING":
        outcome = "running"
    aliases = []
    if registry.get("version"):
        try:
            aliases = sorted(client.get_model_version(registry["registered_model"], registry["version"]).aliases)
        except Exception:  # noqa: BLE001 (the version was deleted since)
            aliases = ["(deleted)"]
    served = shipped(export)
    return {
        "run": parent.data.tags.get(RUN_TAG, parent.info.run_id), "run_id": parent.info.run_id,
        "started": parent.info.start_time, "outcome": outcome, "data": parent.data.tags.get("kdpipe.data_fingerprint"),
        "metric": metric, "split": gate.split, "teacher": teacher, "student": student,
        "retention": student / teacher if student is not None and teacher else None,
        "latency_ms_b1": gate.latency_ms_b1, "shipped_ms_b1": served.get("latency_ms_b1"),
        "size_mb": served.get("size_mb"),
        "champion": gate.champion_value, "reused": reuse_text(teacher_reuse(results)),
        "version": registry.get("version"), "aliases": aliases,
        "settings": {k: v for k, v in parent.data.params.items() if not k.startswith(IGNORED_SETTINGS)},
        "trials": _trials(client, parent, results.get("hpo_best")),
    }


def compare(uri: str, experiment: str, run_ids: list[str] | None = None, last: int | None = None) -> dict:
    from kdpipe.errors import ConfigError
    from kdpipe.tracking import client_for

    client = client_for(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None and not run_ids:
        raise ConfigError(f"no MLflow experiment {experiment!r} at {uri}; --experiment names one "
                          f"(tracking.experiment of the config)")
    rows = [describe(client, run) for run in pipeline_runs(client, exp.experiment_id if exp else "", run_ids, last)]
    if not rows:
        raise ConfigError(f"experiment {experiment!r} at {uri} has no kdpipe pipeline runs yet")
    keys = sorted({k for r in rows for k in r["settings"]})
    differing = [k for k in keys if len({r["settings"].get(k) for r in rows}) > 1]
    return {"tracking_uri": uri, "experiment": experiment, "rows": rows, "differing": differing}


def _fmt(v, digits=4) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


COLUMNS = [("run", "run"), ("outcome", "outcome"), ("data", "data"), ("split", "split"), ("teacher", "teacher"),
           ("student", "student"), ("retention", "retention"), ("reused", "reused"),
           ("champion", "champion on these rows"),
           ("latency_ms_b1", "torch ms b1"), ("shipped_ms_b1", "shipped ms b1"), ("size_mb", "MB"),
           ("version", "version"), ("aliases", "aliases")]


def _short(text: str, width: int = 40) -> str:
    """A long setting (a path, a search space) by its end, where paths differ."""
    return text if len(text) <= width else "…" + text[-(width - 1):]


def table_rows(comparison: dict) -> list[list[str]]:
    header = [title for _, title in COLUMNS] + comparison["differing"]
    body = []
    for r in comparison["rows"]:
        cells = [",".join(r[k]) or "-" if k == "aliases" else _fmt(r[k], 2 if k.endswith(("ms_b1", "size_mb")) else 4)
                 for k, _ in COLUMNS]
        body.append(cells + [_short(_fmt(r["settings"].get(k))) for k in comparison["differing"]])
    return [header] + body


def print_table(comparison: dict) -> None:
    rows = table_rows(comparison)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    metrics = {r["metric"] for r in comparison["rows"] if r["metric"]}
    print(f"experiment {comparison['experiment']} ({comparison['tracking_uri']}): {len(comparison['rows'])} runs, "
          f"metric {', '.join(sorted(metrics)) or '-'}")
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def write_html(comparison: dict, path: str | Path) -> Path:
    """The table and a Pareto plot: student metric against the latency (batch 1, CPU) of the model each run
    shipped (the ONNX variant its registered model serves), the registered versions marked, HPO trials at their
    run's latency (a trial trains the same architecture). A run that shipped nothing is in the table only."""
    import html

    import plotly.graph_objects as go

    rows = [r for r in comparison["rows"] if r["student"] is not None and r["shipped_ms_b1"] is not None]
    fig = go.Figure()
    trial_x = [r["shipped_ms_b1"] for r in rows for _ in r["trials"]]
    trial_y = [t for r in rows for t in r["trials"]]
    if trial_y:
        fig.add_trace(go.Scatter(x=trial_x, y=trial_y, mode="markers", name="HPO trials (on validation)",
                                 marker={"size": 7, "color": "rgba(120,120,120,0.45)"}))
    for outcome, color in (("promoted", "#1b9e77"), ("challenger", "#7570b3")):
        pts = [r for r in rows if r["outcome"] == outcome]
        if pts:
            fig.add_trace(go.Scatter(
                x=[r["shipped_ms_b1"] for r in pts], y=[r["student"] for r in pts], mode="markers+text",
                name=f"runs: {outcome} (on the gate's split)", cliponaxis=False,
                marker={"size": 13, "color": color,
                                                 "symbol": ["star" if r["version"] else "circle" for r in pts]},
                text=[f"v{r['version']}{' (' + ','.join(r['aliases']) + ')' if r['aliases'] else ''}"
                      if r["version"] else "" for r in pts],
                textposition="top center", hovertext=[f"{r['run']} ({r['split']})" for r in pts]))
    front, best = [], float("-inf")
    for r in sorted(rows, key=lambda r: (r["shipped_ms_b1"], -r["student"])):
        if r["student"] > best:
            front.append(r)
            best = r["student"]
    if front:  # the runs no other run beats on both metric and latency
        fig.add_trace(go.Scatter(x=[r["shipped_ms_b1"] for r in front], y=[r["student"] for r in front],
                                 mode="lines+markers", name="Pareto front", line={"dash": "dash", "color": "#444"},
                                 marker={"size": 22, "symbol": "circle-open", "color": "#444"}))
    metric = next((r["metric"] for r in rows), "metric")
    xs = [r["shipped_ms_b1"] for r in rows] or [0.0, 1.0]
    pad = max(0.15 * (max(xs) - min(xs)), 0.1 * max(xs), 0.05)
    ys = [r["student"] for r in rows] + trial_y or [0.0, 1.0]
    ypad = max(0.12 * (max(ys) - min(ys)), 0.005)
    fig.update_xaxes(range=[max(0.0, min(xs) - pad), max(xs) + pad])
    fig.update_yaxes(range=[min(ys) - ypad, max(ys) + 2 * ypad])
    fig.update_layout(title=f"{comparison['experiment']}: student {metric} vs CPU latency", template="plotly_white",
                      xaxis_title="shipped model's latency, batch 1, CPU (ms; lower is better)",
                      yaxis_title=f"student {metric} (higher is better)", width=1000, height=560,
                      font={"size": 15}, legend={"orientation": "h", "y": -0.18})
    table = table_rows(comparison)
    cells = "".join("<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{html.escape(c)}</{'th' if i == 0 else 'td'}>"
                                     for c in row) + "</tr>" for i, row in enumerate(table))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>kdpipe compare: "
            f"{html.escape(comparison['experiment'])}</title><style>body{{font-family:sans-serif;margin:24px}}"
            f"table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:4px 8px;"
            f"text-align:right;white-space:nowrap}}th{{background:#f3f3f3}}</style></head><body>"
            f"<h2>kdpipe compare: {html.escape(comparison['experiment'])}</h2>"
            f"<p>MLflow {html.escape(comparison['tracking_uri'])}; the champion column is the champion re-scored on "
            f"each run's evaluation rows.</p>"
            + fig.to_html(full_html=False, include_plotlyjs=True)
            + f"<h3>Runs</h3><div style='overflow-x:auto'><table>{cells}</table></div></body></html>")
    Path(path).write_text(page)
    return Path(path)


def log_report(uri: str, experiment: str, comparison: dict, html_path: str | Path) -> str:
    """Attach the report (and the table as JSON) to a `compare` run of the experiment; returns its id."""
    from kdpipe.tracking import client_for

    client = client_for(uri)
    exp = client.get_experiment_by_name(experiment)
    run = client.create_run(exp.experiment_id, run_name="kdpipe-compare", tags={ROLE_TAG: "compare"})
    client.log_artifact(run.info.run_id, str(html_path))
    client.log_text(run.info.run_id, json.dumps(comparison, indent=2, default=str), "comparison.json")
    client.set_terminated(run.info.run_id)
    return run.info.run_id
