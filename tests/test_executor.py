"""The component processes' fast exit: skips the interpreter's teardown after success, never hides a failure."""

import subprocess
import sys

import pytest

BODY = """
import atexit, sys
from kdpipe_kfp.executor import fast_exit
with fast_exit():
    import mlflow  # a library imported inside the body registers its own atexit hooks after ours
    atexit.register(lambda: open(sys.argv[1], "w").write("library hook ran"))
    {inside}
{after}
"""


@pytest.mark.parametrize("inside, after, code", [
    ("pass", "", 0),
    ("raise SystemExit('kdpipe: DataError: bad row')", "", 1),  # a step failing on bad input
    ("raise RuntimeError('node lost')", "", 1),
    ("pass", "raise ValueError('executor could not write its outputs')", 1),  # after the body returned
])
def test_fast_exit_keeps_exit_codes_and_library_hooks(tmp_path, inside, after, code):
    marker = tmp_path / "hook"
    done = subprocess.run([sys.executable, "-c", BODY.format(inside=inside, after=after), str(marker)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr[-2000:]
    assert marker.read_text() == "library hook ran"  # libraries' hooks (MLflow's) still run first
