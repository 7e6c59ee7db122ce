"""Mistakes a second of checking catches: refused by `kdpipe run` before the pipeline starts, with one line that
names the key, exit 2, no traceback, in under 5 s; and by the first pipeline step (never retried) on a cluster."""

import json
import shutil
import socket
import time

import pytest
import yaml

from kdpipe_kfp.cli import main
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


def test_a_layer_map_beyond_the_models(config, capsys):
    err = refused(config, capsys, "distillation.losses=[{name: auto}, {name: hidden_mse}]",
                  "distillation.layer_map={1: 2, 3: 4}")
    assert "distillation.layer_map: student layer 3 does not exist; the student has layers 0..2" in err


def test_an_unlabeled_file_without_the_text_column(config, tmp_path, capsys):
    (tmp_path / "unlabeled.tsv").write_text("review\na fine film\n")
    err = refused(config, capsys, f"data.unlabeled={tmp_path / 'unlabeled.tsv'}")
    assert "unlabeled.tsv: column(s) ['sentence'] not found; the file has columns ['review']" in err


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


def test_a_max_length_the_teacher_cannot_read(config, models, capsys):
    """Tokens beyond the teacher's positions: an index error inside the model, in every retry, before."""
    err = refused(config, capsys, "data.max_length=300")
    assert err.endswith(f"data.max_length 300: the teacher {models[1]!r} reads at most 256 tokens "
                   f"(max_position_embeddings); set data.max_length to 256 or less")


def test_the_first_step_refuses_a_bad_model_and_is_never_retried(config, models):
    """On a cluster there is no pre-flight: validate-tokenizers (no retry policy) refuses before any training."""
    from kdpipe.config import load_config
    from kdpipe.steps import validate_tokenizers
    COMPILED = __import__("pathlib").Path(__file__).resolve().parents[1] / "pipelines" / "kdpipe_pipeline.yaml"

    cfg = load_config(config, [f"student.model={models[2]}", "student.layers=null"])
    with pytest.raises(SystemExit, match=r"kdpipe: ModelError: student.model .* only a pickle"):
        validate_tokenizers(cfg, "no-retry")
    spec = yaml.safe_load_all(COMPILED.read_text()).__next__()
    handler = next(t for n, t in spec["root"]["dag"]["tasks"].items() if n.startswith("exit-handler"))
    tasks = spec["components"][handler["componentRef"]["name"]]["dag"]["tasks"]
    assert "retryPolicy" not in tasks["validate-tokenizers"]


def test_a_retry_of_a_step_that_failed_on_bad_input_ends_at_once(config, tmp_path):
    """KFP's retry policy retries any failure; the retry of a bad-input failure stops before doing the work."""
    from mlflow.tracking import MlflowClient

    from kdpipe.config import load_config
    from kdpipe.steps import preprocess

    bad = tmp_path / "train.csv"
    bad.write_text("sentence,label\nfine,1\n,0\nflat,0\n")
    cfg = load_config(config, [f"data.train={bad}"])
    with pytest.raises(SystemExit, match=r"kdpipe: DataError: .*train.csv: column 'sentence', row 2"):
        preprocess(cfg, "retried", str(tmp_path / "prep-1"))
    started = time.perf_counter()
    with pytest.raises(SystemExit, match=r"row 2.*an earlier attempt of this step failed on this bad input: not "
                                         r"retried"):
        preprocess(cfg, "retried", str(tmp_path / "prep-2"))
    assert time.perf_counter() - started < 5 and not (tmp_path / "prep-2").exists()
    client = MlflowClient(cfg.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id],
                              "tags.`kdpipe.role` = 'preprocess'")
    assert len(runs) == 1 and runs[0].data.tags["kdpipe.bad_input"] == "true"


def test_a_journal_file_in_a_folder_the_run_creates_is_accepted(config, tmp_path):
    from kdpipe.config import load_config
    from kdpipe.errors import ConfigError
    from kdpipe.preflight import check_hpo_storage

    check_hpo_storage(load_config(config, ["hpo.enabled=true", f"hpo.storage=journal:{tmp_path}/new/dir/j.log"]))
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"hpo.storage journal:.*a-file/j.log: the folder .* does not exist"):
        check_hpo_storage(load_config(config, ["hpo.enabled=true", f"hpo.storage=journal:{tmp_path}/a-file/j.log"]))


GOOD_ROWS = "".join(f"a fine film number {i},{i % 2}\n" for i in range(8))
# name -> (file name, its bytes, what the one line must say). Each is a train file (the validation file is good).
BAD_FILES = {
    "latin-1": ("t.csv", ("sentence,label\ncaf\xe9 cr\xe8me,1\n" + GOOD_ROWS).encode("latin-1"),
                "not UTF-8 text (byte 0xe9 at offset 18)"),
    "utf-16": ("t.csv", ("sentence,label\n" + GOOD_ROWS).encode("utf-16"), "iconv -f utf-16 -t utf-8"),
    "binary": ("t.csv", bytes(range(256)) * 8, "not UTF-8 text"),
    "csv: a row with an extra field": ("t.csv", ("sentence,label\n" + GOOD_ROWS + "two, fields,1\n").encode(),
                                       "row 9 (data rows counted from 1) has 3 fields where the header has 2"),
    "csv: unclosed quote": ("t.csv", ('sentence,label\n"never closed,1\n' + GOOD_ROWS).encode(), "quote fields"),
    "csv: empty file": ("t.csv", b"", "cannot read it as csv"),
    "csv: header only": ("t.csv", b"sentence,label\n", "the train split is empty"),
    "tsv that is comma-separated": ("t.tsv", ("sentence,label\n" + GOOD_ROWS).encode(),
                                    "column(s) ['sentence', 'label'] not found"),
    "jsonl: a broken line": ("t.jsonl", b'{"sentence": "good", "label": 1}\n{"sentence": "bad", "label": \n',
                             "line 2 is not valid JSON"),
    "jsonl: a line that is a list": ("t.jsonl", b'{"sentence": "good", "label": 1}\n["bad", 0]\n',
                                     "line 2 is not a JSON object"),
    "parquet: truncated": ("t.parquet", b"PAR1\x15\x04\x15\x10", "cannot read it as parquet"),
    "parquet: a csv file": ("t.parquet", ("sentence,label\n" + GOOD_ROWS).encode(), "cannot read it as parquet"),
    "unknown extension": ("t.xlsx", b"PK\x03\x04", "cannot tell the format from the extension '.xlsx'"),
    "label missing in a row": ("t.csv", ("sentence,label\nno label here,\n" + GOOD_ROWS).encode(),
                               "column 'label', row 1 (data rows counted from 1)"),
    "one class only": ("t.csv", "sentence,label\nsame,1\nagain,1\n".encode(), "single class"),
    "empty text": ("t.csv", ("sentence,label\n,1\n" + GOOD_ROWS).encode(), "empty or missing text"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_hostile_data_files_are_one_line(case, config, tmp_path, capsys):
    name, content, expected = BAD_FILES[case]
    (tmp_path / name).write_bytes(content)
    (tmp_path / "v.csv").write_text("sentence,label\n" + GOOD_ROWS)
    err = refused(config, capsys, f"data.train={tmp_path / name}", f"data.validation={tmp_path / 'v.csv'}")
    assert str(tmp_path / name) in err and expected in err, err


def test_a_label_only_validation_has_is_named(config, tmp_path, capsys):
    (tmp_path / "t.csv").write_text("sentence,label\n" + GOOD_ROWS)
    (tmp_path / "v.csv").write_text("sentence,label\nfine,1\nodd,7\n")
    err = refused(config, capsys, f"data.train={tmp_path / 't.csv'}", f"data.validation={tmp_path / 'v.csv'}")
    assert "v.csv: column 'label', row 2" in err and "label '7' is outside the label set" in err


def write(path, files: dict[str, str] | None):
    """A folder holding `files`, or (files None) a plain file at path."""
    if files is None:
        path.write_text("onnx bytes")
        return path
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return path


@pytest.mark.parametrize("make, expected", [
    (lambda d: write(d, {}), "no config.json there"),
    (lambda d: write(d, {"config.json": '{"model_type": "bert"}'}), "no weights"),
    (lambda d: write(d, {"config.json": "{not json"}), "config.json cannot be read"),
    (lambda d: write(d, None), "a file, not a folder"),
    (lambda d: d, "no such folder"),
], ids=["empty folder", "config without weights", "unreadable config.json", "a file", "missing"])
def test_model_folders_of_the_wrong_kind(make, expected, config, tmp_path, capsys):
    where = make(tmp_path / "model")
    err = refused(config, capsys, f"student.model={where}", "student.layers=null")
    assert f"student.model '{where}'" in err and expected in err, err


@pytest.mark.parametrize("override, expected", [
    ("distillation.alpha=1.5", "distillation.alpha: Input should be less than or equal to 1"),
    ("distillation.temperature=0", "distillation.temperature: Input should be greater than 0"),
    ("data.max_length=4", "data.max_length: Input should be greater than or equal to 8"),
    ("export.opset=9", "export.opset: Input should be greater than or equal to 14"),
    ("metrics.threshold=1.0", "metrics.threshold: Input should be less than 1"),
    ("data.format=xml", "data.format: Input should be 'auto', 'csv', 'tsv', 'jsonl' or 'parquet'"),
    ("distillation.bogus=1", "distillation.bogus: unknown key"),
    ("data.label_columns=[]", "data.label_columns: List should have at least 1 item"),
    ("gate.metric=bleu", "gate.metric 'bleu': not a metric of this single_label_classification task"),
    ("data.text_column=review", "column(s) ['review'] not found"),
    ("teacher.model=nobody/no-such-model", "teacher.model 'nobody/no-such-model'"),
])
def test_config_values_out_of_range(override, expected, config, capsys, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # a Hub id is checked online: no Hub here, in seconds
    assert expected in refused(config, capsys, override)
