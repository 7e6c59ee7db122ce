"""`kdpipe submit` and `kdpipe schedule`: the compiled pipeline on a Kubeflow Pipelines server, through kfp.Client.

The pipeline is uploaded once per distinct compiled spec (its version is named after the spec's hash, so the same
spec never makes a second version); each run or schedule passes the resolved config as the `config_json`
parameter. A config that names something only this machine has is refused before anything is sent."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import tempfile
import uuid
from pathlib import Path

from kdpipe.config import Config
from kdpipe.errors import ConfigError
from kdpipe.sources import is_remote_model, is_url, looks_like_path
from kdpipe_kfp.containers import check_topology
from kdpipe_kfp.local import INVOCATION_TAG, pipeline_arguments
from kdpipe_kfp.pipeline import Placement, compile_pipeline

PIPELINE_NAME = "kdpipe"


def check_portable(cfg: Config) -> None:
    """Every input and store the config names must be reachable from a pod: the key is named otherwise."""
    fix = ("a pod cannot read this machine's files: put it in object storage (s3://, gs://), on the Hub, in the "
           "MLflow registry (models:/NAME@ALIAS), or in the image")
    for key, value in cfg.input_files():
        if not is_url(value):
            raise ConfigError(f"{key} {value}: a path on this machine; {fix}")
    for key, ref in cfg.input_models():
        if not is_remote_model(ref) and looks_like_path(ref):
            raise ConfigError(f"{key} {ref}: a folder on this machine; {fix}")
    check_topology(cfg, "kdpipe submit/schedule")


# Quartz-style 6-field cron as KFP's scheduler reads it (robfig/cron): seconds minutes hours day-of-month month
# day-of-week; each field *, ?, numbers, ranges, lists, steps, or names.
_CRON_FIELD = re.compile(r"^(\*|\?|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/\d+)?(,(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/\d+)?)*$")
_CRON_RANGES = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def check_cron(cron: str) -> None:
    fields = cron.split()
    if len(fields) != 6:
        raise ConfigError(f"--cron {cron!r}: KFP takes 6 fields (seconds minutes hours day-of-month month "
                          f"day-of-week), e.g. '0 0 3 * * *' for 03:00 every day; this has {len(fields)}")
    for field, (low, high), name in zip(fields, _CRON_RANGES, ("seconds", "minutes", "hours", "day-of-month",
                                                                 "month", "day-of-week")):
        numbers = [int(n) for n in re.findall(r"(?<![/\d])\d+", field)]
        if not _CRON_FIELD.match(field) or any(not low <= n <= high for n in numbers):
            raise ConfigError(f"--cron {cron!r}: the {name} field {field!r} is not valid ({low}-{high}, *, ranges, "
                              f"lists, steps)")


def compiled_spec(placement: Placement, folder: str) -> tuple[Path, str]:
    """The compiled pipeline file and its version name: the hash of its content."""
    path = compile_pipeline(Path(folder) / "kdpipe_pipeline.yaml", placement)
    return path, f"{PIPELINE_NAME}-{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"


@contextlib.contextmanager
def prepared(cfg: Config, placement: Placement, experiment: str, name: str, force: bool = False):
    """The compiled pipeline file (while open) and what submit/schedule send: the pipeline version and the run's
    parameters, tagged with an invocation id that finds the run's MLflow parent again."""
    invocation = uuid.uuid4().hex
    cfg = cfg.model_copy(deep=True)
    cfg.tracking.tags = {**cfg.tracking.tags, INVOCATION_TAG: invocation}
    with tempfile.TemporaryDirectory() as folder:
        path, version = compiled_spec(placement, folder)
        yield path, {"pipeline": PIPELINE_NAME, "pipeline_version": version, "experiment": experiment,
                     "name": name, "parameters": pipeline_arguments(cfg, force=force), "invocation": invocation}


def request(cfg: Config, placement: Placement, experiment: str, name: str, force: bool = False) -> dict:
    """What submit/schedule would send (printed by --dry-run)."""
    with prepared(cfg, placement, experiment, name, force) as (_, sent):
        return sent


def connect(host: str):
    import kfp

    try:
        return kfp.Client(host=host)
    except Exception as e:  # noqa: BLE001 (refused, DNS, TLS, auth: all mean "no KFP API here for us")
        raise ConfigError(f"--host {host}: no Kubeflow Pipelines API answers there ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); give the API endpoint "
                          f"(e.g. http://localhost:8080 after kubectl port-forward svc/ml-pipeline-ui 8080:80)") from None


def ensure_version(client, path: Path, version: str) -> tuple[str, str]:
    """The pipeline's id and the id of the version holding this compiled spec, uploading only what is new."""
    import kfp_server_api

    pipeline_id = client.get_pipeline_id(PIPELINE_NAME)
    if pipeline_id is None:
        pipeline_id = client.pipelines.pipeline_service_create_pipeline(kfp_server_api.V2beta1Pipeline(
            display_name=PIPELINE_NAME, description="kdpipe: distil, gate, export and register a student "
                                                    "classifier")).pipeline_id
    found = client.list_pipeline_versions(pipeline_id, filter=_name_filter(version)).pipeline_versions or []
    if found:
        return pipeline_id, found[0].pipeline_version_id
    return pipeline_id, client.upload_pipeline_version(str(path), version, pipeline_id=pipeline_id).pipeline_version_id


def _name_filter(name: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


def submit(cfg: Config, host: str, placement: Placement, experiment: str, name: str, force: bool = False) -> dict:
    client = connect(host)
    with prepared(cfg, placement, experiment, name, force) as (path, sent):
        pipeline_id, version_id = ensure_version(client, path, sent["pipeline_version"])
    exp = client.create_experiment(name=experiment)
    run = client.run_pipeline(exp.experiment_id, name, params=sent["parameters"], pipeline_id=pipeline_id,
                              version_id=version_id)
    return {**sent, "client": client, "run_id": run.run_id, "link": f"{host.rstrip('/')}/#/runs/details/{run.run_id}"}


def schedule(cfg: Config, host: str, placement: Placement, experiment: str, name: str, cron: str) -> dict:
    """A recurring run named `name`: one at a time (max concurrency 1), no catch-up of missed runs; an existing
    schedule of that name is replaced."""
    check_cron(cron)
    client = connect(host)
    with prepared(cfg, placement, experiment, name) as (path, sent):
        pipeline_id, version_id = ensure_version(client, path, sent["pipeline_version"])
    exp = client.create_experiment(name=experiment)
    replaced = [r.recurring_run_id for r in _schedules(client, name)]
    created = client.create_recurring_run(exp.experiment_id, name, cron_expression=cron, max_concurrency=1,
                                          no_catchup=True, params=sent["parameters"], pipeline_id=pipeline_id,
                                          version_id=version_id, description=f"kdpipe schedule {name}")
    for old in replaced:  # after the new one exists: a failure above leaves the old schedule running
        client.delete_recurring_run(old)
    return {**sent, "recurring_run_id": created.recurring_run_id, "replaced": replaced, "cron": cron}


def _schedules(client, name: str | None = None) -> list:
    response = client.list_recurring_runs(page_size=200, filter=_name_filter(name) if name else None)
    return [r for r in response.recurring_runs or [] if name is None or r.display_name == name]


def list_schedules(host: str) -> list[dict]:
    client = connect(host)
    return [{"name": r.display_name, "id": r.recurring_run_id, "cron": r.trigger.cron_schedule.cron
             if r.trigger and r.trigger.cron_schedule else None, "mode": r.mode} for r in _schedules(client)]


def delete_schedule(host: str, name: str) -> list[str]:
    client = connect(host)
    found = [r.recurring_run_id for r in _schedules(client, name)]
    if not found:
        raise ConfigError(f"--delete {name}: no schedule of that name (kdpipe schedule --list shows them)")
    for recurring_run_id in found:
        client.delete_recurring_run(recurring_run_id)
    return found


def follow(sent: dict, cfg: Config, timeout: float) -> dict:
    """Wait for a submitted run; its summary from MLflow when this machine reaches the tracking server (the gate's
    decision is there), else from the run's KFP state alone."""
    import time

    from kdpipe.summary import build_summary
    from kdpipe.tracking import RUN_TAG, find_parent_by_tag, store_failure

    started = time.perf_counter()
    run = sent["client"].wait_for_run_completion(sent["run_id"], timeout=timeout)
    wall = time.perf_counter() - started
    failure = None if run.state == "SUCCEEDED" else f"the KFP run ended {run.state}: {sent['link']}"
    cfg = cfg.model_copy(deep=True)
    cfg.tracking.tags = {**cfg.tracking.tags, INVOCATION_TAG: sent["invocation"]}
    try:
        parent = find_parent_by_tag(cfg, INVOCATION_TAG, sent["invocation"])
    except Exception as e:  # noqa: BLE001 (the tracking server is often reachable only from inside the cluster)
        if not store_failure(e):
            raise
        parent = None
    if parent is None:
        return {"status": "succeeded" if failure is None else "error", "pipeline_run": sent["run_id"],
                "pipeline_root": sent["link"], "errors": [failure] if failure else [],
                "mlflow": {"tracking_uri": cfg.tracking.uri, "parent_run_id": None}}
    return build_summary(cfg, parent.data.tags[RUN_TAG], wall, sent["link"], failure)
