"""Request logs: a sample of what the served model saw (text, labels, scores, which model, when), written as JSON
lines that `data.unlabeled` reads as they are. Off the request path: a request only samples and queues its rows
(microseconds); one background thread serialises and writes them. A target that fails (unwritable path,
unreachable endpoint) costs the rows, never a request; a full queue drops rows rather than grow or wait.

Targets: a file path (rows appended; one write per batch, so the workers of one server can share it), a folder
path ending in `/` or an object-store URL (`s3://bucket/prefix/`): part files `requests-<UTC time>-<host>-<pid>-
<n>.jsonl` in it, since objects cannot be appended to."""

from __future__ import annotations

import atexit
import json
import os
import queue
import random
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from kdpipe.sources import is_url

_STOP = object()  # close(): write what is queued, then end the writer


class RequestLog:
    def __init__(self, target: str, sample_rate: float, text_column: str = "text", model: dict | None = None,
                 flush_rows: int = 256, flush_seconds: float = 2.0, max_pending: int = 20_000):
        if not 0 <= sample_rate <= 1:
            raise ValueError(f"log_sample_rate must be within [0, 1], got {sample_rate}")
        self.target, self.sample_rate, self.text_column = target, sample_rate, text_column
        self.model = dict(model or {})  # model_id, run_id, variant; the registered version is looked up once
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self.parts = target.endswith("/") or is_url(target)
        self.pending: queue.Queue = queue.Queue(maxsize=max_pending)
        self.written = self.dropped = self.failed = self.attempts = 0
        self._part, self._retry_at, self._backoff = 0, 0.0, 0.0
        self._fs = None
        if is_url(target):  # the client made now, at load: its imports would otherwise hold the interpreter mid-traffic
            from kdpipe.sources import filesystem

            self._fs = filesystem(target, "serving.log_requests", error=ValueError)
        self._last_warning = 0.0
        self._thread = threading.Thread(target=self._write_forever, name="kdpipe-request-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def record(self, predictions: list[dict]) -> None:
        """On the request path: sample and queue. Never raises, never blocks."""
        try:
            now = time.time()
            for p in predictions:
                if self.sample_rate < 1 and random.random() >= self.sample_rate:
                    continue
                try:
                    self.pending.put_nowait((now, p))
                except queue.Full:
                    self.dropped += 1
        except Exception:  # noqa: BLE001 (logging must never fail a request)
            self.dropped += len(predictions) if isinstance(predictions, list) else 1

    def close(self, timeout: float = 10) -> None:
        """Write what is queued and stop (at exit; tests call it to read the log at once)."""
        if self._thread.is_alive():
            self.pending.put(_STOP)
            self._thread.join(timeout)

    def _write_forever(self) -> None:
        """Batches of up to flush_rows rows, none waiting longer than flush_seconds; idle, it sleeps on the queue."""
        batch, due = [], None
        while True:
            try:
                item = self.pending.get(timeout=None if due is None else max(0.0, due - time.monotonic()))
            except queue.Empty:  # the batch's first row has waited flush_seconds
                item = None
            if item is not None and item is not _STOP:
                batch.append(item)
                due = due or time.monotonic() + self.flush_seconds
            if batch and (item is None or item is _STOP or len(batch) >= self.flush_rows):
                self._write(batch)
                batch, due = [], None
            if item is _STOP:
                return

    def _rows(self, batch) -> bytes:
        if "model_version" not in self.model:
            self.model["model_version"] = registered_version(self.model.get("run_id"), self.model.get("model_id"))
        lines = []
        for when, p in batch:
            row = {self.text_column: p["text"], "labels": p["labels"], "scores": p["scores"], **self.model,
                   "time": datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds")}
            lines.append(json.dumps(row, ensure_ascii=False))
        return ("\n".join(lines) + "\n").encode()

    def _write(self, batch) -> None:
        if time.monotonic() < self._retry_at:  # the target failed lately: drop without the work of writing
            self.failed += len(batch)
            return
        self.attempts += 1
        try:
            data = self._rows(batch)
            if not self.parts:
                fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, data)  # one write of whole lines: appends from several workers do not interleave
                finally:
                    os.close(fd)
            else:
                self._part += 1
                stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
                name = f"requests-{stamp}-{socket.gethostname()}-{os.getpid()}-{self._part}.jsonl"
                if self._fs is not None:  # one client for the server's life: making one costs more than a write
                    fs, prefix = self._fs
                    fs.pipe_file(f"{prefix.rstrip('/')}/{name}", data)
                else:
                    Path(self.target).mkdir(parents=True, exist_ok=True)
                    (Path(self.target) / name).write_bytes(data)
            self.written += len(batch)
            self._backoff = 0.0
        except Exception as e:  # noqa: BLE001 (a failing target loses rows, says so, and never reaches a request)
            self.failed += len(batch)
            # Retried after 5 s, then 10, 20... up to 5 min: a dead target costs the server next to nothing (each
            # try is Python work on the server's interpreter, and connection retries are many).
            self._backoff = min(300.0, max(5.0, self._backoff * 2))
            self._retry_at = time.monotonic() + self._backoff
            if time.monotonic() - self._last_warning > 60:  # one line a minute, not one per batch
                self._last_warning = time.monotonic()
                print(f"kdpipe: request log {self.target}: cannot write ({type(e).__name__}: "
                      f"{str(e).strip()[:200]}); {self.failed} row(s) lost so far, requests are unaffected",
                      file=sys.stderr, flush=True)


def registered_version(run_id: str | None, model_id: str | None) -> str | None:
    """The registered version of the served model (the version whose source is its logged model), from the
    tracking server it was loaded from; None when that cannot be told."""
    if not run_id or not model_id:
        return None
    try:
        from mlflow.tracking import MlflowClient

        for v in MlflowClient().search_model_versions(f"run_id = '{run_id}'"):
            if str(v.source).endswith(model_id):
                return f"{v.name}/{v.version}"
    except Exception:  # noqa: BLE001 (no tracking server here: the model id still says which model it was)
        return None
    return None
