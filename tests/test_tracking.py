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


REGISTER_AND_PROMOTE = """
import sys, time
import mlflow
from kdpipe.config import load_config
from kdpipe.gate import GateDecision
from kdpipe.registry import take_champion_if_better
from kdpipe.tracking import experiment_id
from pathlib import Path
db, value, barrier, n = sys.argv[1], float(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
cfg = load_config(raw={"teacher": {"model": "org/teacher"}, "student": {"layers": [0]},
                       "data": {"dataset": "x", "train": "train", "validation": "validation"},
                       "tracking": {"uri": "sqlite:///" + db, "experiment": "race", "registered_model": "m"}})
mlflow.set_tracking_uri(cfg.tracking.uri)
client = mlflow.MlflowClient(cfg.tracking.uri)
if not client.search_registered_models("name = 'm'"):
    client.create_registered_model("m")  # by the first process, alone
with mlflow.start_run(experiment_id=experiment_id(cfg)) as run:
    mlflow.set_tag("kdpipe.gate_metric", "accuracy")
    mlflow.log_metric("gate_metric_value", value)
version = client.create_model_version("m", run.info.artifact_uri, run.info.run_id).version
# Every gate judged the same champion (v1) before any of them registered: each would promote.
gate = GateDecision(passed=True, promote_to_champion=True, metric="accuracy", value=value, champion_version="1")
(barrier / str(value)).touch()
while len(list(barrier.iterdir())) < n:  # all registered: now they move the alias together
    time.sleep(0.01)
# Re-judging a champion that moved meanwhile re-scores it on this run's rows; these stand-in models have only
# their numbers, so the stand-in compares those (what is tested here is the compare-and-set under the lock).
def rejudge(current):  # None: no champion any more
    better = current is None or value > client.get_run(client.get_model_version("m", current).run_id).data.metrics["gate_metric_value"]
    return better, f"stand-in: {value} {'beats' if better else 'does not beat'} v{current}"
print(version, take_champion_if_better(cfg, version, gate, rejudge))
"""


def test_racing_gates_leave_the_better_model_champion(tmp_path):
    """Each gate read the champion before the others moved it. Setting the alias blindly (as before) leaves the
    last writer champion, whatever its quality; the compare-and-set leaves the best."""
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    values = [0.70, 0.91, 0.80, 0.85]
    seed = subprocess.run([sys.executable, "-c", REGISTER_AND_PROMOTE, str(db), "0.5", str(tmp_path), "0"],
                          capture_output=True, text=True, timeout=300)
    assert seed.returncode == 0, seed.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{db}")
    assert str(client.get_model_version_by_alias("m", "champion").version) == "1"
    barrier = tmp_path / "registered"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", REGISTER_AND_PROMOTE, str(db), str(v), str(barrier), "4"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for v in values]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(values), [err[-1500:] for _, err in outs]
    champion = client.get_model_version_by_alias("m", "champion")
    assert client.get_run(champion.run_id).data.metrics["gate_metric_value"] == max(values), outs
    assert not client.search_registered_models("name = 'm.kdpipe-lock'"), "the lock was not released"
    # Each version's decision is tagged with the reason that decided it: a re-judged one, the re-judging's.
    import ast

    for out, _ in outs:
        version, decision = out.strip().split(" ", 1)
        decision, tags = ast.literal_eval(decision), client.get_model_version("m", version).tags
        assert tags["kdpipe.decision"] == ("champion" if decision["promoted"] else "challenger")
        assert tags["kdpipe.decision_reason"] == decision["reason"]
        if decision["decided_again"]:
            assert decision["reason"].startswith("stand-in: ") and (" beats " in decision["reason"]) == decision["promoted"]
        if decision["promoted"]:
            assert tags["kdpipe.champion_reason"] == f"kdpipe run: {decision['reason']}"


def test_every_error_kind_has_one_retry_decision_one_status_and_one_exit_code(tmp_path):
    """One classification (kdpipe.errors): each KdpipeError kind is bad input or setting: a one-line exit, tagged
    on the step's run so that KFP's retry of the step ends at once, the run's status bad_input, exit 2. Anything
    else is retried, and the run ends `error`, exit 1."""
    import pytest

    from kdpipe import errors
    from kdpipe.config import load_config
    from kdpipe.step import tracked_step
    from kdpipe.summary import run_outcome, step_results
    from kdpipe.tracking import find_parent, mlflow_client

    cfg = load_config(raw={"teacher": {"model": "org/teacher"}, "student": {"layers": [0]},
                           "data": {"dataset": "x", "train": "train", "validation": "validation"},
                           "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "kinds"}})

    @tracked_step()
    def fails(ctx, error):
        raise error

    kinds = [k for k in vars(errors).values() if isinstance(k, type) and issubclass(k, errors.KdpipeError)]
    assert len(kinds) == 8  # the base and its 7 kinds
    for kind in kinds + [RuntimeError]:
        run = f"run-{kind.__name__}"
        bad = kind is not RuntimeError
        with pytest.raises(SystemExit if bad else RuntimeError) as first:
            fails(cfg, run, kind("what went wrong"))
        # KFP's retry of the step: bad input ends at once, naming the first attempt; other failures run again.
        with pytest.raises(SystemExit if bad else RuntimeError) as again:
            fails(cfg, run, kind("what went wrong"))
        if bad:
            assert str(first.value) == f"kdpipe: {kind.__name__}: what went wrong"
            assert "an earlier attempt of this step failed on this bad input: not retried" in str(again.value)
        results = step_results(mlflow_client(cfg), find_parent(cfg, run))
        status = run_outcome(results, failed=True)
        assert (status, errors.exit_code(status)) == (("bad_input", 2) if bad else ("error", 1)), kind


def test_a_step_attempt_that_failed_then_succeeded_on_retry_does_not_fail_the_run(tmp_path):
    """KFP's retry of a step opens a new MLflow run; the failed attempt keeps its error. The run's outcome is
    that of its steps' last attempts (the pipeline did not fail), and the summary lists the failed attempt
    apart, naming its first cause."""
    import errno

    import pytest

    from kdpipe.config import load_config
    from kdpipe.step import tracked_step
    from kdpipe.summary import build_summary

    cfg = load_config(raw={"teacher": {"model": "org/teacher"}, "student": {"layers": [0]},
                           "data": {"dataset": "x", "train": "train", "validation": "validation"},
                           "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "retried"}})

    @tracked_step()
    def evaluate_gate(ctx, disk_full: bool):
        if disk_full:
            raise OSError(errno.ENOSPC, "No space left on device", "/out/checkpoints/checkpoint-26/optimizer.pt")
        return {"passed": False, "reasons": ["gate.min_metric 0.99"]}

    with pytest.raises(OSError):
        evaluate_gate(cfg, "run-1", True)
    evaluate_gate(cfg, "run-1", False)
    summary = build_summary(cfg, "run-1", 1.0, tmp_path, None)
    assert summary["status"] == "gate_failed" and summary["errors"] == []
    assert summary["retried"] == ["evaluate_gate: OSError: [Errno 28] No space left on device: "
                                  "'/out/checkpoints/checkpoint-26/optimizer.pt'"]
    failed = build_summary(cfg, "run-1", 1.0, tmp_path, "the pipeline failed")  # KFP says the run failed
    assert failed["status"] == "error" and failed["errors"] == summary["retried"] and failed["retried"] == []
