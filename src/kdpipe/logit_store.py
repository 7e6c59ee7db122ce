"""Teacher logits stored per row and shared by every run: computed once per (teacher, row), wherever the run is.

A row's key is a 16-byte hash of exactly what the teacher reads (its tokenized inputs: the text, the tokenizer
and max_length in one); the store is namespaced by a digest of the teacher's weights, so logits of two teachers
are never mixed. The store holds immutable shard files (safetensors: `keys` [n, 16] uint8, `logits` [n, k]
float32), each named by the hash of its bytes: a reader checks every file it takes, a damaged or half-written
one is skipped with one line (its rows are computed again), and a run only ever adds a file.

Where: `teacher.logit_store`: `mlflow` (default: the tracking server's artifact store, as artifacts of one run
per teacher in the experiment `kdpipe-teacher-logits`, so every pod that tracks reaches it) or a folder or
object-store URL (`s3://bucket/kdpipe-logits/`, through fsspec). Downloaded files are cached locally by name."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("kdpipe.logit_store")

STORE_EXPERIMENT = "kdpipe-teacher-logits"
NAMESPACE_TAG = "kdpipe.teacher_digest"
FOLDER = "logits"
KEY_BYTES = 16


def weights_digest(model) -> str:
    """The teacher's identity: a hash of its parameters and buffers (names, dtypes, shapes, values), the same
    however the weights arrived (fine-tuned here, from the registry, from the Hub)."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(memoryview(t.view(torch.uint8).numpy()))
    return h.hexdigest()[:32]


def row_keys(dataset, inputs: list[str]) -> np.ndarray:
    """[n, 16] uint8: each row's key, a hash of the model inputs the teacher is given (named columns, in order),
    read from the Arrow columns without making Python lists of them."""
    inputs = sorted(inputs)
    table = dataset.with_format("arrow")[:]
    columns = []
    for name in inputs:
        column = table.column(name).combine_chunks()
        columns.append((name.encode(), column.offsets.to_numpy(), column.values.to_numpy().astype(np.int32)))
    keys = np.empty((len(table), KEY_BYTES), dtype=np.uint8)
    for i in range(len(table)):
        h = hashlib.blake2b(digest_size=KEY_BYTES)
        for name, offsets, values in columns:
            h.update(name)
            h.update(values[offsets[i]:offsets[i + 1]].tobytes())
        keys[i] = np.frombuffer(h.digest(), dtype=np.uint8)
    return keys


def shard_of(keys: np.ndarray, shards: int) -> np.ndarray:
    """Which of `shards` tasks computes each row: from its key, so every task agrees whatever the store holds."""
    return keys[:, :4].copy().view(">u4").reshape(-1) % shards


# ---------------------------------------------------------------- where the files live

class _MLflowFiles:
    """Shard files as artifacts of the store run(s) of one teacher (two runs may exist if two pods created one
    at once: both are read)."""

    def __init__(self, cfg, namespace: str):
        from kdpipe.tracking import experiment_id, mlflow_client

        self.cfg, self.namespace, self.client = cfg, namespace, mlflow_client(cfg)
        self.experiment = experiment_id(cfg, STORE_EXPERIMENT)
        self.where = f"MLflow experiment {STORE_EXPERIMENT} at tracking.uri={cfg.tracking.uri}"

    def _runs(self):
        return self.client.search_runs([self.experiment], f"tags.`{NAMESPACE_TAG}` = '{self.namespace}'",
                                       order_by=["attributes.start_time ASC"], max_results=100)

    def names(self) -> dict[str, str]:
        found = {}
        for run in self._runs():
            for f in self.client.list_artifacts(run.info.run_id, FOLDER):
                found.setdefault(f.path.rsplit("/", 1)[-1], run.info.run_id)
        return found

    def get(self, name: str, where: str, folder: Path) -> Path:
        return Path(self.client.download_artifacts(where, f"{FOLDER}/{name}", str(folder)))

    def put(self, file: Path) -> None:
        runs = self._runs()
        if runs:
            run_id = runs[0].info.run_id
        else:  # a finished run that only holds files: the KILLED sweep of `kdpipe run` leaves it alone
            run_id = self.client.create_run(self.experiment, run_name=f"teacher-{self.namespace[:12]}",
                                            tags={NAMESPACE_TAG: self.namespace}).info.run_id
            self.client.set_terminated(run_id, "FINISHED")
        self.client.log_artifact(run_id, str(file), FOLDER)


class _FolderFiles:
    """Shard files in `<url>/<teacher digest>/`, written under a temporary name and renamed when complete."""

    def __init__(self, url: str, namespace: str):
        from kdpipe.sources import filesystem

        self.fs, root = filesystem(url, "teacher.logit_store")
        self.folder = f"{root.rstrip('/')}/{namespace}"
        self.where = f"teacher.logit_store={url}"

    def names(self) -> dict[str, str]:
        if not self.fs.exists(self.folder):
            return {}
        paths = self.fs.ls(self.folder, detail=False)
        return {p.rsplit("/", 1)[-1]: p for p in paths if not p.rsplit("/", 1)[-1].startswith(".")}

    def get(self, name: str, where: str, folder: Path) -> Path:
        self.fs.get_file(where, str(folder / name))
        return folder / name

    def put(self, file: Path) -> None:
        self.fs.makedirs(self.folder, exist_ok=True)
        partial = f"{self.folder}/.partial-{file.name}"
        self.fs.put_file(str(file), partial)
        self.fs.mv(partial, f"{self.folder}/{file.name}")


# ---------------------------------------------------------------- the store

@dataclass
class Found:
    """A lookup's answer for the keys asked: their logits (NaN where missing), which were found, and which of
    those this pipeline run stored itself (its shard tasks)."""

    logits: np.ndarray
    found: np.ndarray
    own: np.ndarray


class LogitStore:
    """One teacher's logits (namespace: its weights digest) in the configured place."""

    def __init__(self, cfg, namespace: str):
        from kdpipe.sources import cache_root

        self.namespace = namespace
        url = cfg.teacher.logit_store
        self.files = _MLflowFiles(cfg, namespace) if url == "mlflow" else _FolderFiles(url, namespace)
        self.cache = cache_root() / "logit-store" / namespace

    def _read(self, name: str, where: str):
        """(keys, logits, pipeline run) of one shard file, or None (with one line) when it cannot be trusted."""
        cached = self.cache / name
        try:
            if not cached.is_file():
                self.cache.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=self.cache, prefix=".download-") as tmp:
                    shutil.move(str(self.files.get(name, where, Path(tmp))), cached)
            data = cached.read_bytes()
            if hashlib.sha256(data).hexdigest()[:32] != name.removesuffix(".safetensors"):
                raise ValueError("its content does not match its name (damaged or cut short)")
            from safetensors import safe_open

            with safe_open(str(cached), framework="np") as f:
                meta, keys, logits = f.metadata() or {}, f.get_tensor("keys"), f.get_tensor("logits")
            if meta.get("teacher") != self.namespace or keys.shape != (logits.shape[0], KEY_BYTES):
                raise ValueError(f"it holds logits of teacher {meta.get('teacher')} or of a wrong shape")
            return keys, logits, meta.get("pipeline_run", "")
        except Exception as e:  # noqa: BLE001 (whatever is wrong with one file, its rows are computed again)
            cached.unlink(missing_ok=True)
            log.warning("kdpipe: logit store: shard %s in %s cannot be used (%s); its rows are computed again",
                        name, self.files.where, str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
            return None

    def lookup(self, keys: np.ndarray, num_labels: int, pipeline_run: str, only_own: bool = False) -> Found:
        """The stored logits of these keys; with `only_own`, only what this pipeline run stored."""
        logits = np.full((len(keys), num_labels), np.nan, dtype=np.float32)
        found, own = np.zeros(len(keys), bool), np.zeros(len(keys), bool)
        wanted = {k.tobytes(): i for i, k in enumerate(keys)}
        for name, where in sorted(self.files.names().items()):
            shard = self._read(name, where)
            if shard is None or (only_own and shard[2] != pipeline_run) or shard[1].shape[1] != num_labels:
                continue
            for key, row in zip(shard[0], shard[1]):
                i = wanted.get(key.tobytes())
                if i is not None and not found[i]:
                    logits[i], found[i], own[i] = row, True, shard[2] == pipeline_run
        return Found(logits, found, own)

    def add(self, keys: np.ndarray, logits: np.ndarray, pipeline_run: str) -> None:
        """Store newly computed rows as one new shard file."""
        from safetensors.numpy import save

        if not len(keys):
            return
        data = save({"keys": np.ascontiguousarray(keys, np.uint8), "logits": np.ascontiguousarray(logits, np.float32)},
                    metadata={"teacher": self.namespace, "pipeline_run": pipeline_run, "rows": str(len(keys))})
        name = hashlib.sha256(data).hexdigest()[:32] + ".safetensors"
        self.cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.cache, prefix=".upload-") as tmp:
            file = Path(tmp) / name
            file.write_bytes(data)
            self.files.put(file)
            shutil.move(str(file), self.cache / name)
