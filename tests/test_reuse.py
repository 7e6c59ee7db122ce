"""The teacher is paid for once: its logits stored per row (content-addressed, shared by runs and shard tasks), and
a fine-tuned teacher recorded in the MLflow registry under its key and adopted by later runs."""

import logging

import numpy as np
import pytest

from kdpipe.artifacts import load_prepared
from kdpipe.data import preprocess
from kdpipe.teacher import TeacherModel, label_rows
from tests.conftest import SHARED_DATA, make_tiny_bert


@pytest.fixture(scope="module")
def setup(tiny_setup):
    return tiny_setup


def store_at(cfg, folder):
    cfg = cfg.model_copy(deep=True)
    cfg.teacher.logit_store = str(folder)
    return cfg


def assert_same_logits(a: dict, b: dict):
    assert a.keys() == b.keys()
    for split in a:
        assert (a[split].argmax(1) == b[split].argmax(1)).all(), split
        assert np.abs(a[split] - b[split]).max() <= 1e-4, split


@pytest.fixture(scope="module")
def full_pass(setup, tmp_path_factory):
    """Every row computed, in a store of its own: the reference."""
    cfg, _, teacher, prep = setup
    cfg = store_at(cfg, tmp_path_factory.mktemp("reference-store"))
    logits, counts = label_rows(cfg, prep, TeacherModel(cfg, teacher), "reference")
    assert counts["rows_computed"] == counts["rows"] == 520 and counts["rows_reused"] == 0
    return logits


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_shards_then_merge_equal_a_full_pass_and_a_second_run_computes_nothing(setup, full_pass, tmp_path, shards):
    cfg, _, teacher, prep = setup
    cfg = store_at(cfg, tmp_path / "store")
    cfg.teacher.shards = shards
    model = TeacherModel(cfg, teacher)
    done = [label_rows(cfg, prep, model, "run-1", shard, shards)[1]["rows_computed"] for shard in range(shards)]
    assert sum(done) == 520 and (shards == 1 or all(0 < n < 520 for n in done))  # the rows split among shards
    merged, counts = label_rows(cfg, prep, model, "run-1")
    assert counts["rows_computed_by_shards"] == counts["rows_computed"] == 520 and counts["rows_reused"] == 0
    assert_same_logits(merged, full_pass)
    # Another run, knowing the teacher's recorded digest: everything found, nothing computed, no model loaded.
    known = TeacherModel(cfg, teacher, model.digest())
    again, counts = label_rows(cfg, prep, known, "run-2")
    assert counts["rows_reused"] == 520 and counts["rows_computed"] == 0 and not known.loaded
    assert_same_logits(again, full_pass)


def test_new_rows_only_are_computed_and_another_teacher_never_mixes_in(setup, full_pass, tmp_path, bert_tokenizer,
                                                                       sst2_small):
    """Training data grown by 40 rows: exactly the new rows are computed."""
    cfg, root, teacher, prep = setup
    cfg = store_at(cfg, tmp_path / "store")
    label_rows(cfg, prep, TeacherModel(cfg, teacher), "run-1")
    grown = tmp_path / "grown.tsv"
    lines = open(sst2_small[0]).read().splitlines()
    more = (SHARED_DATA / "sst2/train.tsv").read_text().splitlines()[3001:3041]
    grown.write_text("\n".join(lines + more) + "\n")
    cfg_grown = cfg.model_copy(deep=True)
    cfg_grown.data.train = str(grown)
    preprocess(cfg_grown, tmp_path / "prep-grown")
    prep_grown = load_prepared(tmp_path / "prep-grown")
    logits, counts = label_rows(cfg_grown, prep_grown, TeacherModel(cfg, teacher), "run-2")
    seen = {tuple(ids) for split in ("train", "validation") for ids in prep.dataset[split]["input_ids"]}
    new_rows = len({tuple(ids) for ids in prep_grown.dataset["train"]["input_ids"]} - seen)
    assert counts["rows_computed"] == new_rows and 0 < new_rows <= 40 and counts["rows_reused"] == 520
    assert_same_logits({"validation": logits["validation"]}, {"validation": full_pass["validation"]})
    # Another teacher (other weights): nothing of the first is reused.
    other = make_tiny_bert(tmp_path / "other", bert_tokenizer, layers=2, num_labels=2, seed=4, dropout=0.0)
    _, counts = label_rows(cfg, prep, TeacherModel(cfg, other), "run-3")
    assert counts["rows_reused"] == 0 and counts["rows_computed"] == 520


def test_a_damaged_shard_is_skipped_with_one_line_and_its_rows_computed_again(setup, full_pass, tmp_path, caplog,
                                                                            monkeypatch):
    cfg, _, teacher, prep = setup
    monkeypatch.setenv("KDPIPE_CACHE", str(tmp_path / "cache"))
    cfg = store_at(cfg, tmp_path / "store")
    model = TeacherModel(cfg, teacher)
    for shard in range(2):
        label_rows(cfg, prep, model, "run-1", shard, 2)
    files = sorted((tmp_path / "store").glob("*/*.safetensors"))
    assert len(files) == 2
    data = bytearray(files[0].read_bytes())
    data[-8:] = b"\x00" * 8  # a few logits overwritten: the file no longer matches its name
    files[0].write_bytes(bytes(data))
    for cached in (tmp_path / "cache").rglob("*.safetensors"):
        cached.unlink()  # the damage is in the store, not in this machine's copy
    files[1].write_bytes(files[1].read_bytes()[:100])  # cut short
    with caplog.at_level(logging.WARNING, logger="kdpipe.logit_store"):
        logits, counts = label_rows(cfg, prep, model, "run-2")
    lines = [r.getMessage() for r in caplog.records if "cannot be used" in r.getMessage()]
    assert len(lines) == 2 and all("rows are computed again" in line for line in lines), lines
    assert counts["rows_reused"] == 0 and counts["rows_computed"] == 520
    assert_same_logits(logits, full_pass)


def test_reuse_never_computes_every_row(setup, tmp_path):
    cfg, _, teacher, prep = setup
    cfg = store_at(cfg, tmp_path / "store")
    model = TeacherModel(cfg, teacher)
    label_rows(cfg, prep, model, "run-1")
    cfg.teacher.reuse = "never"
    _, counts = label_rows(cfg, prep, model, "run-2")
    assert counts["rows_computed"] == 520 and counts["rows_reused"] == 0


def test_the_logit_store_in_mlflow(setup, full_pass, tmp_path):
    """The default store: artifacts of one run per teacher in the MLflow experiment kdpipe-teacher-logits."""
    from mlflow.tracking import MlflowClient

    cfg, _, teacher, prep = setup
    cfg = cfg.model_copy(deep=True)
    cfg.teacher.logit_store = "mlflow"
    cfg.tracking.uri = f"sqlite:///{tmp_path}/mlflow.db"
    model = TeacherModel(cfg, teacher)
    label_rows(cfg, prep, model, "run-1", 0, 2)
    label_rows(cfg, prep, model, "run-1", 1, 2)
    logits, counts = label_rows(cfg, prep, model, "run-2")
    assert counts["rows_reused"] == 520 and counts["rows_computed"] == 0
    assert_same_logits(logits, full_pass)
    client = MlflowClient(cfg.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("kdpipe-teacher-logits").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert len(client.list_artifacts(runs[0].info.run_id, "logits")) == 2


def test_a_fine_tuned_teacher_is_recorded_then_adopted_and_a_damaged_one_is_trained_again(teacher_to_fine_tune,
                                                                                        tmp_path, caplog):
    from mlflow.tracking import MlflowClient

    from kdpipe.steps import finish_tracking, prepare_teacher

    cfg, root, _ = teacher_to_fine_tune
    first = prepare_teacher(cfg, "run-1", str(root / "prep"), str(tmp_path / "t1"))
    assert first["finetuned"] and not first["reused"] and first["teacher_version"] == "1"
    assert [set(h) >= {"epoch", "eval_loss", "eval_accuracy"} for h in first["learning_curve"]] == [True]  # 1 epoch
    assert first["best_epoch"] == first["epochs_run"] == 1
    cfg.distillation.alpha = 0.3  # a student setting: the same teacher
    second = prepare_teacher(cfg, "run-2", str(root / "prep"), str(tmp_path / "t2"))
    assert second["reused"] and not second["finetuned"] and second["teacher_ref"] == first_ref(cfg)
    assert second["reused_from_pipeline_run"] == "run-1" and second["step_seconds"] < first["step_seconds"]
    client = MlflowClient(cfg.tracking.uri)
    version = client.get_model_version(f"{cfg.tracking.registered_model}-teacher", "1")
    assert second["reused_from_run"] == version.run_id
    parent = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id],
                                "tags.`kdpipe.pipeline_run` = 'run-2' and tags.`kdpipe.role` = 'pipeline'")[0]
    assert parent.data.tags["kdpipe.teacher_reused_from"] == version.run_id
    forced = prepare_teacher(cfg, "run-3", str(root / "prep"), str(tmp_path / "t3"), force=True)
    assert forced["finetuned"] and forced["teacher_version"] == "2"
    # Both recorded copies damaged in the store (and none cached here): one line each, then fine-tuned again.
    import shutil

    for v in ("1", "2"):
        source = client.get_model_version(f"{cfg.tracking.registered_model}-teacher", v).source
        (__import__("pathlib").Path(source.removeprefix("file://")) / "model.safetensors").write_bytes(b"damaged")
    shutil.rmtree(tmp_path / "cache" / "registry")
    with caplog.at_level(logging.WARNING, logger="kdpipe.teacher"):
        third = prepare_teacher(cfg, "run-4", str(root / "prep"), str(tmp_path / "t4"))
    assert third["finetuned"] and third["teacher_version"] == "3"
    assert len([r for r in caplog.records if "cannot be used" in r.getMessage()]) == 2
    for run in ("run-1", "run-2", "run-3", "run-4"):
        finish_tracking(cfg, run, "SUCCEEDED")


def first_ref(cfg):
    return f"models:/{cfg.tracking.registered_model}-teacher/1"
