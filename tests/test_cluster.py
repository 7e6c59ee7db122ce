"""`kdpipe submit` / `kdpipe schedule` through kfp.Client against tests/kfp_api.py: a contract test of the KFP
v2beta1 requests (bodies checked against the kfp-server-api models), not a cluster. Also: GPU placement in the
compiled YAML, and configs naming this machine's paths refused before anything is sent."""

import json

import pytest
import yaml

from kdpipe_kfp.cli import main
from tests.kfp_api import KfpApi, check_body


@pytest.fixture()
def kfp_api():
    api = KfpApi()
    yield api
    api.close()


@pytest.fixture(scope="module")
def portable(tmp_path_factory):
    """A config whose every input a pod can reach: data on S3, a Hub teacher, tracking on a server."""
    root = tmp_path_factory.mktemp("portable")
    raw = {"teacher": {"model": "textattack/bert-base-uncased-SST-2"}, "student": {"layers": [0, 11]},
           "data": {"train": "s3://kd-data/sst2/train.tsv", "validation": "s3://kd-data/sst2/dev.tsv",
                    "text_column": "sentence"},
           "tracking": {"uri": "http://mlflow.kdpipe.svc:5000", "experiment": "sst2", "registered_model": "sst2"}}
    (root / "config.yaml").write_text(yaml.safe_dump(raw))
    return root / "config.yaml"


def test_submit_creates_a_run_with_the_config_and_reuses_the_version(kfp_api, portable, capsys):
    assert main(["submit", str(portable), "--host", kfp_api.host, "--experiment", "nightly"]) == 0
    assert main(["submit", str(portable), "--host", kfp_api.host, "--experiment", "nightly",
                 "--set", "distillation.epochs=5"]) == 0
    out = capsys.readouterr().out
    assert len(kfp_api.pipelines) == 1 and len(kfp_api.versions) == 1, "the same compiled spec made a second version"
    assert [e["display_name"] for e in kfp_api.experiments.values()] == ["nightly"]
    first, second = kfp_api.runs.values()
    params = [r["runtime_config"]["parameters"] for r in (first, second)]
    configs = [json.loads(p["config_json"]) for p in params]
    assert configs[0]["data"]["train"] == "s3://kd-data/sst2/train.tsv"
    assert configs[0]["distillation"]["epochs"] != 5 and configs[1]["distillation"]["epochs"] == 5
    assert params[0]["hpo_workers"] == [] and params[0]["distill_params_json"] == ""
    assert first["display_name"] == "kdpipe-sst2"
    version = next(iter(kfp_api.versions.values()))
    assert first["pipeline_version_reference"]["pipeline_version_id"] == version["pipeline_version_id"]
    assert f"submitted run {first['run_id']}" in out and f"{kfp_api.host}/#/runs/details/{first['run_id']}" in out
    # A different placement compiles a different spec: a new version of the same pipeline.
    assert main(["submit", str(portable), "--host", kfp_api.host, "--gpus", "2"]) == 0
    assert len(kfp_api.pipelines) == 1 and len(kfp_api.versions) == 2


def test_submit_wait_follows_the_run_to_its_end(kfp_api, portable, capsys):
    """MLflow (inside the cluster) is not reachable from here: the exit code and line come from the KFP state."""
    code = main(["submit", str(portable), "--host", kfp_api.host, "--wait",
                 "--set", "tracking.uri=http://127.0.0.1:9"])
    assert code == 0, capsys.readouterr()
    assert "-> SUCCEEDED" in capsys.readouterr().out


def test_schedule_replaces_one_of_the_same_name_and_lists_and_deletes(kfp_api, portable, capsys):
    for cron in ("0 0 3 * * *", "0 30 2 * * 1-5"):
        assert main(["schedule", str(portable), "--host", kfp_api.host, "--cron", cron, "--name", "nightly"]) == 0
    (job,) = kfp_api.recurring.values()  # replaced, not added
    assert job["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * 1-5"
    assert str(job["max_concurrency"]) == "1" and job["no_catchup"] is True and job["mode"] == "ENABLE"
    assert json.loads(job["runtime_config"]["parameters"]["config_json"])["tracking"]["experiment"] == "sst2"
    capsys.readouterr()
    assert main(["schedule", "--list", "--host", kfp_api.host]) == 0
    assert capsys.readouterr().out.split("\t")[:2] == ["nightly", "0 30 2 * * 1-5"]
    assert main(["schedule", "--delete", "nightly", "--host", kfp_api.host]) == 0
    assert not kfp_api.recurring
    assert main(["schedule", "--delete", "nightly", "--host", kfp_api.host]) == 2
    assert "no schedule of that name" in capsys.readouterr().err


@pytest.mark.parametrize("cron, why", [("0 3 * * *", "KFP takes 6 fields"), ("0 0 25 * * *", "the hours field"),
                                       ("0 0 3 * * * *", "this has 7"), ("0 0 3 x?y * *", "day-of-month")])
def test_bad_cron_is_refused_before_sending(kfp_api, portable, capsys, cron, why):
    assert main(["schedule", str(portable), "--host", kfp_api.host, "--cron", cron]) == 2
    assert why in capsys.readouterr().err
    assert kfp_api.requests == []


@pytest.mark.parametrize("override, key", [
    ("data.train={local}", "data.train"),
    ("data.unlabeled={local}", "data.unlabeled"),
    ("teacher.model={folder}", "teacher.model"),
    ("tracking.uri=sqlite:///mlflow.db", "kdpipe submit/schedule: tracking.uri"),
])
def test_local_paths_are_refused_before_sending(kfp_api, portable, tmp_path, capsys, override, key):
    (tmp_path / "train.csv").write_text("sentence,label\nfine,1\n")
    (tmp_path / "model").mkdir()
    value = override.format(local=tmp_path / "train.csv", folder=tmp_path / "model")
    assert main(["submit", str(portable), "--host", kfp_api.host, "--set", value]) == 2
    assert main(["submit", str(portable), "--host", kfp_api.host, "--set", value, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[0] + "\n"
    assert err.startswith(f"kdpipe: {key} ") and len(err.strip().splitlines()) == 1, err
    assert kfp_api.requests == []


def test_dry_run_prints_the_request_and_contacts_nothing(kfp_api, portable, capsys):
    assert main(["submit", str(portable), "--host", kfp_api.host, "--dry-run"]) == 0
    sent = json.loads(capsys.readouterr().out)
    assert sent["pipeline"] == "kdpipe" and sent["pipeline_version"].startswith("kdpipe-")
    assert json.loads(sent["parameters"]["config_json"])["data"]["train"] == "s3://kd-data/sst2/train.tsv"
    assert main(["schedule", str(portable), "--host", kfp_api.host, "--cron", "0 0 3 * * *", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["cron"] == "0 0 3 * * *"
    assert kfp_api.requests == []


def test_no_server_is_one_line(portable, capsys):
    from tests.test_preflight import free_port

    assert main(["submit", str(portable), "--host", f"http://127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err
    assert "no Kubeflow Pipelines API answers there" in err and "Traceback" not in err


def test_the_contract_server_refuses_what_the_real_one_would():
    check_body({"display_name": "x", "mode": "ENABLE"}, "V2beta1RecurringRun")
    with pytest.raises(ValueError, match="unknown field 'displayName'"):
        check_body({"displayName": "x"}, "V2beta1Run")
    with pytest.raises(ValueError, match="'ON' is not one of"):
        check_body({"mode": "ON"}, "V2beta1RecurringRun")


def test_gpu_placement_is_in_the_compiled_yaml(tmp_path):
    assert main(["compile", "-o", str(tmp_path / "p.yaml"), "--accelerator", "nvidia.com/gpu", "--gpus", "2",
                 "--node-selector", "cloud.google.com/gke-accelerator=nvidia-l4",
                 "--toleration", "nvidia.com/gpu:NoSchedule", "--gpu-image", "registry.example/kdpipe:1-cuda"]) == 0
    spec, platform = yaml.safe_load_all((tmp_path / "p.yaml").read_text())
    executors = spec["deploymentSpec"]["executors"]
    on_gpu = {n for n, e in executors.items() if e["container"].get("resources", {}).get("accelerator")}
    assert on_gpu == {"exec-prepare-teacher", "exec-teacher-shard", "exec-evaluate-teacher", "exec-hpo-worker",
                      "exec-distill-student"}
    for name in on_gpu:
        assert executors[name]["container"]["resources"]["accelerator"] == {"count": "2", "resourceCount": "2",
                                                                             "resourceType": "nvidia.com/gpu",
                                                                             "type": "nvidia.com/gpu"}
        assert executors[name]["container"]["image"] == "registry.example/kdpipe:1-cuda"
        k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][name]
        assert k8s["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
        assert k8s["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
    assert all(executors[n]["container"]["image"].endswith("-cpu") for n in set(executors) - on_gpu)
    with pytest.raises(SystemExit):
        main(["compile", "--gpus", "x"])
    assert main(["compile", "-o", str(tmp_path / "q.yaml"), "--toleration", "gpu:Sometimes"]) == 2
