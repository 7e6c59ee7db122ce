"""Mistakes a second of checking catches: refused by `kdpipe run` before the pipeline starts, with one line that
names the key, exit 2, no traceback, in under 5 s; and by the first pipeline step (never retried) on a cluster."""

import json
import shutil
import socket
import time

import pytest
import yaml

from kdpipe.cli import main
from tests.conftest import base_config, make_tiny_bert


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


@pytest.fixture(scope="module")
def models(tmp_path_factory, bert_tokenizer):
    root = tmp_path_factory.mktemp("preflight")
    teacher = make_tiny_bert(root / "teacher", bert_tokenizer, layers=4, num_labels=2)
    pickled = shutil.copytree(teacher, root / "pickled")  # the same weights, but only as a pickle
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(f"{pickled}/model.safetensors"), f"{pickled}/pytorch_model.bin")
    (root / "pickled/model.safetensors").unlink()
    remote = shutil.copytree(teacher, root / "remote-code")
    config = json.loads((root / "remote-code/config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_custom.CustomClassifier"}
    (root / "remote-code/config.json").write_text(json.dumps(config))
    return root, teacher, str(pickled), str(remote)


@pytest.fixture
def config(models, sst2_small, tmp_path):
    root, teacher, _, _ = models
    raw = base_config(teacher, *sst2_small)
    raw["tracking"] = {"uri": f"sqlite:///{tmp_path}/mlflow.db"}
    raw["output_dir"] = str(tmp_path / "runs")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "c.yaml"


def refused(config, capsys, *overrides) -> str:
    started = time.perf_counter()
    code = main(["run", str(config), *[a for o in overrides for a in ("--set", o)]])
    took = time.perf_counter() - started
    err = capsys.readouterr().err.strip()
    assert code == 2 and took < 5, (code, took, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not (config.parent / "runs").exists()  # no pipeline started
    return err


def test_student_with_pickled_weights_only(config, models, capsys):
    err = refused(config, capsys, f"student.model={models[2]}", "student.layers=null")
    assert "student.model" in err and "only a pickle (pytorch_model.bin)" in err and "safetensors" in err


def test_teacher_asking_for_its_own_code(config, models, capsys):
    err = refused(config, capsys, f"teacher.model={models[3]}")
    assert "teacher.model" in err and "auto_map" in err and "trust_remote_code: true" in err


def test_student_layers_the_teacher_does_not_have(config, capsys):
    err = refused(config, capsys, "student.layers=[0, 5]")
    assert "student.layers [0, 5]: the teacher" in err and "has 4 layers (indices 0..3)" in err


def test_unreachable_tracking_server(config, capsys):
    port = free_port()
    err = refused(config, capsys, f"tracking.uri=http://127.0.0.1:{port}")
    assert f"tracking.uri http://127.0.0.1:{port}: no answer in 3 s" in err


def test_tracking_store_in_a_missing_folder(config, capsys):
    err = refused(config, capsys, "tracking.uri=sqlite:////nonexistent-kdpipe/mlflow.db")
    assert "tracking.uri sqlite:////nonexistent-kdpipe/mlflow.db" in err and "not writable" in err


def test_unreachable_optuna_database(config, capsys, monkeypatch):
    port = free_port()
    monkeypatch.setenv("KDPIPE_TEST_STORAGE", f"postgresql://kdpipe:s3cret@127.0.0.1:{port}/optuna")
    err = refused(config, capsys, "hpo.enabled=true", "hpo.storage=env:KDPIPE_TEST_STORAGE")
    assert f"hpo.storage postgresql://kdpipe:***@127.0.0.1:{port}/optuna: cannot connect" in err
    assert "s3cret" not in err  # the password from the environment never reaches the output


def test_the_first_step_refuses_a_bad_model_and_is_never_retried(config, models):
    """On a cluster there is no pre-flight: validate-tokenizers (no retry policy) refuses before any training."""
    from kdpipe.config import load_config
    from kdpipe.steps import validate_tokenizers_step
    from kdpipe_kfp.kdpipe_pipeline import COMPILED

    cfg = load_config(config, [f"student.model={models[2]}", "student.layers=null"])
    with pytest.raises(SystemExit, match=r"kdpipe: ModelError: student.model .* only a pickle"):
        validate_tokenizers_step(cfg, "no-retry")
    spec = yaml.safe_load_all(COMPILED.read_text()).__next__()
    handler = next(t for n, t in spec["root"]["dag"]["tasks"].items() if n.startswith("exit-handler"))
    tasks = spec["components"][handler["componentRef"]["name"]]["dag"]["tasks"]
    assert "retryPolicy" not in tasks["validate-tokenizers"]


def test_a_journal_file_in_a_folder_the_run_creates_is_accepted(config, tmp_path):
    from kdpipe.config import load_config
    from kdpipe.errors import ConfigError
    from kdpipe.preflight import check_hpo_storage

    check_hpo_storage(load_config(config, ["hpo.enabled=true", f"hpo.storage=journal:{tmp_path}/new/dir/j.log"]))
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"hpo.storage journal:.*a-file/j.log: the folder .* does not exist"):
        check_hpo_storage(load_config(config, ["hpo.enabled=true", f"hpo.storage=journal:{tmp_path}/a-file/j.log"]))
