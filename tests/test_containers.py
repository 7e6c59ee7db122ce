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
SERVING_IMAGE = f"ghcr.io/kdpipe/kdpipe:{__version__}-serve"


@pytest.fixture(scope="module")
def image():
    """The one-command build of both images (scripts/test.sh installs the Docker engine first; a rebuild of
    unchanged sources is a cache hit)."""
    done = subprocess.run(["bash", str(ROOT / "scripts/build-images.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"built {IMAGE}" in done.stdout and f"built {SERVING_IMAGE}" in done.stdout
    print(done.stdout)
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


@pytest.fixture(scope="module")
def demo_in_containers(image, tracking_server, tmp_path_factory):
    """`kdpipe run configs/demo.yaml --runner docker` tracking to the server: (exit code, summary)."""
    out = tmp_path_factory.mktemp("demo-in-containers") / "out"
    code = main(["run", str(ROOT / "configs/demo.yaml"), "--runner", "docker", "--set",
                 f"tracking.uri={tracking_server['MLFLOW_TRACKING_URI']}", "--output-dir", str(out)])
    return code, json.loads((out / "summary.json").read_text())


def test_demo_in_containers_tracks_to_the_server_and_is_promoted(image, tracking_server, demo_in_containers):
    """`kdpipe run configs/demo.yaml --runner docker`: every step in the image (its MLflow run says which), the
    runs and the registered model on the server (PostgreSQL behind it), nothing of this machine but the demo's
    data files (mounted read-only)."""
    uri = tracking_server["MLFLOW_TRACKING_URI"]
    code, summary = demo_in_containers
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


def test_the_serving_image_serves_the_champion_from_the_server(image, tracking_server, demo_in_containers,
                                                               tmp_path, capsys, monkeypatch):
    """The serving image (no torch, at most 600 MB) serves the demo's champion read from the MLflow server, as the
    KServe predictor does: the int8 graph (the model's metadata says so), the labels and scores `kdpipe predict`
    gives, and the request log on a mounted volume, model version included."""
    import time

    import mlflow

    from tests.serving import assert_served_as_predicted, wait_until_serving

    uri, model = tracking_server["MLFLOW_TRACKING_URI"], "models:/kdpipe-demo-student@champion"
    assert demo_in_containers[0] == 0
    size = int(subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", SERVING_IMAGE], capture_output=True,
                              text=True, check=True).stdout)
    assert size <= 600e6, f"{SERVING_IMAGE}: {size / 1e6:.0f} MB"
    no_torch = subprocess.run(["docker", "run", "--rm", SERVING_IMAGE, "python", "-c", "import torch"],
                              capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    assert mlflow.models.get_model_info(model).metadata["kdpipe.variant"] == "int8"
    logs = tmp_path / "logs"
    logs.mkdir()
    logs.chmod(0o777)  # the image's user (10001) writes there
    port, started = free_port(), time.monotonic()
    container = subprocess.run(
        ["docker", "run", "-d", "--network", "host", "-v", f"{logs}:/logs", "-e", f"MLFLOW_TRACKING_URI={uri}",
         "-e", 'SERVING_MODEL_CONFIG={"log_requests": "/logs/requests.jsonl"}', SERVING_IMAGE,
         "mlflow", "models", "serve", "-m", model, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        capture_output=True, text=True, check=True).stdout.strip()
    try:
        def docker(*args) -> str:
            done = subprocess.run(["docker", *args, container], capture_output=True, text=True)
            return (done.stdout + done.stderr).strip()

        url = wait_until_serving(f"http://127.0.0.1:{port}", lambda: docker("logs")[-3000:], 300,
                                 lambda: "" if docker("inspect", "-f", "{{.State.Running}}") == "true" else "exited")
        print(f"serving image: {size / 1e6:.0f} MB; container start to serving {time.monotonic() - started:.1f} s")
        texts = ["a lovely , moving film", "dull and far too long", "not bad at all"]
        rows = assert_served_as_predicted(url, model, texts, capsys)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len((logs / "requests.jsonl").read_text().splitlines()
                                                  if (logs / "requests.jsonl").exists() else []) < 3:
            time.sleep(0.2)
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)
    logged = [json.loads(line) for line in (logs / "requests.jsonl").read_text().splitlines()]
    assert [r["text"] for r in logged] == texts and [r["labels"] for r in logged] == [r["labels"] for r in rows]
    assert {(r["model_version"], r["variant"]) for r in logged} == {("kdpipe-demo-student/1", "int8")}


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
