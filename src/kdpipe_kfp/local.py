"""`kdpipe run`: the pipeline on KFP's local runner (no cluster); the summary is read back from MLflow."""

from __future__ import annotations

import builtins
import json
import logging
import sys
import time
from pathlib import Path

from kdpipe.config import Config
from kdpipe.summary import build_summary

INVOCATION_TAG = "kdpipe.invocation"  # on the parent run: which `kdpipe run` started it


def local_safe_json(value) -> str:
    """JSON for a pipeline parameter under KFP's local SubprocessRunner, which rewrites every "python3" in a
    task's arguments (parameter values included) to its own interpreter path: a site-packages path in the
    config would be corrupted. A JSON unicode escape hides the substring; json.loads restores it."""
    return json.dumps(value).replace("python3", "pyth\\u006fn3")


def hpo_workers(cfg: Config) -> list[int]:
    """The pipeline parameter hpo_workers: one ParallelFor item per worker, none when HPO is off."""
    return list(range(cfg.hpo.workers)) if cfg.hpo.enabled else []


def teacher_shards(cfg: Config) -> list[int]:
    """The pipeline parameter teacher_shards: one ParallelFor item per shard task, none for a single shard
    (evaluate-teacher computes the missing rows itself)."""
    return list(range(cfg.teacher.shards)) if cfg.teacher.shards > 1 else []


def pipeline_arguments(cfg: Config, distill_params: dict | None = None, encode=json.dumps, force: bool = False) -> dict:
    """The pipeline's parameters for a resolved config (the same for a local run and a cluster run). `force`:
    train even when config and data are those of the current champion."""
    return {"config_json": encode(cfg.to_dict()),
            "distill_params_json": encode(distill_params) if distill_params else "",
            "hpo_workers": hpo_workers(cfg), "force": force, "teacher_shards": teacher_shards(cfg)}


def not_started(cfg: Config, output_dir: str | Path, why: str) -> dict:
    """The summary of a run the store stopped before it started (status error), written over the output folder's
    summary.json so that nothing reads the previous run's outcome as this one's."""
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = {**build_summary(cfg, "", 0.0, output_dir, why, read=(None, {}, [why])), "log": None,
               "not_started": why}
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def run_local(cfg: Config, output_dir: str | Path, distill_params: dict | None = None,
              runner: str = "subprocess", force: bool = False, verbose: bool = False) -> dict:
    """Run the whole pipeline locally; returns the summary (also written to output_dir/summary.json and to the
    run's own folder). runner "subprocess": each step a process of this Python; "docker": each step in the image
    (kdpipe_kfp.containers). The run is found by a tag only this invocation sets on its parent run, so runs
    started together in one output folder each report themselves. What KFP and the steps print goes to the
    run's log (`kdpipe.log` in its folder); the terminal shows a line per step and progress bars (kdpipe_kfp.console),
    or, with `verbose`, the log itself."""
    import contextlib
    import uuid

    from kfp import local

    from kdpipe.recovery import driver_tags, end_lost_runs
    from kdpipe.tracking import (
        RUN_TAG,
        end_unfinished,
        find_parent_by_tag,
        store_failure,
    )
    from kdpipe_kfp.console import RunConsole
    from kdpipe_kfp.pipeline import CPU_ONLY, make_pipeline

    try:
        lost = end_lost_runs(cfg)  # the run's first use of the store
    except Exception as e:
        why = store_failure(e)
        if why is None:
            raise
        return not_started(cfg, output_dir, f"the MLflow store at tracking.uri={cfg.tracking.uri} {why}; the "
                                            f"pipeline did not start")
    for run_id in lost:
        print(f"kdpipe: MLflow run {run_id} was left RUNNING by a kdpipe process that is gone: marked KILLED",
              file=sys.stderr)
    invocation = uuid.uuid4().hex
    cfg = cfg.model_copy(deep=True)
    cfg.tracking.tags = {**cfg.tracking.tags, INVOCATION_TAG: invocation, **driver_tags()}
    output_dir = Path(output_dir).resolve()
    root = output_dir / "pipeline-root"
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.iterdir())
    placement = CPU_ONLY  # locally every step runs on this machine's CPU (KFP's local runners ignore GPU requests)
    if runner == "docker":
        from kdpipe_kfp.containers import docker_runner

        kfp_runner = docker_runner(cfg, root, placement.image)
    else:
        kfp_runner = local.SubprocessRunner(use_venv=False)
    local.init(runner=kfp_runner, pipeline_root=str(root))
    started = time.perf_counter()
    failure = None
    unpatched_print, root_logger = builtins.print, logging.getLogger()
    root_handlers, root_level = root_logger.handlers[:], root_logger.level
    log_path = root / f"kdpipe-{invocation}.log"
    print(f"kdpipe run: log {log_path}", file=sys.stderr)
    try:
        with open(log_path, "w") as log:
            console = RunConsole(log, verbose=verbose)
            try:
                with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
                    make_pipeline(placement, secret="")(**pipeline_arguments(cfg, distill_params, local_safe_json,
                                                                             force))
            finally:
                console.detach()
    except RuntimeError as e:  # the local runner raises when a task fails; details are in MLflow
        failure = str(e)
    except BaseException:  # Ctrl-C or SIGTERM: end this run's MLflow runs now, not at the next run
        parent = find_parent_by_tag(cfg, INVOCATION_TAG, invocation)
        if parent is not None:
            end_unfinished(cfg, parent.info.run_id, "kdpipe run was interrupted")
        raise
    finally:
        # KFP's local runner indents task logs by swapping builtins.print; two tasks of a ParallelFor doing it at
        # once can leave it swapped, and everything printed after (the summary) indented.
        builtins.print = unpatched_print
        # Likewise its logger: each task swaps the root logger's handlers for one on sys.stdout and puts back what
        # it found, so two tasks at once can leave one on this run's console installed.
        root_logger.handlers[:], root_logger.level = root_handlers, root_level
    wall = time.perf_counter() - started
    try:
        parent = find_parent_by_tag(cfg, INVOCATION_TAG, invocation)
    except Exception as e:  # the store is down: the summary says so, from what is known without it
        if not store_failure(e):
            raise
        parent = None
    if parent is not None:
        run_dir = root / parent.data.tags[RUN_TAG]
    else:  # no parent run (tracking failed before the first step opened one): the newest new folder
        new = sorted((p for p in set(root.iterdir()) - before if p.is_dir()), key=lambda p: p.stat().st_mtime)
        if not new:
            raise RuntimeError(f"the local pipeline run left no folder under {root}: {failure}")
        run_dir = new[-1]
    log_path = log_path.rename(run_dir / "kdpipe.log")
    summary = build_summary(cfg, run_dir.name, wall, run_dir, failure)
    summary["log"] = str(log_path)
    for folder in (output_dir, run_dir):
        (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
