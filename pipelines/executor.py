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
