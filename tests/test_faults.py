"""Faults on real processes (issue 11): a `kdpipe run` killed mid-training, two runs racing for the champion,
and the tracking store going away: on the KFP local runner and MLflow (SQLite, and a real `mlflow server`)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from kdpipe_kfp.cli import main
from tests.conftest import parent_and_children, write_tiny_pipeline_config
from tests.test_preflight import free_port

KDPIPE = [sys.executable, "-m", "kdpipe_kfp.cli"]


@pytest.fixture(scope="module")
def faults(tmp_path_factory, bert_tokenizer, sst2_small):
    """A teacher that is already a classifier (no fine-tuning: these tests are about the runs, not the models)."""
    root = tmp_path_factory.mktemp("faults")
    write_tiny_pipeline_config(root, bert_tokenizer, sst2_small, "faults", "faults", teacher_labels=2)
    return root


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started with start_new_session and whatever it started; the group may already be gone."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def runs_of(client, role: str, status: str | None = None) -> list:
    exp = client.get_experiment_by_name("faults")
    if exp is None:
        return []
    found = client.search_runs([exp.experiment_id], f"tags.`kdpipe.role` = '{role}'")
    return [r for r in found if status is None or r.info.status == status]


def test_a_killed_run_is_marked_and_its_rerun_resumes_from_the_last_epoch(faults):
    """SIGKILL of `kdpipe run` (and its step processes: a machine lost) during distillation. The next run marks the
    killed one KILLED, and its distillation continues from the epoch checkpoint the killed one kept in MLflow."""
    client = MlflowClient(f"sqlite:///{faults}/mlflow.db")
    args = [str(faults / "config.yaml"), "--set", "distillation.epochs=10", "--set", "tracking.registered_model=killed"]
    victim = subprocess.Popen([*KDPIPE, "run", *args, "--output-dir", str(faults / "killed")],
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def distill_kept_a_checkpoint():
        running = runs_of(client, "distill_student", "RUNNING")
        return running and any(a.path == "checkpoints/latest.json"
                               for a in client.list_artifacts(running[0].info.run_id, "checkpoints")) and running[0]

    try:
        killed_distill = wait_for(distill_kept_a_checkpoint, 300, "the first epoch checkpoint in MLflow")
    finally:
        kill_group(victim)
        victim.wait()
    killed_parent = client.get_run(killed_distill.data.tags["mlflow.parentRunId"])
    assert killed_parent.info.status == "RUNNING"  # nobody ended it: the process is gone

    code = main(["run", *args, "--output-dir", str(faults / "rerun")])
    summary = json.loads((faults / "rerun" / "summary.json").read_text())
    assert code == 0, summary
    parent, steps = parent_and_children(faults, killed_parent.info.run_id)
    assert parent.info.status == "KILLED" and "is gone (killed)" in parent.data.tags["kdpipe.error"]
    assert steps["distill_student"].info.status == "KILLED"
    _, rerun = parent_and_children(faults, summary["mlflow"]["parent_run_id"])
    distill = rerun["distill_student"]
    assert distill.data.tags["kdpipe.resumed_from"] == killed_distill.info.run_id
    result = json.loads(open(client.download_artifacts(distill.info.run_id, "result.json", str(faults))).read())
    resumed_step = int(result["resumed_from"].rsplit("-", 1)[1])
    assert resumed_step > 0 and resumed_step % 13 == 0  # an epoch boundary: 400 rows / 32 per batch
    # Both runs' checkpoints have served: neither keeps them.
    assert not client.list_artifacts(distill.info.run_id, "checkpoints")
    assert not client.list_artifacts(killed_distill.info.run_id, "checkpoints")


def test_sigterm_ends_the_run_killed_at_once_in_one_line(faults):
    """SIGTERM (what Kubernetes and most schedulers send) or Ctrl-C: the run's MLflow runs end KILLED right away."""
    client = MlflowClient(f"sqlite:///{faults}/mlflow.db")
    before = {r.info.run_id for r in runs_of(client, "pipeline")}
    run = subprocess.Popen([*KDPIPE, "run", str(faults / "config.yaml"), "--output-dir", str(faults / "sigterm")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: [r for r in runs_of(client, "preprocess", "FINISHED")
                          if r.data.tags["mlflow.parentRunId"] not in before], 300, "preprocess to finish")
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
    finally:
        kill_group(run)  # the step the runner had started, if it is still there
    assert run.returncode == 130 and err.strip().splitlines()[-1] == "kdpipe: interrupted (signal 15)", err[-3000:]
    assert "Traceback" not in err
    (parent,) = [r for r in runs_of(client, "pipeline") if r.info.run_id not in before]
    assert parent.info.status == "KILLED" and parent.data.tags["kdpipe.error"] == "kdpipe run was interrupted"


def test_two_runs_started_together_on_a_fresh_store_both_finish_and_the_better_is_champion(faults):
    """Both open a fresh store at once (this used to corrupt it), each reports itself, and both gates judge the
    champion before either registers; without the compare-and-set the later registration took the alias whatever
    its quality."""
    (faults / "race").mkdir()
    uri = f"sqlite:///{faults}/race/mlflow.db"
    common = ["--set", f"tracking.uri={uri}", "--set", "tracking.registered_model=race", "--set", "gate.min_metric=0.0"]
    procs = [subprocess.Popen([*KDPIPE, "run", str(faults / "config.yaml"), *common, *extra,
                               "--output-dir", str(faults / "race" / name)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, extra in (("good", []), ("poor", ["--set", "distillation.learning_rate=1e-9"]))]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-3000:] for o in outs]
    summaries = [json.loads((faults / "race" / name / "summary.json").read_text()) for name in ("good", "poor")]
    assert len({s["mlflow"]["parent_run_id"] for s in summaries}) == 2
    assert len({s["pipeline_run"] for s in summaries}) == 2
    client = MlflowClient(uri)
    for summary in summaries:
        assert client.get_run(summary["mlflow"]["parent_run_id"]).info.status == "FINISHED"
    values = {s["registry"]["version"]: s["student"]["metrics"]["accuracy"] for s in summaries}
    champion = str(client.get_model_version_by_alias("race", "champion").version)
    assert values[champion] == max(values.values()), (values, champion, [s["registry"] for s in summaries])
    assert {str(v.version) for v in client.search_model_versions("name='race'")} == set(values)


def test_a_step_facing_a_dead_tracking_server_fails_in_seconds_in_one_line(faults):
    from kdpipe.config import load_config
    from kdpipe.steps import preprocess

    uri = f"http://127.0.0.1:{free_port()}"
    cfg = load_config(faults / "config.yaml", [f"tracking.uri={uri}"])
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_:
        preprocess(cfg, "kdpipe-run-x", str(faults / "prep-x"))
    message = str(exit_.value.code)
    assert time.monotonic() - started < 10
    assert message.startswith(f"kdpipe: the MLflow store at tracking.uri={uri} did not answer") and "\n" not in message


def start_mlflow_server(root, port):
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "mlflow"), "server", "--backend-store-uri",
         f"sqlite:///{root}/server.db", "--artifacts-destination", str(root / "server-artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    import urllib.request

    def healthy():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200
        except OSError:
            return False

    wait_for(healthy, 120, "mlflow server")
    return server


def test_the_tracking_server_dying_mid_run_ends_the_run_in_one_line_with_a_summary(faults):
    """A real `mlflow server` stops after prepare-teacher: the next step (evaluate-teacher, which KFP does not
    retry) fails in seconds with one line naming tracking.uri, summary.json is still written, exit 1 (a retry can
    fix it), nothing is registered. (Steps with a KFP retry policy run again after its back-off first.)"""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(faults, port)
    try:
        run = subprocess.Popen([*KDPIPE, "run", str(faults / "config.yaml"), "--set", f"tracking.uri={uri}",
                                "--set", "tracking.registered_model=outage", "--output-dir", str(faults / "outage")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        client = MlflowClient(uri)
        wait_for(lambda: runs_of(client, "prepare_teacher", "FINISHED"), 300, "prepare-teacher to finish")
        kill_group(server)
        server.wait()
        died = time.monotonic()
        output = run.communicate(timeout=300)[0]
        assert run.returncode == 1, output[-3000:]
        (faults / "outage.log").write_text(output)
        assert time.monotonic() - died < 60, output[-5000:]
        assert "Traceback" not in output, output[-5000:]
        assert f"kdpipe: the MLflow store at tracking.uri={uri} did not answer" in output
        summary = json.loads((faults / "outage" / "summary.json").read_text())
        assert summary["status"] == "error"
        assert summary["errors"][0].startswith(f"the MLflow store at tracking.uri={uri} did not answer")
    finally:
        kill_group(server)
    server = start_mlflow_server(faults, port)
    try:
        assert not MlflowClient(uri).search_registered_models()
    finally:
        kill_group(server)


def a_server_failing_all_but_health():
    """An HTTP server that answers /health and fails every other request with 500 (a tracking server whose
    database is gone)."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def reply(self):
            ok = self.path.startswith("/health")
            self.send_response(200 if ok else 500)
            self.end_headers()
            self.wfile.write(b"OK" if ok else b"Internal Server Error")

        do_GET = do_POST = reply

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("store", ["corrupt_sqlite", "server_failing_but_health"])
def test_a_broken_store_stops_the_run_in_one_line_with_this_runs_summary(faults, tmp_path, store):
    """A SQLite store cut short by 8 KB, or a server that answers /health and 500 everywhere else: one line naming
    tracking.uri and what is wrong, exit 1, and the output folder's summary.json is this run's (status error),
    not the previous run's "promoted"."""
    server = None
    if store == "corrupt_sqlite":
        db = tmp_path / "mlflow.db"
        client = MlflowClient(f"sqlite:///{db}")
        for i in range(30):
            client.create_run(client.create_experiment(f"e{i}")).info.run_id
        with open(db, "r+b") as f:
            f.truncate(db.stat().st_size - 8192)
        uri, why = f"sqlite:///{db}", "cannot be read: the database is damaged"
    else:
        server = a_server_failing_all_but_health()
        uri, why = f"http://127.0.0.1:{server.server_address[1]}", "answers with server errors"
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"status": "promoted"}))  # the previous run's
    started = time.monotonic()
    try:
        run = subprocess.run([*KDPIPE, "run", str(faults / "config.yaml"), "--set", f"tracking.uri={uri}",
                              "--output-dir", str(out)], capture_output=True, text=True, timeout=300)
    finally:
        if server:
            server.shutdown()
    assert run.returncode == 1, run.stderr[-3000:]
    assert time.monotonic() - started < 60
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"kdpipe: the MLflow store at tracking.uri={uri} {why}"), lines
    assert "the pipeline did not start" in lines[0] and str(out / "summary.json") in lines[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "error" and summary["errors"][0].startswith(f"the MLflow store at tracking.uri={uri}")
