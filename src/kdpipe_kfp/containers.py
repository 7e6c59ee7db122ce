"""`kdpipe run --runner docker`: every step in the built image under KFP's DockerRunner, in a cluster's topology.
Steps reach the MLflow tracking server (and Optuna's database) over the network and fetch remote inputs
themselves; the one thing of this machine they see is the config's local input files and model folders,
mounted read-only at their own paths (what a laptop user's config names)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from kdpipe.config import Config
from kdpipe.errors import ConfigError
from kdpipe.sources import is_remote_model, is_url

# Passed from this machine's environment into each step, as a cluster passes a Secret's keys: never the config.
FORWARDED = ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT", "OPTUNA_STORAGE",
             "TOKENIZERS_PARALLELISM")
FORWARDED_PREFIXES = ("MLFLOW_", "AWS_")


def check_topology(cfg: Config, who: str = "--runner docker") -> None:
    """The stores a step shares with the others are servers, not files of this machine: named with the key and the
    fix (for --runner docker, and for kdpipe submit/schedule)."""
    if urlsplit(cfg.tracking.uri).scheme not in ("http", "https", "databricks"):
        raise ConfigError(f"{who}: tracking.uri {cfg.tracking.uri} is a file on this machine, which the steps "
                          f"cannot share; give an MLflow tracking server (locally: bash scripts/tracking-server.sh "
                          f"start DIR prints its URI; on a cluster e.g. http://kdpipe-mlflow.kdpipe:5000)")
    if cfg.hpo.enabled and cfg.hpo.storage.startswith(("journal:", "sqlite:")):
        raise ConfigError(f"{who}: hpo.storage {cfg.hpo.storage} is a file on this machine; give HPO workers a "
                          f"database: --set hpo.storage=env:OPTUNA_STORAGE, with OPTUNA_STORAGE exported here "
                          f"(scripts/tracking-server.sh prints one) or set from the cluster's Secret")


def local_inputs(cfg: Config) -> list[str]:
    """The config's inputs that are files or folders of this machine (absolute, as config loading made them)."""
    paths = [path for _, path in cfg.input_files() if not is_url(path)]
    paths += [ref for _, ref in cfg.input_models() if not is_remote_model(ref) and Path(ref).exists()]
    return sorted(set(paths))


def docker_runner(cfg: Config, pipeline_root: Path, image: str):
    """KFP's DockerRunner for this config: host network (the tracking server on loopback is the cluster's
    service), the image's non-root user writing the pipeline root, local inputs mounted read-only."""
    from docker.types import Mount
    from kfp import local

    import docker

    check_topology(cfg)
    try:
        client = docker.from_env()
    except docker.errors.DockerException as e:
        raise ConfigError(f"--runner docker: no Docker engine answers ({type(e).__name__}); start Docker "
                          f"(scripts/docker-engine.sh as root installs and starts one)") from None
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise ConfigError(f"--runner docker: the image {image} is not built here; run bash scripts/build-images.sh "
                          f"(or set KDPIPE_IMAGE to an image of yours)") from None
    finally:
        client.close()
    env = {k: v for k, v in os.environ.items() if k in FORWARDED or k.startswith(FORWARDED_PREFIXES)}
    run_as = {}
    if os.geteuid() == 0:  # the image's own user (10001) writes outputs: the root must let it
        pipeline_root.chmod(0o777)
    else:  # as this user, so that this user can read and clean up what the steps wrote
        run_as = {"user": f"{os.getuid()}:{os.getgid()}"}
        env.update(HOME="/tmp", HF_HOME="/tmp/huggingface")
    mounts = [Mount(target=p, source=p, type="bind", read_only=True) for p in local_inputs(cfg)]
    return local.DockerRunner(network_mode="host", mounts=mounts, environment=env, **run_as)
