"""Optuna search over distillation settings, reusing the tokenized data and the cached teacher logits.

Every trial is a distill_student run (no teacher forward, no re-tokenization). Trials report the validation
metric each epoch to the pruner; a diverging (NaN) or out-of-memory trial is recorded as pruned and the
study goes on. The study lives in persistent storage, so a re-run with the same study name resumes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
import time
from pathlib import Path

from kdpipe.config import Config
from kdpipe.errors import ConfigError


def storage_url(spec: str) -> str:
    if spec.startswith("env:"):
        var = spec.removeprefix("env:")
        if var not in os.environ:
            raise ConfigError(f"hpo.storage {spec!r}: environment variable {var} is not set")
        return os.environ[var]
    return spec


def make_storage(spec: str, heartbeat_seconds: int = 30):
    """journal:<file> (embedded, safe for several local processes), sqlite:///..., postgresql://..., or
    env:<VAR> to read the URL from the environment (a Kubernetes Secret), never from the config."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    spec = storage_url(spec)
    if spec.startswith("journal:"):
        path = Path(spec.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    # A worker that dies mid-trial stops beating: a live worker then fails that trial and re-queues it.
    return optuna.storages.RDBStorage(spec, heartbeat_interval=heartbeat_seconds, grace_period=3 * heartbeat_seconds,
                                      heartbeat_stale_trial_callback=_requeue(), engine_kwargs={"pool_pre_ping": True})


def _requeue():
    """Re-queues a dead worker's trial with its params; one set of params is tried at most 3 times."""
    import optuna

    return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)


def make_pruner(name: str):
    import optuna

    return {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
            "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1),
            "none": optuna.pruners.NopPruner}[name]()


def study_name(cfg: Config, fingerprint: str = "") -> str:
    """hpo.study_name, or for "auto" one named after what decides the trials' results (config and training
    data): re-running the same search resumes its study, a search on new data starts a new one."""
    if cfg.hpo.study_name != "auto":
        return cfg.hpo.study_name
    if not fingerprint:
        raise ValueError("hpo.study_name 'auto' needs the training data's fingerprint")
    keyed = {k: v for k, v in cfg.to_dict().items() if k not in ("tracking", "gate", "export", "output_dir")}
    keyed["hpo"] = {k: v for k, v in keyed["hpo"].items() if k in ("space", "seed", "pruner", "direction", "metric")}
    digest = hashlib.sha256(json.dumps([keyed, fingerprint], sort_keys=True).encode()).hexdigest()
    return f"kdpipe-{digest[:16]}"


def open_study(cfg: Config, worker: int = 0, fingerprint: str = ""):
    """The shared study. Each worker seeds its sampler differently: equal seeds would draw equal trials."""
    import optuna

    for attempt in range(3):
        try:
            return optuna.create_study(study_name=study_name(cfg, fingerprint),
                                       storage=make_storage(cfg.hpo.storage, cfg.hpo.heartbeat_seconds),
                                       sampler=optuna.samplers.TPESampler(seed=cfg.hpo.seed + worker),
                                       pruner=make_pruner(cfg.hpo.pruner), direction=cfg.hpo.direction,
                                       load_if_exists=True)
        except Exception as e:  # workers starting together on a fresh database race to create its tables
            if attempt == 2 or type(e).__module__.split(".")[0] != "sqlalchemy":
                raise
            time.sleep(1 + attempt)


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


class _Surplus(Exception):
    """Another worker took the last of the requested trials between our check and our ask."""


def _live(trials) -> list:
    """The trials that count: not a dead worker's trial that was retried, not a surplus one."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    retried = {RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in trials} - {None}
    return [t for t in trials if t.number not in retried and "surplus" not in t.user_attrs]


def run_trials(cfg: Config, data_dir, teacher_dir: str, logits_dir, work_dir, n_trials: int | None = None,
               trial_log=None, worker: int = 0) -> dict:
    """One worker: run trials on the shared study until it holds hpo.n_trials finished trials (complete,
    pruned, or failed with an error), or hpo.timeout passes. Several workers may run this at once.

    A worker that dies mid-trial is noticed by a live one (RDB storages: its heartbeat stops for
    3 x hpo.heartbeat_seconds; journal file: its process on this machine is gone), which fails that trial and
    re-runs its params, so the study still ends with exactly n_trials. `trial_log(trial, params)` (a context
    manager yielding an optional TrainerCallback; see kdpipe.tracking.TrialRuns) records each trial
    elsewhere, e.g. as an MLflow run."""
    import warnings

    import optuna
    import torch

    from kdpipe.artifacts import load_prepared
    from kdpipe.distill import distill_student
    from kdpipe.errors import TrainingDiverged
    prep = load_prepared(data_dir)
    metric = prep.schema.primary_metric(cfg.hpo.metric if cfg.hpo.metric != "auto" else cfg.gate.metric)
    study = open_study(cfg, worker, prep.fingerprint("train"))
    study.set_user_attr("metric", metric)
    work_dir = Path(work_dir)
    target = n_trials or cfg.hpo.n_trials
    log = trial_log or (lambda trial, params: contextlib.nullcontext())

    def objective(trial):
        if len([t for t in _live(study.get_trials(deepcopy=False)) if t.number < trial.number]) >= target:
            trial.set_user_attr("surplus", True)
            raise _Surplus(f"trial {trial.number}: the study already has its {target} trials")
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        params = suggest(trial, cfg.hpo.space)
        with log(trial, params) as extra:
            callbacks = [_reporter(trial, metric)] + ([extra] if extra else [])
            try:
                result = distill_student(cfg, data_dir, teacher_dir, logits_dir, work_dir / f"trial-{trial.number}",
                                         params=params, callbacks=callbacks)
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
            trial.set_user_attr("model_dir", str(work_dir / f"trial-{trial.number}"))
            return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    heartbeat = not storage_url(cfg.hpo.storage).startswith("journal:")
    deadline = time.monotonic() + cfg.hpo.timeout if cfg.hpo.timeout else math.inf
    while time.monotonic() < deadline:
        _requeue_dead_local_trials(study)
        trials = _live(study.get_trials(deepcopy=False))
        done = sum(t.state.is_finished() for t in trials)
        waiting = sum(t.state == optuna.trial.TrialState.WAITING for t in trials)
        running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
        if done >= target:
            break
        if done + len(running) + waiting < target or waiting:
            study.optimize(objective, n_trials=1, catch=(RuntimeError, ValueError, _Surplus))
        elif heartbeat or all(_local_pid(t) for t in running):
            # The rest are running elsewhere: stay until they finish, in case a worker dies and its trial is
            # re-queued (by the storage's heartbeat, or by seeing the worker's process gone on this machine).
            time.sleep(min(cfg.hpo.heartbeat_seconds, 5))
            if heartbeat:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
        else:
            break  # journal storage, a worker on another machine: its trial cannot be told dead from slow
    return study_summary(study, metric)


def _local_pid(trial) -> int | None:
    host, _, pid = trial.user_attrs.get("worker", "").rpartition(":")
    return int(pid) if host == socket.gethostname() and pid.isdigit() else None


def _requeue_dead_local_trials(study) -> None:
    """Running trials whose worker process on this machine is gone (the journal storage has no heartbeat):
    failed, and their params re-queued, as the heartbeat does for RDB storages."""
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = _local_pid(t)
        if pid is None or pid == os.getpid() or _alive(pid):
            continue
        try:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        except (ValueError, RuntimeError):  # another worker got there first
            continue
        _requeue()(study, study.get_trials(deepcopy=False)[t.number])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed child not yet reaped by its parent is a zombie: dead for us.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def lost_trials(study) -> dict[int, str]:
    """Trials of a worker that died, and what became of their params."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    return {RetryHeartbeatStaleTrialCallback.retried_trial_number(t): f"worker lost; params re-run as trial {t.number}"
            for t in study.get_trials(deepcopy=False) if RetryHeartbeatStaleTrialCallback.retried_trial_number(t)
            is not None}


def write_report(study, path: str | Path) -> Path:
    """Optuna's plots in one self-contained HTML page (plotly.js embedded once: clusters may be offline)."""
    import optuna.visualization as vis

    metric = study.user_attrs.get("metric", "objective")
    plots = [("Optimization history", lambda: vis.plot_optimization_history(study, target_name=metric)),
             ("Parameter importances", lambda: vis.plot_param_importances(study, target_name=metric)),
             ("Parallel coordinates", lambda: vis.plot_parallel_coordinate(study, target_name=metric)),
             ("Validation metric per epoch", lambda: vis.plot_intermediate_values(study))]
    parts, embed = [f"<h1>Optuna study {study.study_name}</h1>"], True
    for title, plot in plots:
        try:
            figure = plot()
        except (ValueError, RuntimeError, ZeroDivisionError) as e:  # e.g. importances need 2+ complete trials
            parts.append(f"<h2>{title}</h2><p>Not available: {e}</p>")
            continue
        parts.append(f"<h2>{title}</h2>" + figure.to_html(full_html=False, include_plotlyjs=embed))
        embed = False
    path = Path(path)
    path.write_text("<!doctype html><html><head><meta charset='utf-8'></head><body>" + "".join(parts) + "</body></html>")
    return path


def study_summary(study, metric: str | None = None) -> dict:
    import optuna
    from optuna.trial import TrialState

    every = study.get_trials(deepcopy=False)
    trials = _live(every)
    count = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    count["lost_and_retried"] = len(every) - len(trials) - sum("surplus" in t.user_attrs for t in every)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = (max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min)(
        complete, key=lambda t: t.value) if complete else None
    ran = [t for t in trials if t.datetime_start and t.datetime_complete]
    seconds = (max(t.datetime_complete for t in ran) - min(t.datetime_start for t in ran)).total_seconds() if ran else 0
    return {"study": study.study_name, "metric": metric or study.user_attrs.get("metric"), "search_seconds": seconds,
            "direction": study.direction.name.lower(), "trials": count,
            "best_value": best.value if best else None, "best_params": best.params if best else None,
            "best_trial": best.number if best else None,
            "best_metrics": best.user_attrs.get("metrics", {}) if best else {}}  # the HPO run's metrics best_metrics.*
