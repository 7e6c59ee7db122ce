from pathlib import Path

import optuna
import pytest

from kdpipe.config import load_config
from kdpipe.data import preprocess
from kdpipe.errors import ConfigError
from kdpipe.hpo import make_pruner, open_study, run_trials
from kdpipe.teacher import evaluate_teacher
from tests.conftest import base_config, make_tiny_bert

SMALL_SPACE = {"epochs": {"type": "int", "low": 1, "high": 2},
               "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True},
               "alpha": {"type": "float", "low": 0.0, "high": 1.0}}


@pytest.fixture(scope="module")
def hpo_setup(tmp_path_factory, bert_tokenizer, sst2_small):
    root = tmp_path_factory.mktemp("hpo")
    teacher = make_tiny_bert(root / "teacher", bert_tokenizer, layers=2, num_labels=2, seed=3)
    raw = base_config(teacher, *sst2_small)
    raw["student"] = {"layers": [0]}
    cfg = load_config(raw=raw)
    preprocess(cfg, root / "prep")
    evaluate_teacher(cfg, root / "prep", teacher, root / "teval")
    return raw, root, teacher


def hpo_cfg(raw, root, **hpo):
    raw = dict(raw, hpo={"storage": f"journal:{root}/journal.log", "space": SMALL_SPACE, "pruner": "none", **hpo})
    return load_config(raw=raw)


def test_space_defaults_to_the_blogs_and_is_validated(hpo_setup):
    raw, _, _ = hpo_setup
    cfg = load_config(raw=raw)
    space = cfg.hpo.space
    assert (space["epochs"].low, space["epochs"].high) == (2, 10)
    assert (space["learning_rate"].low, space["learning_rate"].high, space["learning_rate"].log) == (1e-5, 1e-3, True)
    assert (space["alpha"].low, space["alpha"].high, space["temperature"].low, space["temperature"].high) == (0, 1, 2, 30)
    assert cfg.hpo.storage.startswith("journal:/")  # resolved to an absolute path
    with pytest.raises(ConfigError, match="not distillation settings"):
        load_config(raw=dict(raw, hpo={"space": {"dropout": {"type": "float", "low": 0, "high": 1}}}))
    with pytest.raises(ConfigError, match="low > 0"):
        load_config(raw=dict(raw, hpo={"space": {"learning_rate": {"type": "float", "low": 0, "high": 1, "log": True}}}))
    with pytest.raises(ConfigError, match="hpo.pruner"):
        load_config(raw=raw, overrides=["hpo.pruner=sometimes"])
    study = open_study(hpo_cfg(raw, hpo_setup[1] / "space", study_name="s"))
    assert isinstance(study.sampler, optuna.samplers.TPESampler)


@pytest.mark.parametrize("name, prunes", [("median", True), ("none", False)])
def test_pruner_stops_a_trial_below_the_median_after_the_startup_trials(name, prunes):
    study = optuna.create_study(direction="maximize", pruner=make_pruner(name))
    for value in (0.8, 0.9):  # two startup trials, each reporting epochs 1 and 2
        trial = study.ask()
        trial.report(value, 1)
        trial.report(value, 2)
        study.tell(trial, value)
    weak, strong = study.ask(), study.ask()
    weak.report(0.1, 1)
    strong.report(0.95, 1)
    assert bool(weak.should_prune()) is prunes and not strong.should_prune()


def test_study_persists_and_resumes(hpo_setup):
    raw, root, teacher = hpo_setup
    cfg = hpo_cfg(raw, root / "resume", n_trials=3, study_name="resume")
    first = run_trials(cfg, root / "prep", teacher, root / "teval", root / "resume" / "work")
    assert first["trials"]["complete"] == 3 and first["best_params"] is not None
    before = {t.number: t.value for t in open_study(cfg).trials}
    # A new process (same study name, same storage) continues to 5 trials; the first 3 are kept as they were.
    cfg5 = hpo_cfg(raw, root / "resume", n_trials=5, study_name="resume")
    second = run_trials(cfg5, root / "prep", teacher, root / "teval", root / "resume" / "work")
    trials = open_study(cfg5).trials
    assert second["trials"]["complete"] == 5 and len(trials) == 5
    assert {t.number: t.value for t in trials if t.number in before} == before
    # Already complete: nothing more runs.
    assert run_trials(cfg5, root / "prep", teacher, root / "teval", root / "resume" / "work")["trials"]["complete"] == 5
    assert len(open_study(cfg5).trials) == 5


def test_best_trial_model_is_reused_only_from_this_pipeline_run(hpo_setup, tmp_path):
    """With hpo.reuse_best_model each trial logs its model to its MLflow trial run; hpo-best takes it from there,
    and only from a trial of the same pipeline run (so the same data and the same teacher)."""
    from kdpipe.tracking import TrialRuns, download_trial_model, hpo_run_id

    raw, root, teacher = hpo_setup
    raw = dict(raw, tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "reuse"})
    cfg = hpo_cfg(raw, tmp_path, n_trials=2, study_name="reuse", reuse_best_model=True)
    hpo_id = hpo_run_id(cfg, "run-a")
    best = run_trials(cfg, root / "prep", teacher, root / "teval", tmp_path / "work",
                      trial_log=TrialRuns(cfg, "run-a", hpo_id))
    assert download_trial_model(cfg, "run-a", hpo_id, best["best_trial"], tmp_path / "a")
    assert (tmp_path / "a/model/model.safetensors").is_file() and (tmp_path / "a/model/tokenizer.json").is_file()
    # A later pipeline run resuming the same study must not ship a model trained with an earlier run's teacher.
    assert not download_trial_model(cfg, "run-b", hpo_run_id(cfg, "run-b"), best["best_trial"], tmp_path / "b")
    assert not (tmp_path / "b/model").exists()


def test_diverging_trial_is_recorded_and_the_study_goes_on(hpo_setup, monkeypatch):
    """A trial whose loss turns NaN (injected into the second trial's training) is recorded as pruned with the
    reason; the other trials complete and the best params come from them."""
    import kdpipe.losses as losses
    import kdpipe.trainer as trainer

    raw, root, teacher = hpo_setup
    real, started = losses.distillation_loss, []
    original_init = trainer.DistillationTrainer.__init__

    def init(self, *a, **k):
        original_init(self, *a, **k)
        started.append(self)

    def loss(student_logits, *args, **kwargs):
        value = real(student_logits, *args, **kwargs)
        return value * float("nan") if len(started) == 2 else value

    monkeypatch.setattr(trainer.DistillationTrainer, "__init__", init)
    monkeypatch.setattr(losses, "distillation_loss", loss)
    cfg = hpo_cfg(raw, root / "nan", n_trials=3, study_name="nan")
    summary = run_trials(cfg, root / "prep", teacher, root / "teval", root / "nan" / "work")
    states = {t.number: t.state for t in open_study(cfg).trials}
    assert states == {0: optuna.trial.TrialState.COMPLETE, 1: optuna.trial.TrialState.PRUNED,
                      2: optuna.trial.TrialState.COMPLETE}
    assert "training loss became nan" in open_study(cfg).trials[1].user_attrs["stopped"]
    assert summary["trials"]["complete"] == 2 and summary["best_trial"] in (0, 2)


def test_no_password_in_storage(hpo_setup):
    raw, _, _ = hpo_setup
    with pytest.raises(ConfigError, match="hpo.storage holds a password"):
        load_config(raw=dict(raw, hpo={"storage": "postgresql://kdpipe:secret@db:5432/optuna"}))


# ---------------------------------------------------------------- two workers on a real PostgreSQL server

@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on loopback (Debian's package; scripts/test.sh installs it)."""
    import glob
    import os
    import shutil
    import socket
    import subprocess
    import tempfile

    def run(*cmd):
        done = subprocess.run(as_user + list(cmd), capture_output=True, text=True)
        assert done.returncode == 0, f"{cmd[0]} failed: {done.stderr[-2000:]}"

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert bins, "PostgreSQL server missing: `apt-get install postgresql` (scripts/test.sh does this as root)"
    bindir = Path(bins[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="kdpipe-pg-"))  # not under pytest's root-only tmp: postgres must reach it
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data, log = root / "data", root / "server.log"
    run(bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
    run(bindir / "pg_ctl", "-D", data, "-l", log, "-w", "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
        "start")
    try:
        run(bindir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "optuna")
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run(as_user + [bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


WORKER = """
import sys
from pathlib import Path
from kdpipe.config import config_from_json
from kdpipe.hpo import run_trials
cfg = config_from_json(Path(sys.argv[1]).read_text())
run_trials(cfg, sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], worker=int(sys.argv[6]))
"""


@pytest.mark.parametrize("storage", ["postgresql", "journal"])
def test_two_workers_finish_exactly_the_requested_trials_when_one_is_killed(hpo_setup, storage, request):
    """PostgreSQL: the heartbeat finds the dead worker's trial. Journal file (local default, no heartbeat): the
    survivor sees that the worker's process on this machine is gone. Either way its params are re-run once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    raw, root, teacher = hpo_setup
    url = request.getfixturevalue("postgres_url") if storage == "postgresql" else f"journal:{root}/{storage}.log"
    cfg = load_config(raw=dict(raw, hpo={
        "storage": url, "study_name": "two-workers", "n_trials": 4, "pruner": "none",
        "heartbeat_seconds": 2, "space": dict(SMALL_SPACE, epochs={"type": "int", "low": 3, "high": 4})}))
    (root / f"{storage}.json").write_text(cfg.model_dump_json())
    args = [str(root / f"{storage}.json"), str(root / "prep"), teacher, str(root / "teval"), str(root / storage)]
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, *args, str(i)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    victim, survivor = workers
    study = open_study(cfg)
    deadline = time.monotonic() + 300
    killed = None
    while killed is None and time.monotonic() < deadline:
        # Mid-trial: the victim's trial has reported at least one epoch and is still running.
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get("worker", "").endswith(f":{victim.pid}") and t.intermediate_values:
                os.kill(victim.pid, signal.SIGKILL)
                killed = t.number
                break
        time.sleep(0.2)
    assert killed is not None, "the victim never got mid-trial"
    victim.wait()
    _, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err[-3000:]

    trials = open_study(cfg).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4, [(t.number, t.state.name) for t in trials]
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 4  # each trial exactly once
    lost = trials[killed]
    assert lost.state == TrialState.FAIL
    retries = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].params == lost.params
    assert {t.user_attrs["worker"].split(":")[-1] for t in complete} >= {str(survivor.pid)}
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)
    summary = run_trials(cfg, root / "prep", teacher, root / "teval", root / storage)  # already done: no-op
    assert summary["trials"]["complete"] == 4 and summary["trials"]["lost_and_retried"] == 1
    assert len(open_study(cfg).trials) == len(trials)
