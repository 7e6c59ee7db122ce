"""`mlflow models serve` on loopback for a registered model, and the check that it answers as `kdpipe predict`."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kdpipe_kfp.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(model_uri: str, tracking_uri: str, log: Path, timeout_s: float = 180, env: dict | None = None):
    """The model served as a user serves it: `mlflow models serve -m URI --env-manager local` (`env`: more
    variables, e.g. SERVING_MODEL_CONFIG)."""
    port, bin_dir = free_port(), Path(sys.executable).parent
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
           **(env or {})}
    with open(log, "w") as out:
        proc = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
                                 "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        def why() -> str:
            return f"mlflow models serve exited {proc.returncode}" if proc.poll() is not None else ""

        yield wait_until_serving(f"http://127.0.0.1:{port}", lambda: log.read_text()[-3000:], timeout_s, why)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def wait_until_serving(url: str, output, timeout_s: float = 180, exited=lambda: "") -> str:
    """url once its /ping answers; fails with the server's output (`output()`) if it exits or never answers."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert not exited(), f"{exited()}:\n{output()}"
        with contextlib.suppress(OSError):
            if urllib.request.urlopen(url + "/ping", timeout=2).status == 200:
                return url
        assert time.monotonic() < deadline, f"not serving after {timeout_s} s:\n{output()}"
        time.sleep(0.25)


def invoke(url: str, texts: list[str]) -> list[dict]:
    request = urllib.request.Request(url + "/invocations", data=json.dumps({"inputs": texts}).encode(),
                                     headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"]


def assert_served_as_predicted(url: str, model: str, texts: list[str], capsys) -> list[dict]:
    """The served labels and scores are `kdpipe predict --json --model MODEL`'s, text for text."""
    served_rows = invoke(url, texts)
    capsys.readouterr()
    assert main(["predict", "--model", model, "--json", *texts]) == 0
    predicted = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(served_rows) == len(predicted) == len(texts)
    for got, want in zip(served_rows, predicted):
        assert got["labels"] == want["labels"], (got, want)
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-6)
    return served_rows
