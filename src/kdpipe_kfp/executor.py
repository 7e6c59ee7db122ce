"""The executor process of a component: skip Python's interpreter teardown once the step has succeeded."""

import atexit
import os
import sys


class fast_exit:  # noqa: N801 (used as a statement: `with fast_exit():`)
    """Wraps a component body. When the body has succeeded and KFP's executor has written its outputs, the process
    ends without the interpreter tearing down thousands of torch/transformers/MLflow modules (about a second per
    task; docs/benchmarks.md). Registered before the libraries are imported, the hook runs after every library's
    own atexit hook (they run last-in first-out), so MLflow still closes what it opened. After any failure, in
    the body or while the executor writes the outputs, the process exits as usual, with its error code."""

    def __enter__(self):
        self.succeeded = False
        atexit.register(self._exit)
        return self

    def __exit__(self, exc_type, exc, tb):
        self.succeeded = exc_type is None
        return False

    def _exit(self):
        failed = getattr(sys, "last_value", None) is not None or getattr(sys, "last_exc", None) is not None
        if self.succeeded and not failed:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


def run_step(name: str, config_json: str, pipeline_run: str, *inputs, metrics=None) -> dict:
    """A component body's call of the core step `name` (kdpipe.steps) in this process: its logs go to the
    process's output (the run's log), its numbers into the component's Metrics output, and after success the
    process skips the interpreter's teardown (fast_exit)."""
    import importlib
    import logging

    with fast_exit():
        core_log = logging.getLogger("kdpipe")  # the core's lifecycle and progress lines, not every library's
        core_log.addHandler(logging.StreamHandler(sys.stderr))
        core_log.setLevel(logging.INFO)
        core_log.propagate = False  # the executor configures the root logger too: each line once
        step = getattr(importlib.import_module("kdpipe.steps"), name)
        # Inside a ParallelFor, KFP's local runner gives the job name as "<run>/for-loop-N-iteration-K".
        result = step(config_json, pipeline_run.split("/for-loop-")[0], *inputs)
        if metrics is not None:
            from kdpipe_kfp.outputs import log_kfp_metrics

            log_kfp_metrics(metrics, result)
        return result
