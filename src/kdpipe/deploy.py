"""`kdpipe deploy`: the KServe resources that serve a registered model, pinned to registry versions (a moved alias
reaches the cluster when the rendered manifest is applied, not when a pod happens to restart).

- One InferenceService per served version, in RawDeployment mode (no Knative): `<name>-champion`, and with a
  canary `<name>-challenger`. Each runs the serving image (docker/Dockerfile.serve) on `mlflow models serve`.
- One InferenceGraph `<name>` in front, the stable address clients call: a Splitter node sending PCT% of requests
  to the challenger and the rest to the champion (KServe's canaryTrafficPercent only works in Serverless mode;
  an InferenceGraph splits in both). Its steps name the predictors' `/invocations` URLs, since a step by
  serviceName would be sent to KServe's `/v1/models/<name>:predict`, which MLflow's server does not answer.

k8s/serving/inferenceservice.yaml is the same InferenceService for `kubectl apply -k` (the champion alias)."""

from __future__ import annotations

import json
import re

from kdpipe import __version__
from kdpipe.errors import ConfigError

IMAGE = f"ghcr.io/kdpipe/kdpipe:{__version__}-serve"
NAMESPACE = "kdpipe"
TRACKING_URI = "http://kdpipe-mlflow.kdpipe.svc.cluster.local:5000"  # k8s/base's MLflow server
PORT = 8080


def resource_name(model_name: str) -> str:
    """A Kubernetes name (DNS label, room left for `-challenger-predictor`) from a registered model name."""
    name = re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")[:40].strip("-")
    if not name or not name[0].isalpha():
        name = f"m-{name}".rstrip("-")
    return name


def predictor(model_uri: str, image: str = IMAGE, tracking_uri: str = TRACKING_URI,
              serving_config: dict | None = None, env: dict | None = None, object_store_secret: bool = False) -> dict:
    """The predictor of one InferenceService: `mlflow models serve` on the model, non-root, probed on /ping."""
    variables = [{"name": "MLFLOW_TRACKING_URI", "value": tracking_uri}]
    if serving_config:  # the registered model's model_config, changed for this deployment (request log)
        variables.append({"name": "SERVING_MODEL_CONFIG", "value": json.dumps(serving_config, sort_keys=True)})
    variables += [{"name": k, "value": str(v)} for k, v in sorted((env or {}).items())]
    if object_store_secret:  # request logs on s3://: credentials from k8s/base's Secret, never a literal
        variables += [{"name": key, "valueFrom": {"secretKeyRef": {"name": "kdpipe-object-store", "key": key}}}
                      for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
    container = {
        "name": "kserve-container",
        "image": image,
        "command": ["mlflow", "models", "serve"],
        "args": ["-m", model_uri, "--env-manager", "local", "--host", "0.0.0.0", "--port", str(PORT),
                 "--workers", "2"],
        "ports": [{"containerPort": PORT, "protocol": "TCP"}],
        "env": variables,
        "readinessProbe": {"httpGet": {"path": "/ping", "port": PORT}, "initialDelaySeconds": 5, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/health", "port": PORT}, "initialDelaySeconds": 30},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": False,
                            "capabilities": {"drop": ["ALL"]}},
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}},
    }
    return {"minReplicas": 1, "maxReplicas": 3, "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
            "containers": [container]}


def inference_service(name: str, namespace: str, spec: dict, labels: dict) -> dict:
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": namespace, "labels": labels,
                         "annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"}},
            "spec": {"predictor": spec}}


def render(model_name: str, champion: str, challenger: str | None = None, canary_percent: int = 0,
           namespace: str = NAMESPACE, **predictor_settings) -> list[dict]:
    """The resources serving `champion` (a version of model_name), and `challenger` on canary_percent of the
    traffic when given."""
    if challenger is not None and not 0 < canary_percent < 100:
        raise ConfigError(f"--canary {canary_percent}: give the challenger's share of traffic as 1..99 percent")
    if challenger is not None and str(challenger) == str(champion):
        raise ConfigError(f"{model_name}: the challenger is v{champion}, the champion itself; nothing to canary")
    base = resource_name(model_name)
    served = {"champion": champion, **({"challenger": challenger} if challenger is not None else {})}
    weights = {"champion": 100 - canary_percent, "challenger": canary_percent} if challenger else {"champion": 100}
    resources, steps = [], []
    for role, version in served.items():
        labels = {"app.kubernetes.io/part-of": "kdpipe", "kdpipe.io/model": base, "kdpipe.io/role": role,
                  "kdpipe.io/version": str(version)}
        isvc = f"{base}-{role}"
        resources.append(inference_service(isvc, namespace, predictor(f"models:/{model_name}/{version}",
                                                                      **predictor_settings), labels))
        # RawDeployment: the predictor's Service is <isvc>-predictor, port 80 to the container's port.
        steps.append({"name": role, "serviceUrl": f"http://{isvc}-predictor.{namespace}.svc.cluster.local/invocations",
                      "weight": weights[role]})
    graph = {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "InferenceGraph",
             "metadata": {"name": base, "namespace": namespace,
                          "labels": {"app.kubernetes.io/part-of": "kdpipe", "kdpipe.io/model": base},
                          "annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"}},
             "spec": {"nodes": {"root": {"routerType": "Splitter", "steps": steps}}}}
    return resources + [graph]


def rollout_hint(model_name: str, namespace: str = NAMESPACE) -> str:
    """What to run after the champion alias moved (promote, rollback): the cluster follows the registry."""
    base = resource_name(model_name)
    return (f"serving: `kdpipe deploy {model_name} | kubectl apply -f -` sends all traffic to the champion (a canary "
            f"of it is rolled forward; one of another version is rolled back); then `kubectl -n {namespace} delete "
            f"inferenceservice {base}-challenger` removes the canary's predictor")
