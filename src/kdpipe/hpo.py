"""Optuna search over distillation settings, reusing the tokenized data and the cached teacher logits.

Every trial is a distill_student run (no teacher forward, no re-tokenization). Trials report the validation
metric each epoch to the pruner; a diverging (NaN) or out-of-memory trial is recorded as pruned and the
study goes on. The study lives in persistent storage, so a re-run with the same study name resumes it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from kdpipe.config import Config
from kdpipe.errors import ConfigError


def make_storage(spec: str):
    """journal:<file> (embedded, safe for several local processes), sqlite:///..., postgresql://..., or
    env:<VAR> to read the URL from the environment (a Kubernetes Secret), never from the config."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if spec.startswith("env:"):
        var = spec.removeprefix("env:")
        if var not in os.environ:
            raise ConfigError(f"hpo.storage {spec!r}: environment variable {var} is not set")
        spec = os.environ[var]
    if spec.startswith("journal:"):
        path = Path(spec.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    # A worker that dies mid-trial stops beating; its trial is then marked FAILED and not lost silently.
    return optuna.storages.RDBStorage(spec, heartbeat_interval=30, grace_period=90)


def make_pruner(name: str):
    import optuna

    return {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
            "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1),
            "none": optuna.pruners.NopPruner}[name]()


def open_study(cfg: Config):
    import optuna

    return optuna.create_study(study_name=cfg.hpo.study_name, storage=make_storage(cfg.hpo.storage),
                               sampler=optuna.samplers.TPESampler(seed=cfg.hpo.seed),
                               pruner=make_pruner(cfg.hpo.pruner), direction=cfg.hpo.direction,
                               load_if_exists=True)


def suggest(trial, space: dict) -> dict:
    params = {}
    for name, p in space.items():
        if p.type == "categorical":
            params[name] = trial.suggest_categorical(name, p.choices)
        elif p.type == "int":
            params[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log)
        else:
            params[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
    return params


def _reporter(trial, metric: str):
    """A TrainerCallback: report each epoch's validation metric to the pruner (a NaN training loss is caught
    by the trainer itself: TrainingDiverged)."""
    import optuna
    from transformers import TrainerCallback

    class Report(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            value = (metrics or {}).get(f"eval_{metric}")
            if value is None:
                return
            if not math.isfinite(value):
                raise optuna.TrialPruned(f"diverged: eval_{metric} = {value}")
            trial.report(value, step=int(round(state.epoch or 0)))
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {state.epoch:.0f} with {metric} {value:.4f}")

    return Report()


def run_trials(cfg: Config, data_dir, teacher_dir: str, logits_dir, work_dir, n_trials: int | None = None) -> dict:
    """One worker: run trials on the shared study until the study holds hpo.n_trials finished trials
    (complete, pruned or failed) or hpo.timeout passes."""
    import optuna
    import torch

    from kdpipe.data import load_prepared
    from kdpipe.distill import distill_student
    from kdpipe.errors import TrainingDiverged
    from kdpipe.metrics import primary_metric

    metric = primary_metric(load_prepared(data_dir).schema, cfg.hpo.metric if cfg.hpo.metric != "auto"
                            else cfg.gate.metric)
    study = open_study(cfg)
    work_dir = Path(work_dir)

    def objective(trial):
        params = suggest(trial, cfg.hpo.space)
        try:
            result = distill_student(cfg, data_dir, teacher_dir, logits_dir, work_dir / f"trial-{trial.number}",
                                     params=params, callbacks=[_reporter(trial, metric)])
        except TrainingDiverged as e:
            trial.set_user_attr("stopped", str(e))
            raise optuna.TrialPruned(f"diverged: {e}") from None
        except torch.OutOfMemoryError as e:
            trial.set_user_attr("stopped", "out of memory")
            raise optuna.TrialPruned(f"out of memory: {str(e).splitlines()[0]}") from None
        value = result["metrics"][metric]
        if not math.isfinite(value):
            raise optuna.TrialPruned(f"diverged: {metric} = {value}")
        trial.set_user_attr("metrics", result["metrics"])
        return value

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    target = n_trials or cfg.hpo.n_trials
    remaining = target - sum(t.state in finished for t in study.trials)
    if remaining > 0:  # a resumed study only runs what is missing
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study.optimize(objective, n_trials=remaining, timeout=cfg.hpo.timeout,
                       callbacks=[optuna.study.MaxTrialsCallback(target, states=finished)],
                       catch=(RuntimeError, ValueError))
    return study_summary(study, metric)


def study_summary(study, metric: str) -> dict:
    import optuna

    states = [t.state for t in study.trials]
    count = {s.name.lower(): states.count(s) for s in optuna.trial.TrialState}
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial if complete else None
    return {"metric": metric, "trials": count, "best_value": best.value if best else None,
            "best_params": best.params if best else None, "best_trial": best.number if best else None}
