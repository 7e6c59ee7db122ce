"""Data-parallel training inside one step's pod. With N training processes (one per GPU the pod sees, or
`distillation.processes`), a training function (teacher fine-tuning, distillation) runs under torchrun as N ranks
of the Trainer's own DDP (NCCL on GPUs, gloo on CPU). The step's own process keeps its MLflow run and waits;
rank 0 alone keeps checkpoints on that run, writes the outputs and hands back the result; the configured batch
size stays the global batch (each rank takes its share). A run that outgrows one node: kdpipe.distill.distill_job
and docs/operations.md."""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from kdpipe import errors

RESULT, ERROR, SPEC = "result.json", "error.json", "spec.json"


def processes(cfg) -> int:
    """How many training processes a step runs: distillation.processes, or with `auto` one per visible GPU."""
    wanted = cfg.distillation.processes
    if wanted != "auto":
        return int(wanted)
    import torch

    return max(1, torch.cuda.device_count())


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Rank 0, or not data parallel at all: the process that writes outputs and talks to MLflow."""
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def check_batch(batch_size: int, n: int, key: str) -> int:
    """The configured (global) batch size split among n ranks: refused before any process starts if it does not
    split evenly."""
    if batch_size % n:
        raise errors.ConfigError(f"{key} {batch_size} does not split among {n} training processes; use a "
                                 f"multiple of {n}")
    return batch_size // n


def run_parallel(function: str, n: int, cfg, keeper=None, **kwargs) -> dict:
    """Run `function` ("module:name", called as function(cfg, **kwargs, keeper=...)) as n ranks under torchrun;
    rank 0's return value. A bad-input error in any rank (the first to fail) is raised here as the same kdpipe
    error."""
    with tempfile.TemporaryDirectory(prefix="kdpipe-ddp-") as folder:
        spec = {"function": function, "config": cfg.to_dict(), "kwargs": kwargs,
                "keeper": [keeper.run_id, keeper.pipeline_run] if keeper is not None else None}
        Path(folder, SPEC).write_text(json.dumps(spec, default=str))
        logging.getLogger("kdpipe.parallel").info("kdpipe: training in %d processes (data parallel)", n)
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               f"--nproc-per-node={n}", "-m", "kdpipe.parallel", folder])
        error = Path(folder, ERROR)
        if error.is_file():
            failure = json.loads(error.read_text())
            raise getattr(errors, failure["type"], errors.KdpipeError)(failure["message"])
        if done.returncode != 0 or not Path(folder, RESULT).is_file():
            raise RuntimeError(f"data-parallel training in {n} processes failed (torchrun exit code "
                               f"{done.returncode}); the lines above say why")
        return json.loads(Path(folder, RESULT).read_text())


def _rank_main(folder: str) -> None:
    """One rank: the function with the config, rank 0's keeper; rank 0's result written, or the first bad-input
    error of any rank."""
    from kdpipe.config import Config

    if is_main():  # the step's progress and lifecycle lines, once
        core = logging.getLogger("kdpipe")
        core.addHandler(logging.StreamHandler(sys.stderr))
        core.setLevel(logging.INFO)
        core.propagate = False
    spec = json.loads(Path(folder, SPEC).read_text())
    cfg = Config.model_validate(spec["config"])
    keeper = None
    if spec["keeper"] and is_main():
        from kdpipe.recovery import RunCheckpoints

        keeper = RunCheckpoints(cfg, *spec["keeper"])
    module, name = spec["function"].split(":")
    try:
        result = getattr(importlib.import_module(module), name)(cfg, **spec["kwargs"], keeper=keeper)
    except errors.KdpipeError as e:  # from any rank: torchrun stops the others as soon as one fails
        mine = Path(folder, f"error-{os.environ.get('RANK', '0')}.json")
        mine.write_text(json.dumps({"type": type(e).__name__, "message": str(e)}))
        try:
            os.link(mine, Path(folder, ERROR))  # whole and first: a later rank's error does not replace it
        except FileExistsError:
            pass
        raise
    if is_main():
        Path(folder, RESULT).write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    _rank_main(sys.argv[1])
