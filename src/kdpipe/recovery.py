"""Runs that did not end cleanly: a killed `kdpipe run` is found and its MLflow runs marked KILLED, and training
steps keep their last epoch checkpoint on their MLflow run, so a re-run (a new process, a new pod, a new
pipeline run) with the same config and data resumes from it instead of starting over."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import tempfile
from pathlib import Path

from kdpipe.tracking import ROLE_TAG, RUN_TAG, end_unfinished, experiment_id, mlflow_client

HOST_TAG, PROCESS_TAG = "kdpipe.host", "kdpipe.process"  # on a local run's parent: the process driving it
RESUME_KEY_TAG, RESUMED_FROM_TAG = "kdpipe.resume_key", "kdpipe.resumed_from"
CHECKPOINTS = "checkpoints"  # the artifact folder holding a training step's last epoch checkpoint
LATEST = f"{CHECKPOINTS}/latest.json"  # names the newest complete one


def driver_tags() -> dict[str, str]:
    """Tags naming this process (pid and start time, so a reused pid is not mistaken for it)."""
    import psutil

    me = psutil.Process()
    return {HOST_TAG: socket.gethostname(), PROCESS_TAG: f"{me.pid}@{me.create_time()}"}


def _alive(process: str) -> bool:
    import psutil

    pid, _, started = process.partition("@")
    try:
        return str(psutil.Process(int(pid)).create_time()) == started
    except (psutil.Error, ValueError):
        return False


def end_lost_runs(cfg) -> list[str]:
    """Pipeline runs of this experiment, driven from this host, whose process is gone (killed): marked KILLED with
    their unfinished step runs. Runs driven elsewhere (a cluster) are ended by the pipeline's exit handler."""
    client, host = mlflow_client(cfg), socket.gethostname()
    running = client.search_runs([experiment_id(cfg)], filter_string=(
        f"attributes.status = 'RUNNING' and tags.`{ROLE_TAG}` = 'pipeline' and tags.`{HOST_TAG}` = '{host}'"),
        max_results=1000)
    lost = [r for r in running if not _alive(r.data.tags.get(PROCESS_TAG, ""))]
    for run in lost:
        end_unfinished(cfg, run.info.run_id, f"the kdpipe process that drove this run "
                                             f"({run.data.tags.get(PROCESS_TAG)} on {host}) is gone (killed)")
    return [r.info.run_id for r in lost]


class RunCheckpoints:
    """A training step's epoch checkpoints, kept on its MLflow run until the step succeeds: each epoch's folder is
    uploaded under `checkpoints/`, then `checkpoints/latest.json` names it (so a process killed mid-upload leaves
    the previous complete one named), then the older folder is deleted. `restore` finds an earlier attempt with
    the same key (config, data and settings) that did not finish and brings its checkpoint back. Checkpoints
    hold safetensors weights; the Trainer loads their optimizer and RNG states with torch's weights-only loader."""

    def __init__(self, cfg, run_id: str, pipeline_run: str):
        self.cfg, self.run_id, self.pipeline_run = cfg, run_id, pipeline_run
        self.source: str | None = None  # the run a checkpoint was restored from
        self.kept: str | None = None  # this run's newest uploaded checkpoint

    def restore(self, checkpoint_dir: Path, run_key: str) -> str | None:
        """Download the checkpoint of the newest unfinished attempt with this key into checkpoint_dir; its run id."""
        client = mlflow_client(self.cfg)
        key = hashlib.sha256(run_key.encode()).hexdigest()[:16]
        client.set_tag(self.run_id, RESUME_KEY_TAG, key)
        runs = client.search_runs([experiment_id(self.cfg)], filter_string=f"tags.`{RESUME_KEY_TAG}` = '{key}'",
                                  order_by=["attributes.start_time DESC"], max_results=20)
        for run in runs:
            # KILLED/FAILED: an earlier pipeline run; RUNNING: an earlier attempt of this very step (a KFP retry)
            ended = run.info.status in ("FAILED", "KILLED")
            retried = run.info.status == "RUNNING" and run.data.tags.get(RUN_TAG) == self.pipeline_run
            if run.info.run_id != self.run_id and (ended or retried) and self._download(run.info.run_id, checkpoint_dir):
                client.set_tag(self.run_id, RESUMED_FROM_TAG, run.info.run_id)
                self.source = run.info.run_id
                return run.info.run_id
        return None

    def _download(self, run_id: str, checkpoint_dir: Path) -> bool:
        client = mlflow_client(self.cfg)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                latest = json.loads(Path(client.download_artifacts(run_id, LATEST, tmp)).read_text())["checkpoint"]
            except Exception:  # it died before its first checkpoint
                return False
            local = client.download_artifacts(run_id, f"{CHECKPOINTS}/{latest}", tmp)
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            shutil.move(local, str(checkpoint_dir / latest))
        return True

    def callback(self):
        from transformers import TrainerCallback
        from transformers.trainer_utils import get_last_checkpoint

        keeper = self

        class KeepOnRun(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                keeper.keep(Path(get_last_checkpoint(args.output_dir)))

        return KeepOnRun()

    def keep(self, checkpoint: Path) -> None:
        client = mlflow_client(self.cfg)
        client.log_artifacts(self.run_id, str(checkpoint), f"{CHECKPOINTS}/{checkpoint.name}")
        client.log_dict(self.run_id, {"checkpoint": checkpoint.name}, LATEST)
        if self.kept and self.kept != checkpoint.name:
            self._delete(self.run_id, f"{CHECKPOINTS}/{self.kept}")
        self.kept = checkpoint.name

    def discard(self) -> None:
        """After success: the checkpoints (this run's, and the one it resumed from) have served."""
        for run_id in filter(None, (self.run_id, self.source)):
            self._delete(run_id, CHECKPOINTS)

    def _delete(self, run_id: str, path: str) -> None:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        try:
            get_artifact_repository(mlflow_client(self.cfg).get_run(run_id).info.artifact_uri).delete_artifacts(path)
        except Exception:  # a store that cannot delete: it only costs space
            pass
