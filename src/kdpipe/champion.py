"""The current champion re-scored on this run's evaluation rows, next to the challenger: both numbers on the same
rows, their difference, a paired test, and the decision. The gate judges with it, and export-register again when
another run moved the `champion` alias meanwhile (the registry's compare-and-set)."""

from __future__ import annotations

import numpy as np

from kdpipe.metrics import compute_metrics
from kdpipe.significance import mcnemar, paired_bootstrap
from kdpipe.task import LabelSchema

ROW_METRICS = ("accuracy", "subset_accuracy")  # a per-row right/wrong: McNemar; any other metric: bootstrap
RETRAIN_KEY_TAG = "kdpipe.retrain_key"  # on a pipeline run: its config and data, as unchanged_since_champion compares


def champion_version(cfg) -> str | None:
    from kdpipe.registry import current_champion
    from kdpipe.tracking import mlflow_client

    return current_champion(mlflow_client(cfg), cfg.tracking.registered_model)


def retrain_key(cfg, fingerprints: dict) -> str:
    """What decides a trained model: the config (its labels and output folder aside) and every split's data."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps([cfg.hash(), fingerprints], sort_keys=True).encode()).hexdigest()[:16]


def unchanged_since_champion(cfg, key: str) -> str | None:
    """Why there is nothing to retrain (the pipeline run that produced the champion had this config and data), or
    None. What makes a nightly schedule cheap: such a run stops after preprocess."""
    from kdpipe.tracking import RUN_TAG, mlflow_client

    version = champion_version(cfg)
    if version is None:
        return None
    client = mlflow_client(cfg)
    step_run = client.get_run(client.get_model_version(cfg.tracking.registered_model, version).run_id)
    parent_id = step_run.data.tags.get("mlflow.parentRunId")
    producer = client.get_run(parent_id) if parent_id else step_run
    if producer.data.tags.get(RETRAIN_KEY_TAG) != key:
        return None
    return (f"config and data (every split) are those of pipeline run {producer.data.tags.get(RUN_TAG, parent_id)}, "
            f"which produced champion v{version} of {cfg.tracking.registered_model}: nothing to retrain "
            f"(--force retrains anyway)")


def judge_champion(cfg, version: str | None, schema: LabelSchema, metric: str, texts: list[str], labels,
                   challenger_logits, challenger_thresholds, recent: tuple | None = None) -> dict | None:
    """None when there is no champion. Otherwise the champion (version) scored on `texts` with its own tokenizer
    and thresholds, compared with the challenger's logits on the same rows; `promote` is the champion part of the
    decision (the gate's own checks come on top). `recent`: (texts, challenger logits, teacher logits) of held-out
    recent texts, for the teacher-judged comparison beside it (`teacher_judged`); gate.champion_comparison says
    which of the two decides."""
    from kdpipe.errors import KdpipeError
    from kdpipe.pyfunc import load_registered

    if version is None:
        return None
    g, name = cfg.gate, cfg.tracking.registered_model
    out = {"version": version, "metric": metric, "rows": len(texts)}
    try:
        # fp32, as the challenger's logits are: the comparison is of models, not of their quantization
        champion = load_registered(f"models:/{name}/{version}", "fp32")
    except KdpipeError as e:
        return {**out, "promote": False, "reason": f"champion v{version} cannot be re-scored ({e}); promote by hand "
                                                   f"with `kdpipe promote {name} VERSION` if this model should serve"}
    if (champion.problem_type, champion.labels) != (schema.problem_type, schema.label_names):
        return {**out, "promote": False, "reason": f"champion v{version} predicts {champion.labels} "
                                                   f"({champion.problem_type}), this run {schema.label_names}: not "
                                                   f"comparable; promote by hand with `kdpipe promote` if intended"}
    labels = np.asarray(labels)
    champion_logits = champion.run(list(texts))[0]

    def value(logits, thresholds, rows=slice(None)):
        return compute_metrics(logits[rows], labels[rows], schema, thresholds).get(metric, float("nan"))

    ch, ca = value(challenger_logits, challenger_thresholds), value(champion_logits, champion.threshold)
    if metric in ROW_METRICS:
        test = mcnemar(_row_right(challenger_logits, labels, schema, challenger_thresholds),
                       _row_right(champion_logits, labels, schema, champion.threshold), g.significance_level)
    else:
        test = paired_bootstrap(lambda rows: value(challenger_logits, challenger_thresholds, rows)
                                - value(champion_logits, champion.threshold, rows),
                                len(labels), g.significance_level, g.bootstrap_samples, seed=cfg.data.seed)
    difference = ch - ca
    better = difference >= g.min_improvement_over_champion
    promote = better and (test["significant"] or not g.require_significance)
    why = (f"challenger {metric} {ch:.4f} vs champion v{version} {ca:.4f} on the same {len(labels)} rows: "
           f"{difference:+.4f} (needs {g.min_improvement_over_champion:+}), {_test_text(test)}")
    if better and not promote:
        why += "; gate.require_significance needs the paired test"
    verdict = {**out, "champion_value": ca, "challenger_value": ch, "difference": difference, **test,
               "promote": promote, "reason": why + (": takes the champion alias" if promote else ": stays challenger")}
    mode = g.champion_comparison
    if recent is not None:
        verdict["teacher_judged"] = _by_the_teacher(cfg, version, champion, schema, recent, challenger_thresholds)
    if mode == "labelled":
        if recent is not None:
            verdict["reason"] += f"; {verdict['teacher_judged']['reason']} (shown; gate.champion_comparison decides)"
        return verdict
    if recent is None:
        verdict["reason"] += (f" (gate.champion_comparison {mode}: no recent texts were held out, so the labelled "
                              f"comparison decides)")
        return verdict
    judged = verdict["teacher_judged"]
    verdict["promote"] = judged["promote"] and (mode == "teacher_judged" or promote)
    verdict["reason"] = (f"{judged['reason']}; labelled: {why}" + (": takes the champion alias" if verdict["promote"]
                                                                   else ": stays challenger"))
    return verdict


def _by_the_teacher(cfg, version: str, champion, schema: LabelSchema, recent: tuple, challenger_thresholds) -> dict:
    """Challenger and champion against the teacher's decisions on held-out recent texts (kdpipe.drift)."""
    from kdpipe.drift import teacher_judged

    texts, challenger_logits, teacher_logits = recent
    g = cfg.gate
    judged = teacher_judged(schema.decide(schema.scores(challenger_logits), challenger_thresholds),
                            schema.decide(champion.run(list(texts))[1], champion.threshold),
                            schema.decide(schema.scores(teacher_logits), cfg.metrics.threshold),
                            g.significance_level)
    difference = judged["challenger_agreement"] - judged["champion_agreement"]
    better = difference >= g.min_improvement_over_champion
    promote = better and (judged["significant"] or not g.require_significance)
    reason = (f"teacher-judged: the challenger decides as the teacher on {judged['challenger_agreement']:.4f} of "
              f"{judged['rows']} held-out recent texts, champion v{version} on {judged['champion_agreement']:.4f}: "
              f"{difference:+.4f} (needs {g.min_improvement_over_champion:+}), McNemar p={judged['p_value']:.3g} "
              f"({judged['only_challenger_right']} rows only the challenger agrees, {judged['only_champion_right']} "
              f"only the champion)")
    return {**judged, "difference": difference, "promote": promote, "reason": reason}


def _row_right(logits, labels, schema: LabelSchema, thresholds) -> np.ndarray:
    decided = schema.decide(schema.scores(logits), thresholds)
    return (decided == labels).all(axis=1) if schema.multi_label else decided == labels


def _test_text(test: dict) -> str:
    if test["test"] == "mcnemar":
        return (f"McNemar p={test['p_value']:.3g} ({test['only_challenger_right']} rows only the challenger gets "
                f"right, {test['only_champion_right']} only the champion)")
    if test["interval"] is None:
        return "paired bootstrap undefined on these rows"
    low, high = test["interval"]
    return f"paired bootstrap {100 * (1 - test['level']):.0f}% interval [{low:+.4f}, {high:+.4f}]"
