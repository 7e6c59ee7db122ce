"""A small HTTP server on loopback answering the KFP v2beta1 endpoints `kdpipe submit` and `kdpipe schedule` use,
checking every request body against the kfp-server-api models (unknown or misspelt fields, wrong types and enum
values are refused with HTTP 400, as the real API server's gateway does). A contract test, not a cluster: no
pipeline runs here; a run is reported SUCCEEDED when asked."""

from __future__ import annotations

import io
import json
import re
import threading
import uuid
from datetime import datetime, timezone
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import kfp_server_api
import yaml

PRIMITIVES = {"str", "int", "bool", "float", "object", "datetime", "date"}


def check_body(data, type_name: str, where: str = "body") -> None:
    """Strictly: every key is a field of the model (recursively), then the generated model deserializes it."""
    if type_name in PRIMITIVES or data is None:
        return
    if type_name.startswith("list["):
        for i, item in enumerate(data):
            check_body(item, type_name[5:-1], f"{where}[{i}]")
        return
    if type_name.startswith("dict("):
        inner = type_name[type_name.index(",") + 1:-1].strip()
        for key, value in data.items():
            check_body(value, inner, f"{where}.{key}")
        return
    model = getattr(kfp_server_api, type_name)
    if not getattr(model, "openapi_types", None):  # an enum model: a string of its allowed values
        allowed = [v for k, v in vars(model).items() if k.isupper() and isinstance(v, str)]
        if data not in allowed:
            raise ValueError(f"{where}: {data!r} is not one of {allowed}")
        return
    json_to_attr = {v: k for k, v in model.attribute_map.items()}
    for key, value in data.items():
        if key not in json_to_attr:
            raise ValueError(f"{where}: unknown field {key!r} for {type_name}")
        check_body(value, model.openapi_types[json_to_attr[key]], f"{where}.{key}")

    class Response:
        pass

    response = Response()
    response.data = json.dumps(data)
    kfp_server_api.ApiClient().deserialize(response, type_name)


class KfpApi:
    """The server's state, and what it was sent (for the tests to check)."""

    def __init__(self):
        self.pipelines, self.versions, self.experiments, self.runs, self.recurring = {}, {}, {}, {}, {}
        self.requests: list[tuple[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method):
                url = urlsplit(self.path)
                api.requests.append((method, url.path))
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                try:
                    status, body = api.handle(method, url.path, query, self)
                except ValueError as e:  # a body the real server would refuse
                    status, body = 400, {"code": 3, "message": str(e)}
                except Exception as e:  # noqa: BLE001 (a bug here: answered, so the test fails on its message)
                    status, body = 500, {"code": 13, "message": f"{type(e).__name__}: {e}"}
                self._reply(status, body)

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

            def do_DELETE(self):
                self._route("DELETE")

        return Handler

    @staticmethod
    def _json(request, type_name: str) -> dict:
        body = json.loads(request.rfile.read(int(request.headers.get("Content-Length", 0))) or b"{}")
        check_body(body, type_name)
        return body

    @staticmethod
    def _named(items, query) -> list:
        if "filter" not in query:
            return list(items)
        predicate = json.loads(query["filter"])["predicates"][0]
        if predicate["key"] != "display_name" or predicate["operation"] not in ("EQUALS", 1):  # name or enum number
            raise ValueError(f"filter {predicate}: this contract test serves display_name EQUALS only")
        return [i for i in items if i["display_name"] == predicate["stringValue"]]

    def handle(self, method: str, path: str, query: dict, request):
        now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        if path == "/apis/v2beta1/healthz":
            return 200, {"multi_user": False}
        if path == "/apis/v2beta1/pipelines" and method == "GET":
            found = self._named(self.pipelines.values(), query)
            return 200, {"pipelines": found, "total_size": len(found)} if found else {}
        if path == "/apis/v2beta1/pipelines" and method == "POST":
            body = self._json(request, "V2beta1Pipeline")
            if any(p["display_name"] == body["display_name"] for p in self.pipelines.values()):
                return 409, {"code": 6, "message": "pipeline already exists"}
            pipeline = {**body, "pipeline_id": uuid.uuid4().hex, "created_at": now}
            self.pipelines[pipeline["pipeline_id"]] = pipeline
            return 200, pipeline
        m = re.fullmatch(r"/apis/v2beta1/pipelines/([^/]+)/versions", path)
        if m and method == "GET":
            found = self._named([v for v in self.versions.values() if v["pipeline_id"] == m.group(1)], query)
            return 200, {"pipeline_versions": found, "total_size": len(found)} if found else {}
        if path == "/apis/v2beta1/pipelines/upload_version" and method == "POST":
            body = request.rfile.read(int(request.headers["Content-Length"]))
            form = BytesParser(policy=HTTP).parsebytes(
                f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode() + body)
            files = {p.get_param("name", header="content-disposition"): p.get_payload(decode=True)
                     for p in form.iter_parts()}
            if "uploadfile" not in files:
                raise ValueError("upload_version: no uploadfile part")
            spec = next(yaml.safe_load_all(io.BytesIO(files["uploadfile"])))  # the spec, then platform config
            if query.get("pipelineid") not in self.pipelines or not query.get("name"):
                raise ValueError("upload_version needs an existing pipelineid and a name")
            if "pipelineInfo" not in spec or "root" not in spec:
                raise ValueError("the uploaded file is not a compiled pipeline spec")
            version = {"pipeline_id": query["pipelineid"], "pipeline_version_id": uuid.uuid4().hex,
                       "display_name": query["name"], "created_at": now, "pipeline_spec": spec}
            self.versions[version["pipeline_version_id"]] = version
            return 200, version
        if path == "/apis/v2beta1/experiments" and method == "GET":
            found = self._named(self.experiments.values(), query)
            return 200, {"experiments": found, "total_size": len(found)} if found else {}
        if path == "/apis/v2beta1/experiments" and method == "POST":
            body = self._json(request, "V2beta1Experiment")
            experiment = {**body, "experiment_id": uuid.uuid4().hex, "created_at": now}
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if path == "/apis/v2beta1/runs" and method == "POST":
            body = self._json(request, "V2beta1Run")
            self._check_reference(body)
            run = {**body, "run_id": uuid.uuid4().hex, "state": "PENDING", "created_at": now}
            self.runs[run["run_id"]] = run
            return 200, run
        m = re.fullmatch(r"/apis/v2beta1/runs/([^/:]+)", path)
        if m and method == "GET":
            run = self.runs[m.group(1)]
            run["state"] = "SUCCEEDED"
            return 200, run
        if path == "/apis/v2beta1/recurringruns" and method == "POST":
            body = self._json(request, "V2beta1RecurringRun")
            self._check_reference(body)
            job = {**body, "recurring_run_id": uuid.uuid4().hex, "created_at": now, "status": "ENABLED"}
            self.recurring[job["recurring_run_id"]] = job
            return 200, job
        if path == "/apis/v2beta1/recurringruns" and method == "GET":
            found = self._named(self.recurring.values(), query)
            return 200, {"recurringRuns": found, "total_size": len(found)} if found else {}
        m = re.fullmatch(r"/apis/v2beta1/recurringruns/([^/:]+)", path)
        if m and method == "DELETE":
            if self.recurring.pop(m.group(1), None) is None:
                return 404, {"code": 5, "message": "no such recurring run"}
            return 200, {}
        return 404, {"code": 5, "message": f"{method} {path}: not an endpoint this contract test serves"}

    def _check_reference(self, body: dict) -> None:
        ref = body.get("pipeline_version_reference") or {}
        version = self.versions.get(ref.get("pipeline_version_id"))
        if version is None or version["pipeline_id"] != ref.get("pipeline_id"):
            raise ValueError(f"pipeline_version_reference {ref} names no uploaded version")
        if body.get("experiment_id") not in self.experiments:
            raise ValueError(f"experiment_id {body.get('experiment_id')!r} does not exist")
        declared = version["pipeline_spec"]["root"]["inputDefinitions"]["parameters"]
        given = body.get("runtime_config", {}).get("parameters", {})
        unknown = set(given) - set(declared)
        if unknown:
            raise ValueError(f"runtime_config.parameters {sorted(unknown)} are not inputs of the pipeline")
