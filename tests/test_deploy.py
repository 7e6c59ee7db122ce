"""Static checks of what cannot be built or applied here: the CUDA image (its base is on a registry this machine
cannot reach; the CPU image is built and run in tests/test_containers.py) and the Kubernetes manifests."""

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "docker/Dockerfile", ROOT / "docker/Dockerfile.cuda"]


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


def test_kserve_inference_service_serves_the_champion(tmp_path):
    """KServe's CRD schema is not available offline: the InferenceService's own fields are checked here, and its
    predictor (a core Pod spec) is validated strictly by kubernetes-validate as the Pod KServe makes of it."""
    out = subprocess.run([shutil.which("kubectl"), "kustomize", str(ROOT / "k8s/serving")], capture_output=True,
                         text=True, check=True).stdout
    [isvc] = [d for d in yaml.safe_load_all(out) if d]
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert isvc["metadata"]["namespace"] == "kdpipe"
    predictor = isvc["spec"]["predictor"]
    [container] = predictor["containers"]
    assert container["name"] == "kserve-container" and container["ports"][0]["containerPort"] == 8080
    args = container["args"]
    assert container["command"] == ["mlflow", "models", "serve"] and args[args.index("--port") + 1] == "8080"
    assert args[args.index("-m") + 1].endswith("@champion")
    assert container["readinessProbe"]["httpGet"]["path"] == "/ping"
    assert predictor["securityContext"]["runAsNonRoot"] is True
    assert not any("SECRET" in e["name"] or "PASSWORD" in e["name"] for e in container.get("env", []))
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor", "namespace": "kdpipe"},
           "spec": {"securityContext": predictor["securityContext"], "containers": [container]}}
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    result = subprocess.run([str(Path(__import__("sys").executable).parent / "kubernetes-validate"),
                             "--strict", str(tmp_path / "pod.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


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
