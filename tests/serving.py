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
def served(model_uri: str, tracking_uri: str, log: Path, timeout_s: float = 180):
    """The model served as a user serves it: `mlflow models serve -m URI --env-manager local`."""
    port, bin_dir = free_port(), Path(sys.executable).parent
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    with open(log, "w") as out:
        proc = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
                                 "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            assert proc.poll() is None, f"mlflow models serve exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(url + "/ping", timeout=2).status == 200:
                    break
            assert time.monotonic() < deadline, f"not serving after {timeout_s} s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


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
