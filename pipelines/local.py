"""`kdpipe run`: the pipeline on KFP's local runner (no cluster); the summary is read back from MLflow."""

from __future__ import annotations

import json
import time
from pathlib import Path

from kdpipe.config import Config
from kdpipe.summary import build_summary


def local_safe_json(value) -> str:
    """JSON for a pipeline parameter under KFP's local SubprocessRunner, which rewrites every "python3" in a
    task's arguments (parameter values included) to its own interpreter path: a site-packages path in the
    config would be corrupted. A JSON unicode escape hides the substring; json.loads restores it."""
    return json.dumps(value).replace("python3", "pyth\\u006fn3")


def hpo_workers(cfg: Config) -> list[int]:
    """The pipeline parameter hpo_workers: one ParallelFor item per worker, none when HPO is off."""
    return list(range(cfg.hpo.workers)) if cfg.hpo.enabled else []


def pipeline_arguments(cfg: Config, distill_params: dict | None = None, encode=json.dumps) -> dict:
    """The pipeline's parameters for a resolved config (the same for a local run and a cluster run)."""
    return {"config_json": encode(cfg.to_dict()),
            "distill_params_json": encode(distill_params) if distill_params else "",
            "hpo_workers": hpo_workers(cfg)}


def run_local(cfg: Config, output_dir: str | Path, distill_params: dict | None = None) -> dict:
    """Run the whole pipeline locally; returns the summary (also written to output_dir/summary.json)."""
    from kfp import local

    from kdpipe_kfp.kdpipe_pipeline import make_pipeline

    output_dir = Path(output_dir).resolve()
    root = output_dir / "pipeline-root"
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.iterdir())
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    started = time.perf_counter()
    failure = None
    try:
        make_pipeline(accelerator="", gpus=0, secret="")(**pipeline_arguments(cfg, distill_params, local_safe_json))
    except RuntimeError as e:  # the local runner raises when a task fails; details are in MLflow
        failure = str(e)
    wall = time.perf_counter() - started
    new = sorted(set(root.iterdir()) - before, key=lambda p: p.stat().st_mtime)
    if not new:
        raise RuntimeError(f"the local pipeline run left no folder under {root}: {failure}")
    summary = build_summary(cfg, new[-1].name, wall, new[-1], failure)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
