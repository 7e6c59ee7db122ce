"""Inputs a pod can reach. Data files may be URLs (s3://, gs://, hf://, https://, through fsspec); models may be
Hub ids, object-store folders, registered MLflow models (`models:/name@alias`, `models:/name/3`) or an installed
package (`module:pkg`). Each is fetched by the step that reads it, into a local cache, so a config names nothing
that only the submitting machine has. Credentials and endpoints come from the standard environment (AWS_*,
AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS, HF_TOKEN, MLFLOW_TRACKING_*), never from the config."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from kdpipe.errors import ConfigError, DataError, KdpipeError, ModelError

URL_SCHEMES = ("s3://", "gs://", "hf://", "https://", "http://")
REGISTRY = "models:/"
MODULE = "module:"


def is_url(ref: str | None) -> bool:
    return bool(ref) and ref.startswith(URL_SCHEMES)


def is_remote_model(ref: str) -> bool:
    """A model reference fetched inside the step (not a local folder, not a Hub id)."""
    return ref.startswith((REGISTRY, MODULE)) or is_url(ref)


def looks_like_path(ref: str) -> bool:
    """A local path as written (it may not exist), never a Hub id."""
    return Path(ref).exists() or ref.startswith(("/", "./", "../", "~")) or "\\" in ref


def cache_root() -> Path:
    return Path(os.environ.get("KDPIPE_CACHE") or Path.home() / ".cache" / "kdpipe")


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def explain(e: BaseException) -> str:
    """What went wrong with an object-store call, in the words of the fix."""
    text = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    if isinstance(e, FileNotFoundError):
        return "no such object (check the bucket and the key)"
    if isinstance(e, PermissionError) or any(w in text for w in ("AccessDenied", "Forbidden", "403",
                                                                   "InvalidAccessKeyId", "SignatureDoesNotMatch")):
        return (f"access denied ({text}); credentials come from the environment (AWS_ACCESS_KEY_ID/"
                f"AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, HF_TOKEN), on a cluster from a Secret")
    if isinstance(e, ImportError):
        return f"{text}; install the filesystem package for this scheme (s3fs, gcsfs) in the image"
    return f"cannot reach it ({text}); check the URL, and AWS_ENDPOINT_URL for an S3-compatible store"


def filesystem(url: str, key: str, error=DataError):
    import fsspec

    try:
        # A fresh client: credentials and endpoint as the environment says now, not as when one was first made.
        return fsspec.core.url_to_fs(url, skip_instance_cache=True)
    except (ImportError, ValueError) as e:
        raise error(f"{key} {url}: {explain(e)}") from None


def _atomic_fill(target: Path, fill) -> Path:
    """Fill a fresh folder and move it into place only when complete: an interrupted fetch leaves nothing that a
    later step would take for the whole."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=".partial-"))
    try:
        fill(partial)
        partial.rename(target)
    except OSError:
        if not target.exists():
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def fetch_file(url: str, key: str) -> str:
    """A local copy of the data file at url (cached by URL and the object's size and version)."""
    fs, path = filesystem(url, key)
    try:
        info = fs.info(path)
        if info.get("type") == "directory":
            raise DataError(f"{key} {url}: a folder, not a file; name one data file")
        version = {k: info.get(k) for k in ("size", "ETag", "etag", "LastModified", "mtime", "generation")}
        name = Path(path).name
        target = cache_root() / "files" / _digest(url, version)
        _atomic_fill(target, lambda folder: fs.get_file(path, str(folder / name)))
    except KdpipeError:
        raise
    except Exception as e:  # noqa: BLE001 (every object-store failure becomes one line naming the key and URL)
        raise DataError(f"{key} {url}: {explain(e)}") from None
    return str(target / name)


# ---------------------------------------------------------------- models

def model_files(ref: str, key: str, tracking_uri: str):
    """The file names of a remote model folder and a reader of one of them, for pre-flight checks (nothing
    large is downloaded); None for a reference that is not remote."""
    if ref.startswith(MODULE):
        folder = Path(_module_path(ref, key))
        return {p.name for p in folder.iterdir()}, lambda name: (folder / name).read_text()
    if ref.startswith(REGISTRY):
        source = _registry_source(ref, key, tracking_uri)
        ref = source
        if not is_url(source):  # a store's own artifact URI (file://, mlflow-artifacts:/...): through MLflow
            import mlflow

            try:
                files = {f.path.rsplit("/", 1)[-1] for f in mlflow.artifacts.list_artifacts(
                    artifact_uri=source, tracking_uri=tracking_uri)}
            except Exception as e:  # noqa: BLE001
                raise ModelError(f"{key}: cannot list the registered model's files at {source} ({e})") from None

            def read(name):
                with tempfile.TemporaryDirectory(prefix="kdpipe-preflight-") as folder:
                    return Path(mlflow.artifacts.download_artifacts(
                        artifact_uri=f"{source.rstrip('/')}/{name}", dst_path=folder,
                        tracking_uri=tracking_uri)).read_text()
            return files, read
    if not is_url(ref):
        return None
    fs, path = filesystem(ref, key, ModelError)
    try:
        files = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{key} {ref}: {explain(e)}") from None
    return files, lambda name: fs.cat_file(f"{path.rstrip('/')}/{name}").decode()


def fetch_model(ref: str, key: str, tracking_uri: str) -> str:
    """A model reference a loader understands: a local folder, or the Hub id as given."""
    if ref.startswith(MODULE):
        return _module_path(ref, key)
    if ref.startswith(REGISTRY):
        return _fetch_registered(ref, key, tracking_uri)
    if is_url(ref):
        return fetch_folder(ref, key)
    return ref


def local_model(cfg, which: str) -> str:
    """The configured teacher or student model (which = "teacher" | "student"), fetched if remote."""
    return fetch_model(getattr(cfg, which).model, f"{which}.model", cfg.tracking.uri)


def _module_path(ref: str, key: str) -> str:
    name = ref.removeprefix(MODULE)
    try:
        return str(importlib.import_module(name).get_model_path())
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{key} {ref!r}: cannot import {name}.get_model_path() ({e}); install the package "
                          f"(in the image, for a step in a container)") from None


def fetch_folder(url: str, key: str) -> str:
    fs, path = filesystem(url, key, ModelError)
    try:
        listing = fs.find(path, detail=True)
        if not listing:
            raise ModelError(f"{key} {url}: no such folder, or it is empty")
        version = sorted((p, v.get("size"), v.get("ETag") or v.get("etag") or v.get("mtime")) for p, v in listing.items())
        target = cache_root() / "models" / _digest(url, version)
        _atomic_fill(target, lambda folder: fs.get(path.rstrip("/") + "/", str(folder), recursive=True))
    except KdpipeError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{key} {url}: {explain(e)}") from None
    return str(target)


def _parse_registered(ref: str, key: str) -> tuple[str, str | None, str | None]:
    body = ref.removeprefix(REGISTRY)
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, None, alias
    name, _, version = body.rpartition("/")
    if not name or not version.isdigit():
        raise ConfigError(f"{key} {ref!r}: give a registered model as models:/NAME@ALIAS or models:/NAME/VERSION")
    return name, version, None


def registered_version(ref: str, key: str, tracking_uri: str):
    from kdpipe.tracking import open_store

    from mlflow.tracking import MlflowClient

    name, version, alias = _parse_registered(ref, key)
    open_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except Exception as e:  # noqa: BLE001 (not found, or the store is down: both are named with the key)
        what = f"alias {alias!r}" if alias else f"version {version}"
        raise ModelError(f"{key} {ref!r}: no registered model {name!r} with {what} in the MLflow registry at "
                         f"tracking.uri={tracking_uri} ({type(e).__name__})") from None
    return client, found


def _registry_source(ref: str, key: str, tracking_uri: str) -> str:
    client, found = registered_version(ref, key, tracking_uri)
    return client.get_model_version_download_uri(found.name, found.version)


def _fetch_registered(ref: str, key: str, tracking_uri: str) -> str:
    """The registered version's files, cached by name and version (an alias is resolved first, so a moved alias
    fetches the new version). The model folder is the one holding config.json."""
    import mlflow

    client, found = registered_version(ref, key, tracking_uri)
    target = cache_root() / "registry" / _digest(tracking_uri, found.name, found.version)
    try:
        _atomic_fill(target, lambda folder: mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{found.name}/{found.version}", dst_path=str(folder), tracking_uri=tracking_uri))
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{key} {ref!r}: cannot download version {found.version} ({type(e).__name__}: {e})") from None
    if not (target / "config.json").is_file():
        raise ModelError(f"{key} {ref!r}: version {found.version} holds no config.json; register a folder saved "
                         f"with save_pretrained (model.safetensors, config.json, tokenizer files)")
    return str(target)
