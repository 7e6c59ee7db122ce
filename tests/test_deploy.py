"""Static checks of what cannot be built or applied here: the CUDA image (its base is on a registry this machine
cannot reach; the CPU image is built and run in tests/test_containers.py) and the Kubernetes manifests."""

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "docker/Dockerfile", ROOT / "docker/Dockerfile.cuda", ROOT / "docker/Dockerfile.serve"]


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_pinned_non_root_and_same_install_as_ci(dockerfile):
    ins = instructions(dockerfile)
    defaults = dict(arg.split("=", 1) for op, arg in ins if op == "ARG" and "=" in arg)
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], arg.split()[0]) for op, arg in ins if op == "FROM"]
    assert bases and all(re.search(r":\d[\w.-]*\d", b) and not b.endswith(":latest") for b in bases), bases
    users = [arg for op, arg in ins if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must end as a non-root user"
    runs = " ".join(arg for op, arg in ins if op == "RUN")
    assert "bash scripts/install.sh" in runs  # the install CI runs (scripts/setup.sh -> scripts/install.sh)
    assert "pip install" not in runs, "install only through scripts/install.sh (pinned by constraints.txt)"
    for pkg in re.findall(r"apt-get install[^&]*", runs):
        for name in pkg.split()[2:]:
            assert name.startswith("-") or "=" in name, f"apt package {name} is not pinned"


def test_ci_installs_through_the_same_script():
    assert "scripts/install.sh" in (ROOT / "scripts/setup.sh").read_text()
    assert "bash scripts/test.sh" in (ROOT / ".ci/run").read_text()
    assert "scripts/setup.sh" in (ROOT / "scripts/test.sh").read_text()


def test_every_dependency_is_pinned_in_constraints():
    pins = {re.split(r"==", line)[0].strip().lower().replace("_", "-"): line.split("==")[1].strip()
            for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    for dep in deps:
        name = re.split(r"[<>=!\[; ]", dep)[0].lower().replace("_", "-")
        assert name == "torch" or name in pins, f"{name} has no exact pin in constraints.txt"
    assert 'TORCH="torch==' in (ROOT / "scripts/install.sh").read_text()


@pytest.fixture(scope="module")
def rendered():
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (client) is needed to render k8s/ offline"
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "k8s/base")], capture_output=True, text=True, check=True)
    return out.stdout


def test_k8s_renders_and_validates(rendered, tmp_path):
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = sorted({d["kind"] for d in docs})
    assert {"Deployment", "StatefulSet", "Service", "Secret", "ServiceAccount", "Role", "RoleBinding"} <= set(kinds)
    assert all(d["metadata"].get("namespace") == "kdpipe" for d in docs if d["kind"] != "Namespace")
    (tmp_path / "all.yaml").write_text(rendered)
    result = subprocess.run([str(Path(__import__("sys").executable).parent / "kubernetes-validate"),
                             "--strict", str(tmp_path / "all.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_k8s_pods_non_root_and_secrets_only_placeholders(rendered):
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            assert d["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True, d["metadata"]["name"]
        if d["kind"] == "Secret":
            for key, value in d.get("stringData", {}).items():
                if "PASSWORD" in key or "SECRET" in key:
                    assert value == "CHANGE_ME", f"{d['metadata']['name']}.{key} must stay a placeholder"


def check_inference_service(isvc: dict, tmp_path: Path) -> dict:
    """KServe's CRD schema is not available offline: the InferenceService's own fields are checked here, and its
    predictor (a core Pod spec) is validated strictly by kubernetes-validate as the Pod KServe makes of it.
    Returns its container."""
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert isvc["metadata"]["namespace"] == "kdpipe"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    predictor = isvc["spec"]["predictor"]
    assert set(predictor) <= {"minReplicas", "maxReplicas", "securityContext", "containers"}
    [container] = predictor["containers"]
    assert container["name"] == "kserve-container" and container["ports"][0]["containerPort"] == 8080
    args = container["args"]
    assert container["command"] == ["mlflow", "models", "serve"] and args[args.index("--port") + 1] == "8080"
    assert container["image"].endswith("-serve")  # docker/Dockerfile.serve: no torch
    assert container["readinessProbe"]["httpGet"]["path"] == "/ping"
    assert predictor["securityContext"]["runAsNonRoot"] is True
    assert not any("value" in e and any(w in e["name"] for w in ("SECRET", "PASSWORD", "TOKEN"))
                   for e in container.get("env", []))
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor", "namespace": "kdpipe"},
           "spec": {"securityContext": predictor["securityContext"], "containers": [container]}}
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    result = subprocess.run([str(Path(__import__("sys").executable).parent / "kubernetes-validate"),
                             "--strict", str(tmp_path / "pod.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return container


def test_kserve_inference_service_serves_the_champion(tmp_path):
    from kdpipe.deploy import predictor

    out = subprocess.run([shutil.which("kubectl"), "kustomize", str(ROOT / "k8s/serving")], capture_output=True,
                         text=True, check=True).stdout
    [isvc] = [d for d in yaml.safe_load_all(out) if d]
    container = check_inference_service(isvc, tmp_path)
    assert container["args"][container["args"].index("-m") + 1] == "models:/kdpipe-demo-student@champion"
    # One truth: the file is what `kdpipe deploy` renders for that model.
    assert isvc["spec"]["predictor"] == predictor("models:/kdpipe-demo-student@champion")


def check_graph(graph: dict, services: dict[str, dict]) -> dict[str, int]:
    """The InferenceGraph as KServe's webhook checks it (v1alpha1 inference_graph_validation.go): a DNS-label
    name, a root node, unique step names, exactly one target per step, Splitter weights summing to 100. Each step
    reaches a rendered predictor's /invocations (a Raw predictor's Service is <isvc>-predictor, port 80).
    Returns the weight per InferenceService."""
    assert (graph["apiVersion"], graph["kind"]) == ("serving.kserve.io/v1alpha1", "InferenceGraph")
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", graph["metadata"]["name"])
    root = graph["spec"]["nodes"]["root"]
    assert root["routerType"] == "Splitter" and set(graph["spec"]["nodes"]) == {"root"}
    steps = root["steps"]
    assert len({s["name"] for s in steps}) == len(steps)
    assert all(sum(k in s for k in ("serviceUrl", "serviceName", "nodeName")) == 1 for s in steps)
    assert all(isinstance(s["weight"], int) and s["weight"] > 0 for s in steps) and sum(s["weight"] for s in steps) == 100
    weights = {}
    for step in steps:
        found = re.fullmatch(r"http://([a-z0-9-]+)-predictor\.([a-z0-9-]+)\.svc\.cluster\.local/invocations",
                             step["serviceUrl"])
        assert found and found.group(1) in services and found.group(2) == graph["metadata"]["namespace"], step
        weights[found.group(1)] = step["weight"]
    return weights


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A registry with three versions of a model: v2 the champion, v3 the challenger (registered entries only:
    rendering reads versions and aliases, not the models)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    client.create_registered_model("Sentiment_Student")
    for _ in range(3):
        client.create_model_version("Sentiment_Student", str(tmp_path / "model"))
    client.set_registered_model_alias("Sentiment_Student", "champion", "2")
    client.set_registered_model_alias("Sentiment_Student", "challenger", "3")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return client


def test_deploy_renders_a_canary_of_the_challenger(registry, tmp_path, capsys):
    """`kdpipe deploy NAME --canary 10`: the champion and the challenger, each pinned to its version, the
    challenger on 10% of the traffic through the graph; request logs to an object store with credentials from
    the Secret k8s/base defines. Without --canary: the champion alone, behind the same graph."""
    from kdpipe_kfp.cli import main

    assert main(["deploy", "Sentiment_Student", "--canary", "10", "--log-requests", "s3://logs/requests/",
                 "--log-sample-rate", "0.05", "--env", "AWS_ENDPOINT_URL=http://minio:9000"]) == 0
    captured = capsys.readouterr()
    docs = [d for d in yaml.safe_load_all(captured.out) if d]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "InferenceService"}
    [graph] = [d for d in docs if d["kind"] == "InferenceGraph"]
    assert set(services) == {"sentiment-student-champion", "sentiment-student-challenger"}
    assert check_graph(graph, services) == {"sentiment-student-champion": 90, "sentiment-student-challenger": 10}
    base = [d for d in yaml.safe_load_all((ROOT / "k8s/base/secrets.template.yaml").read_text()) if d]
    keys = {(d["metadata"]["name"], k) for d in base for k in d["stringData"]}
    for name, version in (("sentiment-student-champion", "2"), ("sentiment-student-challenger", "3")):
        (tmp_path / name).mkdir()
        container = check_inference_service(services[name], tmp_path / name)
        assert container["args"][container["args"].index("-m") + 1] == f"models:/Sentiment_Student/{version}"
        env = {e["name"]: e for e in container["env"]}
        assert json.loads(env["SERVING_MODEL_CONFIG"]["value"]) == {"log_requests": "s3://logs/requests/",
                                                                    "log_sample_rate": 0.05}
        assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
        refs = [e["valueFrom"]["secretKeyRef"] for e in env.values() if "valueFrom" in e]
        assert {r["key"] for r in refs} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert all((r["name"], r["key"]) in keys for r in refs)
    assert "champion v2 (90%), challenger v3 (10%)" in captured.err

    assert main(["deploy", "Sentiment_Student"]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "InferenceService"}
    assert check_graph(docs[-1], services) == {"sentiment-student-champion": 100}
    assert "SERVING_MODEL_CONFIG" not in {e["name"] for e in services["sentiment-student-champion"]["spec"]["predictor"]
                                         ["containers"][0]["env"]}


def test_deploy_refuses_what_cannot_be_rolled_out(registry, capsys):
    from kdpipe_kfp.cli import main

    for args, message in ((["--canary", "100"], "1..99 percent"), (["--canary", "10", "--challenger", "2"],
                                                                   "the champion itself"),
                          (["--env", "MLFLOW_TRACKING_TOKEN=abc"], "no secrets")):
        assert main(["deploy", "Sentiment_Student", *args]) == 2, args
        assert message in capsys.readouterr().err
    assert main(["promote", "Sentiment_Student", "3", "--force"]) == 0
    out = capsys.readouterr().out
    assert "champion v3 (was v2)" in out and "kdpipe deploy Sentiment_Student | kubectl apply -f -" in out


def test_the_multinode_trainjob_runs_kdpipe_distill_on_every_node(tmp_path):
    """Kubeflow Trainer's CRD schema is not available offline either: the TrainJob's own fields are checked here
    (the v1alpha1 trainer fields), its command is parsed by kdpipe's own parser, and the container it becomes on
    each node is validated strictly by kubernetes-validate."""
    from kdpipe_kfp.cli import build_parser

    [job] = [d for d in yaml.safe_load_all((ROOT / "k8s/multinode/trainjob.yaml").read_text()) if d]
    assert (job["apiVersion"], job["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert job["metadata"]["namespace"] == "kdpipe" and job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    trainer = job["spec"]["trainer"]
    assert set(trainer) <= {"image", "command", "args", "env", "numNodes", "numProcPerNode", "resourcesPerNode"}
    assert isinstance(trainer["numNodes"], int) and trainer["numNodes"] >= 2 and trainer["image"].endswith("-cuda")
    assert isinstance(trainer.get("numProcPerNode", 0), int)  # an int32 in the CRD (default: one per GPU)
    assert trainer["command"][:3] == ["torchrun", "-m", "kdpipe_kfp.cli"]
    args = build_parser().parse_args(trainer["command"][3:] + trainer["args"])
    assert args.func.__name__ == "cmd_distill" and args.teacher.startswith("models:/")
    assert all(v.startswith("s3://") for v in (args.config, args.dataset, args.teacher_logits, args.output))
    secrets = {e["name"] for e in trainer["env"] if "valueFrom" in e}
    assert {"AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_TOKEN"} <= secrets  # from Secrets, never a literal
    assert not any("value" in e and ("SECRET" in e["name"] or "PASSWORD" in e["name"]) for e in trainer["env"])
    base = [d for d in yaml.safe_load_all((ROOT / "k8s/base/secrets.template.yaml").read_text()) if d]
    keys = {(d["metadata"]["name"], k) for d in base for k in d["stringData"]}
    assert all((e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"]) in keys
               for e in trainer["env"] if "valueFrom" in e)  # the keys k8s/base defines
    container = {"name": "node", "image": trainer["image"], "command": trainer["command"], "args": trainer["args"],
                 "env": trainer["env"], "resources": trainer["resourcesPerNode"]}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "node-0", "namespace": "kdpipe"},
           "spec": {"securityContext": {"runAsNonRoot": True}, "containers": [container]}}
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    result = subprocess.run([str(Path(__import__("sys").executable).parent / "kubernetes-validate"),
                             "--strict", str(tmp_path / "pod.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
