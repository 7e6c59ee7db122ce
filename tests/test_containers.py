"""The steps in real containers (issue 9): the image built by scripts/build-images.sh on a real Docker engine, the
demo pipeline under KFP's DockerRunner, tracking over HTTP to an MLflow server whose backend store is PostgreSQL
(scripts/tracking-server.sh): the cluster's topology on one machine."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from kdpipe import __version__
from kdpipe_kfp.cli import main
from tests.test_preflight import free_port

ROOT = Path(__file__).resolve().parents[1]
IMAGE = f"ghcr.io/kdpipe/kdpipe:{__version__}-cpu"


@pytest.fixture(scope="module")
def image():
    """The one-command build (scripts/test.sh installs the Docker engine first; a rebuild of unchanged sources is
    a cache hit)."""
    done = subprocess.run(["bash", str(ROOT / "scripts/build-images.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"built {IMAGE}" in done.stdout
    return IMAGE


@pytest.fixture(scope="module")
def tracking_server():
    """PostgreSQL + `mlflow server` on loopback, as a user would start them (not under pytest's root-only tmp:
    the postgres user must reach the folder)."""
    folder = tempfile.mkdtemp(prefix="kdpipe-tracking-")
    port = free_port()
    script = str(ROOT / "scripts/tracking-server.sh")
    done = subprocess.run(["bash", script, "start", folder, str(port)], capture_output=True, text=True,
                          env={**os.environ, "KDPIPE_PYTHON": sys.executable})  # the interpreter running the tests
    assert done.returncode == 0, done.stderr[-3000:]
    urls = dict(line.split("=", 1) for line in done.stdout.split())
    try:
        yield urls
    finally:
        subprocess.run(["bash", script, "stop", folder], capture_output=True)


def test_image_runs_as_non_root_and_knows_its_tag(image):
    out = subprocess.run(["docker", "run", "--rm", image, "sh", "-c", "id -u; echo $KDPIPE_IN_IMAGE; kdpipe --help"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "10001" and out[1] == image and out[2].startswith("usage: kdpipe")


def test_demo_in_containers_tracks_to_the_server_and_is_promoted(image, tracking_server, tmp_path):
    """`kdpipe run configs/demo.yaml --runner docker`: every step in the image (its MLflow run says which), the
    runs and the registered model on the server (PostgreSQL behind it), nothing of this machine but the demo's
    data files (mounted read-only)."""
    uri = tracking_server["MLFLOW_TRACKING_URI"]
    code = main(["run", str(ROOT / "configs/demo.yaml"), "--runner", "docker", "--set", f"tracking.uri={uri}",
                 "--output-dir", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert code == 0 and summary["status"] == "promoted", summary
    client = MlflowClient(uri)
    parent = client.get_run(summary["mlflow"]["parent_run_id"])
    steps = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    roles = {r.data.tags["kdpipe.role"]: r.data.tags.get("kdpipe.image") for r in steps}
    assert {"validate_tokenizers", "preprocess", "prepare_teacher", "evaluate_teacher", "distill_student",
            "evaluate_gate", "export_register"} <= set(roles), roles
    assert set(roles.values()) == {image}, roles
    versions = client.search_model_versions("name='kdpipe-demo-student'")
    assert len(versions) == 1
    assert client.get_model_version_by_alias("kdpipe-demo-student", "champion").version == versions[0].version
    assert client.get_model_version_download_uri("kdpipe-demo-student", versions[0].version).startswith(
        "mlflow-artifacts:")  # served through the tracking server, not a path of this machine


def test_docker_runner_refuses_what_a_container_cannot_share(tmp_path, capsys):
    """A SQLite tracking store or a journal file for HPO lives on this machine: refused before anything starts."""
    code = main(["run", str(ROOT / "configs/demo.yaml"), "--runner", "docker", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("kdpipe: --runner docker: tracking.uri sqlite:///") and len(err.splitlines()) == 1
    assert "bash scripts/tracking-server.sh" in err
    code = main(["run", str(ROOT / "configs/demo.yaml"), "--runner", "docker", "--set", "tracking.uri=http://127.0.0.1:9",
                 "--set", "hpo.enabled=true", "--output-dir", str(tmp_path)])
    assert code == 2 and "hpo.storage journal:" in capsys.readouterr().err


def test_docker_runner_mounts_every_local_input_read_only(tmp_path):
    """What the containers see of this machine: each local input file and model folder the config names
    (config.input_files / input_models), data.unlabeled included, mounted read-only at its own path."""
    from kdpipe.config import load_config
    from kdpipe_kfp.containers import local_inputs

    extra = tmp_path / "unlabeled.csv"
    extra.write_text("text\nan unlabelled review\n")
    cfg = load_config(ROOT / "configs/demo.yaml", [f"data.unlabeled={extra}", "tracking.uri=http://127.0.0.1:9"])
    assert local_inputs(cfg) == sorted([str(extra), str(ROOT / "data/demo/train.csv"),
                                        str(ROOT / "data/demo/validation.csv")])
