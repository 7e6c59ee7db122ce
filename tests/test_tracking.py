"""MLflow tracking on the embedded SQLite store, with real processes (no mocks)."""

import subprocess
import sys

OPEN_AND_RUN = """
import sys
from kdpipe.config import load_config
from kdpipe.tracking import parent_run_id
cfg = load_config(raw={"teacher": {"model": "org/teacher"}, "student": {"layers": [0]},
                       "data": {"dataset": "x", "train": "train", "validation": "validation"},
                       "tracking": {"uri": "sqlite:///" + sys.argv[1], "experiment": "race"}})
print(parent_run_id(cfg, "run-" + sys.argv[2]))
"""


def test_concurrent_first_runs_do_not_corrupt_a_fresh_store(tmp_path):
    """Without the lock, the second process dies in MLflow's table creation ('table ... already exists')."""
    from mlflow.tracking import MlflowClient

    for attempt in range(3):  # the race is timing-dependent: try it several times on fresh stores
        db = tmp_path / f"mlflow-{attempt}.db"
        procs = [subprocess.Popen([sys.executable, "-c", OPEN_AND_RUN, str(db), str(i)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(3)]
        outs = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], [err[-1500:] for _, err in outs]
        client = MlflowClient(f"sqlite:///{db}")
        runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
        assert sorted(r.data.tags["kdpipe.pipeline_run"] for r in runs) == ["run-0", "run-1", "run-2"]
