"""Issue 25: the served model under concurrent load, side by side with what a user deploys without kdpipe (bench,
not a test).

Every server is `mlflow models serve --env-manager local` (uvicorn, MLflow's pyfunc scoring server, one worker),
reading its model from one MLflow server (proxied artifacts), all started in one script run and measured round
robin (the same minutes, the same machine):
  student int8     the SST-2 student of bench/reuse.py (MiniLM layers [0, 5], 20,000 rows) as kdpipe registers
                   it: the variant it serves (int8);
  student fp32     the same registered model, SERVING_MODEL_CONFIG={"variant": "fp32"};
  teacher          its teacher (MiniLM-L6 fine-tuned on the same rows) logged with mlflow.transformers as a
                   text-classification pipeline (torch, fp32): what a user serves without kdpipe;
  int8 + log       the int8 student with its request log on: to a file (sampling 1.0), to an unwritable path and
                   to an object store nobody answers at (the failing targets must cost no request and <= 10% p99).
Load: concurrency 1, 8 and 32 clients (threads, keep-alive connections), requests of 1 and 16 SST-2 dev sentences,
--seconds each after a 1 s warm-up; p50 and p99 latency per request, texts per second. In-process, for the
batching question: the int8 session's texts/s on batches of 1, 8 and 16 texts.

Cold start (--cold-start; needs the images of scripts/build-images.sh): each image serving the registered student
from the MLflow server, `docker run` to the first answer, 3 times each.

    .venv/bin/python bench/serve_load.py [--seconds 8] [--repeats 3] [--cold-start]

Needs bench/cache/reuse (run bench/reuse.py first). Writes bench/results/serve_load.json."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHARED, save  # noqa: E402

BIN = ROOT / ".venv" / "bin"
REUSE = ROOT / "bench" / "cache" / "reuse"
WORK = ROOT / "bench" / "cache" / "serve"
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> float:
    import urllib.request

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the server exited:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            if urllib.request.urlopen(url + "/ping" if "/health" not in url else url, timeout=2).status == 200:
                return time.monotonic() - started
        time.sleep(0.25)
    raise SystemExit(f"{url}: not answering after {timeout} s:\n{log.read_text()[-3000:]}")


def start(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", **(env or {})})


def stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)


def register(uri: str, texts: list[str]) -> tuple[str, str]:
    """The student as kdpipe registers it, and its teacher as a Transformers pipeline model; their URIs."""
    from importlib.metadata import version

    import mlflow
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kdpipe.pyfunc import log_text_model

    exports = sorted(REUSE.glob("run*/pipeline-root/*/export-register/onnx_model"))
    if not exports:
        raise SystemExit(f"{REUSE}: no exported student; run bench/reuse.py first")
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("bench-serve")
    with mlflow.start_run(run_name="student"):
        log_text_model(exports[-1], "bench-serve-student", texts[:3])
    reuse = mlflow.MlflowClient(f"sqlite:///{REUSE}/mlflow.db", registry_uri=f"sqlite:///{REUSE}/mlflow.db")
    teacher_dir = reuse.get_model_version_download_uri("bench-reuse-student-teacher", "1").removeprefix("file://")
    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    with mlflow.start_run(run_name="teacher"):
        mlflow.transformers.log_model({"model": model, "tokenizer": tokenizer}, name="model",
                                      task="text-classification", input_example=texts[:3],
                                      pip_requirements=[f"{p}=={version(p)}" for p in ("mlflow", "transformers", "torch")],
                                      registered_model_name="bench-serve-teacher")
    return "models:/bench-serve-student/1", "models:/bench-serve-teacher/1"


def load(url: str, texts: list[str], concurrency: int, size: int, seconds: float) -> dict:
    """`concurrency` clients sending `size` texts per request, back to back, for `seconds` (after 1 s warm-up)."""
    host, port = url.removeprefix("http://").split(":")
    latencies, counts, errors = [], [0], [0]
    lock = threading.Lock()
    began = time.monotonic()
    warm, end = began + 1.0, began + 1.0 + seconds

    def client(k: int):
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        i = k * 97
        while True:
            now = time.monotonic()
            if now >= end:
                break
            batch = [texts[(i + j) % len(texts)] for j in range(size)]
            i += size * concurrency
            t0 = time.perf_counter()
            conn.request("POST", "/invocations", json.dumps({"inputs": batch}), {"Content-Type": "application/json"})
            response = conn.getresponse()
            body = response.read()
            took = time.perf_counter() - t0
            ok = response.status == 200 and len(json.loads(body)["predictions"]) == size
            if time.monotonic() > warm:
                with lock:
                    if ok:
                        latencies.append(took)
                        counts[0] += size
                    else:
                        errors[0] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "errors": errors[0], "texts_per_s": round(counts[0] / seconds, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None}


def in_process_batching(export: Path, texts: list[str], seconds: float = 4.0) -> dict:
    """The int8 session on batches of 1, 8, 16 texts, no server: what server-side batching could gain at most."""
    from kdpipe.serving import OnnxClassifier

    clf = OnnxClassifier(export)
    out = {}
    for size in (1, 8, 16):
        done, i, began = 0, 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            clf.run(texts[i:i + size], batch_size=size)
            done, i = done + size, (i + size) % (len(texts) - size)
        out[str(size)] = round(done / (time.perf_counter() - began), 1)
    return out


def cold_start(uri: str, model: str, text: str, tries: int = 3) -> dict:
    """`docker run` of each image serving `model` from the tracking server, to its first answer (seconds)."""
    from kdpipe import __version__

    out = {}
    for kind in ("serve", "cpu"):
        image = f"ghcr.io/kdpipe/kdpipe:{__version__}-{kind}"
        size = int(subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", image], capture_output=True,
                                  text=True, check=True).stdout)
        times = []
        for _ in range(tries):
            port = free_port()
            began = time.monotonic()
            container = subprocess.run(
                ["docker", "run", "-d", "--network", "host", "-e", f"MLFLOW_TRACKING_URI={uri}", image, "mlflow",
                 "models", "serve", "-m", model, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                capture_output=True, text=True, check=True).stdout.strip()
            try:
                while time.monotonic() - began < 300:
                    with contextlib.suppress(OSError, http.client.HTTPException):
                        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                        conn.request("POST", "/invocations", json.dumps({"inputs": [text]}),
                                     {"Content-Type": "application/json"})
                        if conn.getresponse().status == 200:
                            times.append(round(time.monotonic() - began, 2))
                            break
                    time.sleep(0.1)
            finally:
                subprocess.run(["docker", "rm", "-f", container], capture_output=True)
        out[kind] = {"image": image, "size_mb": round(size / 1e6), "first_answer_s": times,
                     "median_s": float(np.median(times)) if times else None}
        print(f"cold start {image}: {out[kind]}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the p99 comparison (c=8) for the logs")
    parser.add_argument("--cold-start", action="store_true", help="also time each image's start to first answer")
    args = parser.parse_args()
    dev = (SHARED / "sst2/dev.tsv").read_text().splitlines()[1:]
    texts = [line.split("\t")[0] for line in dev]
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    (WORK / "a-file").write_text("")
    port = free_port()
    tracking = start([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{WORK}/mlflow.db",
                      "--artifacts-destination", str(WORK / "artifacts"), "--host", "127.0.0.1", "--port", str(port)],
                     WORK / "tracking.log")
    uri = f"http://127.0.0.1:{port}"
    servers, procs = {}, []
    try:
        wait_for(uri + "/health", tracking, WORK / "tracking.log")
        student, teacher = register(uri, texts)
        starts = cold_start(uri, student, texts[0]) if args.cold_start else None
        nobody = free_port()
        failing_s3 = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{nobody}", "AWS_ACCESS_KEY_ID": "x",
                      "AWS_SECRET_ACCESS_KEY": "y"}
        plan = {
            "student int8": (student, {}),
            "student fp32": (student, {"SERVING_MODEL_CONFIG": json.dumps({"variant": "fp32"})}),
            "teacher pipeline": (teacher, {}),
            "int8 + log to a file": (student, {"SERVING_MODEL_CONFIG": json.dumps(
                {"log_requests": str(WORK / "requests.jsonl")})}),
            "int8 + log, unwritable path": (student, {"SERVING_MODEL_CONFIG": json.dumps(
                {"log_requests": str(WORK / "a-file" / "requests.jsonl")})}),
            "int8 + log, unreachable store": (student, {"SERVING_MODEL_CONFIG": json.dumps(
                {"log_requests": "s3://logs/requests/"}), **failing_s3}),
        }
        for name, (model, env) in plan.items():
            p = free_port()
            log = WORK / f"serve-{len(procs)}.log"
            proc = start([str(BIN / "mlflow"), "models", "serve", "-m", model, "--env-manager", "local",
                          "-h", "127.0.0.1", "-p", str(p), "--workers", "1"], log,
                         {"MLFLOW_TRACKING_URI": uri, **env})
            procs.append(proc)
            servers[name] = f"http://127.0.0.1:{p}"
            print(f"{name}: ready in {wait_for(servers[name], proc, log):.1f} s", flush=True)
        grid = {}
        for concurrency in (1, 8, 32):
            for size in (1, 16):
                for name in ("student int8", "student fp32", "teacher pipeline"):
                    cell = load(servers[name], texts, concurrency, size, args.seconds)
                    grid.setdefault(name, {})[f"c{concurrency} x{size}"] = cell
                    print(f"{name:>18} c={concurrency:<2} texts/request={size:<2} {cell}", flush=True)
        logs = {}
        for repeat in range(args.repeats):
            for size in (1, 16):
                for name in ("student int8", "int8 + log to a file", "int8 + log, unwritable path",
                             "int8 + log, unreachable store"):
                    cell = load(servers[name], texts, 8, size, args.seconds)
                    logs.setdefault(name, {}).setdefault(f"c8 x{size}", []).append(cell)
                    print(f"round {repeat + 1} {name:>30} c=8 texts/request={size:<2} {cell}", flush=True)
    finally:
        for proc in procs:
            stop(proc)
        stop(tracking)
    logged_rows = len((WORK / "requests.jsonl").read_text().splitlines()) if (WORK / "requests.jsonl").exists() else 0
    ratios = {key: round(grid["student int8"][key]["texts_per_s"] / grid["teacher pipeline"][key]["texts_per_s"], 2)
              for key in grid["student int8"]}
    int8_vs_fp32 = {key: round(grid["student int8"][key]["texts_per_s"] / grid["student fp32"][key]["texts_per_s"], 2)
                    for key in grid["student int8"]}
    p99 = {name: {key: round(float(np.median([c["p99_ms"] for c in cells])), 2) for key, cells in by_key.items()}
           for name, by_key in logs.items()}
    # Paired by round (the same minute of the machine for both), then the median over rounds.
    def paired_rise(cells: list[dict], baseline: list[dict]) -> float:
        return round(float(np.median([c["p99_ms"] / b["p99_ms"] for c, b in zip(cells, baseline)])) - 1, 3)

    p99_rise = {name: {key: paired_rise(cells, logs["student int8"][key]) for key, cells in by_key.items()}
                for name, by_key in logs.items() if name != "student int8"}
    exports = sorted(REUSE.glob("run*/pipeline-root/*/export-register/onnx_model"))
    save("serve_load", {
        "command": "bench/serve_load.py " + " ".join(sys.argv[1:]),
        "seconds_per_cell": args.seconds, "grid": grid,
        "student_int8_over_teacher_texts_per_s": ratios, "int8_over_fp32_texts_per_s": int8_vs_fp32,
        "request_log": {"cells": logs, "median_p99_ms": p99, "p99_rise_vs_no_log_paired_median": p99_rise,
                        "rows_logged_to_file": logged_rows,
                        "errors": {name: sum(c["errors"] for cells in by_key.values() for c in cells)
                                   for name, by_key in logs.items()}},
        "in_process_int8_texts_per_s_by_batch": in_process_batching(exports[-1], texts),
        "cold_start": starts,
    })


if __name__ == "__main__":
    main()
