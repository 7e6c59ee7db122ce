"""MLflow: one parent run per pipeline run, one child run per step, the Model Registry with aliases.

Steps run in separate processes (pods), so the parent is found by its tag `kdpipe.pipeline_run`, created by
the first step that needs it. Credentials come from the environment (MLFLOW_TRACKING_USERNAME/PASSWORD or
TOKEN, from a Kubernetes Secret), never from the config.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from kdpipe import __version__
from kdpipe.errors import is_bad_input

RUN_TAG, ROLE_TAG, ERROR_TAG = "kdpipe.pipeline_run", "kdpipe.role", "kdpipe.error"
IMAGE_TAG, IN_IMAGE_ENV = "kdpipe.image", "KDPIPE_IN_IMAGE"  # the image a step ran in, as its image sets it
BAD_INPUT_TAG = "kdpipe.bad_input"  # "true" on a step run that failed on bad input: a retry would fail the same way
TRIAL_MODEL = "trial_model"  # a trial run's model, logged only with hpo.reuse_best_model
HPO_ROLE = "hpo_best"  # the HPO run (the workers' trials under it) is the hpo_best step's run


_OPENED: set[str] = set()

# MLflow's own default retries a dead server for about 4 minutes per request; a step that cannot track fails in
# seconds instead (a KFP retry, or the user, runs it again). Set these variables to choose otherwise.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


def open_store(uri: str) -> None:
    """MLflow creates a fresh SQLite store's tables when it first opens it; two processes doing that at once
    corrupt the store ("table ... already exists", and every later run fails). Each process's first open of a
    SQLite store is therefore serialized by a lock file beside it: the first creates the tables, the others
    wait and find them. Other stores (a tracking server) need nothing."""
    if uri in _OPENED:
        return
    for key, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if uri.startswith("sqlite:///"):
        import fcntl

        from mlflow.tracking import MlflowClient

        with open(uri.removeprefix("sqlite:///") + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                MlflowClient(uri).search_experiments(max_results=1)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    _OPENED.add(uri)


def store_failure(error: BaseException) -> str | None:
    """What went wrong, in a few words, when `error` comes from the tracking store being down or refusing writes
    (not from a bug or bad input); else None."""
    import requests
    import sqlalchemy.exc

    seen = error
    while seen is not None:
        text = str(seen).splitlines()[0] if str(seen) else type(seen).__name__
        if "500 error responses" in text or "error code 5" in text:
            return f"answers with server errors ({text[:300]})"
        if isinstance(seen, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                             requests.exceptions.RetryError)) or text.startswith("API request to "):
            return f"did not answer ({text[:300]})"
        if isinstance(seen, sqlalchemy.exc.OperationalError):
            return f"refused a write ({text[:300]})"
        if isinstance(seen, sqlalchemy.exc.DatabaseError) and not isinstance(seen, sqlalchemy.exc.IntegrityError):
            return f"cannot be read: the database is damaged ({text[:300]}); restore it from a backup"
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def store_failures_in_one_line(cfg):
    """A tracking outage ends the step with one line naming tracking.uri (exit 1: a retry may fix it), not with
    pages of urllib3 and SQLAlchemy tracebacks."""
    try:
        yield
    except Exception as e:
        why = store_failure(e)
        if why is None:
            raise
        raise SystemExit(f"kdpipe: the MLflow store at tracking.uri={cfg.tracking.uri} {why}; nothing was "
                         f"registered by this step. Check that it is up and writable, then run again") from None


def mlflow_client(cfg):
    return client_for(cfg.tracking.uri)


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    open_store(uri)
    return MlflowClient(uri)


def _mlflow(cfg):
    import mlflow

    open_store(cfg.tracking.uri)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    return mlflow


def experiment_id(cfg, name: str | None = None) -> str:
    """The id of the experiment `name` (default tracking.experiment), created if missing."""
    mlflow = _mlflow(cfg)
    name = name or cfg.tracking.experiment
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if cfg.tracking.uri.startswith("sqlite:///"):
        # Keep artifacts beside the SQLite file, not in whatever directory a step happens to run in.
        location = (Path(urlsplit(cfg.tracking.uri).path).parent / "mlartifacts").resolve().as_uri()
    try:  # a model-training experiment: MLflow's UI opens it on its runs table (not the GenAI overview)
        return mlflow.create_experiment(name, artifact_location=location,
                                        tags={"mlflow.experimentKind": "custom_model_development"})
    except Exception:  # created meanwhile by a parallel step
        return mlflow.get_experiment_by_name(name).experiment_id


def code_version() -> str:
    sha = os.environ.get("KDPIPE_GIT_SHA")
    if not sha:
        try:
            sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                                 cwd=Path(__file__).parent).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _find(cfg, value: str, role: str, tag: str = RUN_TAG) -> list:
    """Runs of this role whose `tag` is `value` (by default: of this pipeline run), earliest first."""
    return mlflow_client(cfg).search_runs(
        [experiment_id(cfg)], filter_string=f"tags.`{tag}` = '{value}' and tags.`{ROLE_TAG}` = '{role}'",
        order_by=["attributes.start_time ASC", "attributes.run_id ASC"], max_results=10)


def find_parent_by_tag(cfg, key: str, value: str):
    """The pipeline's parent run carrying tag key=value (e.g. the invocation that started it)."""
    runs = _find(cfg, value, "pipeline", tag=key)
    return runs[0] if runs else None


def find_parent(cfg, pipeline_run: str):
    runs = _find(cfg, pipeline_run, "pipeline")
    return runs[0] if runs else None


def parent_run_id(cfg, pipeline_run: str) -> str:
    found = find_parent(cfg, pipeline_run)
    if found:
        return found.info.run_id
    client = mlflow_client(cfg)
    run = client.create_run(experiment_id(cfg), run_name=pipeline_run, tags={
        **cfg.tracking.tags, RUN_TAG: pipeline_run, ROLE_TAG: "pipeline", "kdpipe.config_hash": cfg.hash(),
        "kdpipe.code_version": code_version(), "mlflow.source.name": "kdpipe"})
    for key, value in flatten(cfg.to_dict()).items():
        client.log_param(run.info.run_id, key, str(value)[:6000])
    return run.info.run_id


def hpo_run_id(cfg, pipeline_run: str) -> str:
    """The HPO step's run, a child of the pipeline run; every worker logs its trials under it. Workers start
    together, so each may create one: all keep the earliest and the others are deleted."""

    found = _find(cfg, pipeline_run, HPO_ROLE)
    if found:
        return found[0].info.run_id
    client = mlflow_client(cfg)
    mine = client.create_run(experiment_id(cfg), run_name="hpo", tags={
        RUN_TAG: pipeline_run, ROLE_TAG: HPO_ROLE, "mlflow.parentRunId": parent_run_id(cfg, pipeline_run)}).info.run_id
    winner = _find(cfg, pipeline_run, HPO_ROLE)[0].info.run_id
    if winner != mine:
        client.delete_run(mine)
    return winner


def tag_parent(cfg, pipeline_run: str, tags: dict) -> None:
    client = mlflow_client(cfg)
    run_id = parent_run_id(cfg, pipeline_run)
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


@contextlib.contextmanager
def step_run(cfg, pipeline_run: str, step: str, run_id: str | None = None):
    """A child run for one step (or the existing run `run_id`); a failure is recorded on it (tag kdpipe.error,
    status FAILED) and re-raised."""
    mlflow = _mlflow(cfg)
    if run_id:
        started = mlflow.start_run(run_id=run_id)
    else:
        refuse_retry_of_bad_input(cfg, pipeline_run, step)
        started = mlflow.start_run(run_name=step, experiment_id=experiment_id(cfg),
                                   parent_run_id=parent_run_id(cfg, pipeline_run),
                                   tags={RUN_TAG: pipeline_run, ROLE_TAG: step})
    with started as run, failures_recorded(cfg, run.info.run_id):
        image = os.environ.get(IN_IMAGE_ENV)
        if image:  # set by the image (docker/Dockerfile): which build this step ran in
            mlflow.set_tags({IMAGE_TAG: image, "kdpipe.git_sha": os.environ.get("KDPIPE_GIT_SHA", "")})
        yield run


def refuse_retry_of_bad_input(cfg, pipeline_run: str, step: str) -> None:
    """KFP retries a failed task whatever failed (its retry policy cannot tell a lost node from bad input). An
    attempt after one that failed on bad input ends at once with that message instead of working for minutes to
    fail the same way."""
    for run in _find(cfg, pipeline_run, step):
        if run.data.tags.get(BAD_INPUT_TAG) == "true":
            raise SystemExit(f"kdpipe: {run.data.tags.get(ERROR_TAG)} (an earlier attempt of this step failed on "
                             f"this bad input: not retried)")


@contextlib.contextmanager
def failures_recorded(cfg, run_id: str):
    """Record an exception on the run (tag kdpipe.error, status FAILED). Bad input or setting (kdpipe.errors: a
    retry would fail the same way) is tagged kdpipe.bad_input and becomes a one-line exit: its message says what
    to do, and a library traceback would only bury it."""

    try:
        yield
    except Exception as e:
        if store_failure(e):
            raise  # recording it needs the store that just failed
        client = mlflow_client(cfg)
        client.set_tag(run_id, ERROR_TAG, f"{type(e).__name__}: {e}"[:5000])
        if is_bad_input(e):
            client.set_tag(run_id, BAD_INPUT_TAG, "true")
            client.set_terminated(run_id, "FAILED")
            raise SystemExit(f"kdpipe: {type(e).__name__}: {e}") from None
        raise


class TrialRuns:
    """Each Optuna trial as an MLflow run under the HPO run: its params, the validation metrics of every epoch,
    its final metrics, and its state (FINISHED = complete, KILLED = pruned, FAILED = error)."""

    def __init__(self, cfg, pipeline_run: str, hpo_id: str):
        self.cfg, self.pipeline_run, self.hpo_id = cfg, pipeline_run, hpo_id

    @contextlib.contextmanager
    def __call__(self, trial, params: dict):
        import optuna

        mlflow = _mlflow(self.cfg)
        tags = {RUN_TAG: self.pipeline_run, ROLE_TAG: "hpo_trial", "optuna.study": trial.study.study_name,
                "optuna.trial_number": str(trial.number), "kdpipe.worker": trial.user_attrs.get("worker", "")}
        with mlflow.start_run(run_name=f"trial-{trial.number}", experiment_id=experiment_id(self.cfg),
                              parent_run_id=self.hpo_id, tags=tags):
            mlflow.log_params(params)
            try:
                yield _epoch_metrics()
            except optuna.TrialPruned as e:
                mlflow.set_tags({"optuna.state": "PRUNED", "optuna.reason": str(e)[:5000]})
                mlflow.end_run("KILLED")
                raise
            except BaseException as e:
                mlflow.set_tags({"optuna.state": "FAIL", ERROR_TAG: f"{type(e).__name__}: {e}"[:5000]})
                mlflow.end_run("FAILED")
                raise
            mlflow.log_metrics({k: float(v) for k, v in trial.user_attrs.get("metrics", {}).items()})
            mlflow.set_tag("optuna.state", "COMPLETE")
            if self.cfg.hpo.reuse_best_model:
                mlflow.log_artifacts(str(Path(trial.user_attrs["model_dir"]) / "model"), TRIAL_MODEL)


def _epoch_metrics():
    from transformers import TrainerCallback

    class EpochMetrics(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            import mlflow

            mlflow.log_metrics({k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))},
                               step=int(round(state.epoch or 0)))

    return EpochMetrics()


def mark_lost_trials(cfg, hpo_id: str, lost: dict[int, str]) -> None:
    """Trial runs left RUNNING by a worker that died: FAILED, with what became of their params."""

    client = mlflow_client(cfg)
    for run in child_runs(cfg, hpo_id):
        number = run.data.tags.get("optuna.trial_number")
        if run.info.status == "RUNNING" and number is not None and int(number) in lost:
            client.set_tag(run.info.run_id, "optuna.state", "FAIL")
            client.set_tag(run.info.run_id, ERROR_TAG, lost[int(number)])
            client.set_terminated(run.info.run_id, "FAILED")


def download_trial_model(cfg, pipeline_run: str, hpo_id: str, trial_number: int, dest: str | Path) -> bool:
    """The model of trial `trial_number`, when a trial of this pipeline run logged it (so: this data, this teacher),
    into dest/model. False (train again with its params) when the best trial ran in an earlier pipeline run."""
    import logging

    import mlflow

    found = [r for r in child_runs(cfg, hpo_id) if r.data.tags.get("optuna.trial_number") == str(trial_number)
             and r.data.tags.get("optuna.state") == "COMPLETE" and r.data.tags.get(RUN_TAG) == pipeline_run]
    if not found:
        logging.getLogger(__name__).warning("hpo.reuse_best_model: trial %s did not run in this pipeline run; "
                                            "training again with its params", trial_number)
        return False
    local = mlflow.artifacts.download_artifacts(run_id=found[0].info.run_id, artifact_path=TRIAL_MODEL,
                                                dst_path=str(dest), tracking_uri=cfg.tracking.uri)
    Path(local).rename(Path(dest) / "model")
    return True


def numbers(result: dict) -> dict[str, float]:
    """The numeric leaves of a step result, under flat dotted names (booleans are not numbers here)."""
    return {k: float(v) for k, v in flatten(result).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_result(result: dict) -> None:
    """Numbers become metrics; everything else stays in the step's JSON artifact."""
    import mlflow

    metrics = numbers(result)
    if metrics:
        mlflow.log_metrics({k.replace("@", "_"): v for k, v in metrics.items()})


def close_steps(cfg, pipeline_run: str, succeeded: bool, error: str | None = None) -> str:
    """The exit handler's first act: a step run still RUNNING lost its process (a pod killed for memory, a node
    lost): it is marked KILLED; on failure the first failure found becomes the parent's error. Returns the parent
    run's id."""
    client = mlflow_client(cfg)
    run_id = parent_run_id(cfg, pipeline_run)
    for child in child_runs(cfg, run_id):
        if child.info.status == "RUNNING":
            end_unfinished(cfg, child.info.run_id, "the step's process ended without closing its run (killed?)")
    if not succeeded:
        failed = [r for r in child_runs(cfg, run_id) if r.data.tags.get(ERROR_TAG)]
        message = failed[0].data.tags[ERROR_TAG] if failed else (error or "pipeline failed")
        client.set_tag(run_id, ERROR_TAG, message[:5000])
    return run_id


def end_parent(cfg, run_id: str, succeeded: bool) -> None:
    mlflow_client(cfg).set_terminated(run_id, "FINISHED" if succeeded else "FAILED")


def child_runs(cfg, parent_id: str) -> list:
    return mlflow_client(cfg).search_runs(
        [experiment_id(cfg)], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
        order_by=["attributes.start_time ASC"], max_results=1000)


def end_unfinished(cfg, run_id: str, why: str) -> None:
    """The run and every run under it still RUNNING: ended KILLED, the reason in kdpipe.error."""
    client = mlflow_client(cfg)
    for child in child_runs(cfg, run_id):
        if child.info.status == "RUNNING":
            end_unfinished(cfg, child.info.run_id, why)
    run = client.get_run(run_id)
    if run.info.status == "RUNNING":
        if not run.data.tags.get(ERROR_TAG):
            client.set_tag(run_id, ERROR_TAG, why)
        client.set_terminated(run_id, "KILLED")
