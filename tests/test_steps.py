import json

import pytest
import torch

from kdpipe.artifacts import load_prepared, teacher_logits
from kdpipe.config import LossTerm, StudentConfig, load_config
from kdpipe.data import preprocess
from kdpipe.errors import DataError, ExportError
from kdpipe.losses import DistillationLoss
from kdpipe.modeling import derive_student, load_classifier, load_tokenizer, predict_logits
from kdpipe.teacher import evaluate_teacher, teacher_needs_finetuning
from kdpipe.trainer import DistillationTrainer, KDCollator, training_arguments
from kdpipe_kfp.cli import main
from tests.conftest import base_config


@pytest.fixture(scope="module")
def setup(tiny_setup):
    return tiny_setup


def one_step_params(prep, teacher_dir, root, *, batch, accumulation, cached, name):
    """Parameters after one optimizer step of 32 rows, as batch x accumulation."""
    tokenizer = load_tokenizer(prep.tokenizer_dir)
    teacher = load_classifier(teacher_dir)
    student = derive_student(teacher, [0, 2])
    train = prep.dataset["train"].select(range(64))
    online = None
    if cached:
        train = train.add_column("teacher_logits", predict_logits(teacher, train, tokenizer).tolist())
    else:
        online = load_classifier(teacher_dir)
    args = training_arguments(root / name, epochs=1, learning_rate=0.5, batch_size=batch,
                              gradient_accumulation_steps=accumulation, group_by_length=False,
                              max_steps=1, optim="sgd", lr_scheduler_type="constant", save_strategy="no",
                              eval_strategy="no")
    loss = DistillationLoss([LossTerm(name="auto", alpha=0.5, temperature=2.0)], prep.schema)
    DistillationTrainer(model=student, args=args, train_dataset=train, data_collator=KDCollator(tokenizer),
                        loss=loss, teacher=online).train()
    return {k: v.detach().clone() for k, v in student.named_parameters()}


def max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_gradient_accumulation_matches_full_batch(setup):
    _, root, teacher, prep = setup
    full = one_step_params(prep, teacher, root, batch=32, accumulation=1, cached=True, name="full")
    accumulated = one_step_params(prep, teacher, root, batch=8, accumulation=4, cached=True, name="acc")
    start = {k: v for k, v in derive_student(load_classifier(teacher), [0, 2]).named_parameters()}
    moved = max_diff(full, start)
    assert moved > 1e-3  # the step did change the weights (SGD: the update is proportional to the gradient)
    assert max_diff(full, accumulated) < 1e-5 * max(1.0, moved)


def test_cached_teacher_logits_equal_online_teacher(setup):
    _, root, teacher, prep = setup
    cached = one_step_params(prep, teacher, root, batch=16, accumulation=1, cached=True, name="cached")
    online = one_step_params(prep, teacher, root, batch=16, accumulation=1, cached=False, name="online")
    assert max_diff(cached, online) < 1e-5


def test_derived_student_keeps_chosen_layers(setup):
    _, _, teacher_dir, _ = setup
    teacher = load_classifier(teacher_dir)
    student = derive_student(teacher, [1, 3])
    assert student.config.num_hidden_layers == 2
    t, s = teacher.state_dict(), student.state_dict()
    key = "bert.encoder.layer.{}.attention.self.query.weight"
    assert torch.equal(s[key.format(0)], t[key.format(1)]) and torch.equal(s[key.format(1)], t[key.format(3)])
    assert torch.equal(s["classifier.weight"], t["classifier.weight"])
    assert torch.equal(s["bert.embeddings.word_embeddings.weight"], t["bert.embeddings.word_embeddings.weight"])
    from kdpipe.errors import ConfigError
    with pytest.raises(ConfigError, match="the teacher has 4 layers"):
        derive_student(teacher, [0, 4])


def test_teacher_needs_finetuning(setup, tiny_bert):
    cfg, _, teacher, prep = setup
    assert teacher_needs_finetuning(cfg, prep.schema) == (False, "teacher is already a classifier for these labels")
    base = cfg.model_copy(deep=True)
    base.teacher.model = tiny_bert
    needed, why = teacher_needs_finetuning(base, prep.schema)
    assert needed and "no sequence-classification head" in why
    base.teacher.finetune = "never"
    with pytest.raises(DataError, match="teacher.finetune is 'never'"):
        teacher_needs_finetuning(base, prep.schema)


def test_the_same_config_and_data_train_the_same_teacher_and_student(setup, tiny_bert, tmp_path):
    """Seeds cover the new classification head too: it is created before the Trainer seeds anything, and an
    unseeded head made two runs of one config train different teachers (and so different students)."""
    from safetensors.numpy import load_file

    from kdpipe.distill import distill_student
    from kdpipe.teacher import finetune_teacher

    cfg, root, _, _ = setup
    base = cfg.model_copy(deep=True)
    base.teacher.model = tiny_bert  # a base encoder: fine-tuned with a new head
    base.student.layers = [0, 1]
    logits = []
    for run in ("a", "b"):
        teacher = finetune_teacher(base, root / "prep", tmp_path / run / "teacher")["model_dir"]
        evaluate_teacher(base, root / "prep", teacher, tmp_path / run / "teval")
        distill_student(base, root / "prep", teacher, tmp_path / run / "teval", tmp_path / run / "student")
        logits.append(load_file(str(tmp_path / run / "student" / "validation_logits.safetensors"))["logits"])
    assert (logits[0] == logits[1]).all()


def test_teacher_fine_tuning_keeps_its_best_epoch_and_stops_when_validation_stops_improving(setup, tiny_bert,
                                                                                           tmp_path):
    """Each epoch judged on validation (the gate's metric); training stops after `early_stopping_patience` epochs
    without improvement, and the teacher is the best epoch's weights, not the last epoch's: its validation
    accuracy, computed after training, is the curve's maximum."""
    from kdpipe.teacher import finetune_teacher

    cfg, root, _, _ = setup
    base = cfg.model_copy(deep=True)
    base.teacher.model = tiny_bert
    base.teacher.epochs, base.teacher.early_stopping_patience, base.teacher.learning_rate = 5, 1, 3e-4
    trained = finetune_teacher(base, root / "prep", tmp_path / "teacher")
    accuracy = [h["eval_accuracy"] for h in trained["epoch_history"]]
    best = accuracy.index(max(accuracy))
    assert trained["metrics"]["accuracy"] == pytest.approx(accuracy[best], abs=1e-6), accuracy
    assert trained["best_epoch"] == pytest.approx(trained["epoch_history"][best]["epoch"])
    assert len(accuracy) <= 5 and (len(accuracy) == 5 or best == len(accuracy) - 2), accuracy


def test_teacher_logits_cached_and_keyed_to_data(setup):
    cfg, root, teacher, prep = setup
    result = evaluate_teacher(cfg, root / "prep", teacher, root / "teval")
    assert result["logits"]["rows"] == 520 and set(result["metrics"]) == {"accuracy", "macro_f1"}  # train + dev
    logits = teacher_logits(root / "teval").load("train", prep.info["fingerprints"]["train"])
    assert logits.shape == (400, 2)
    with pytest.raises(DataError, match="computed on other data.*re-run evaluate-teacher"):
        teacher_logits(root / "teval").load("train", "0" * 16)
    assert (root / "teval" / "train_logits.safetensors").is_file()


def test_distill_resumes_after_interruption(setup, monkeypatch):
    from kdpipe.distill import distill_student

    cfg, root, teacher, _ = setup
    evaluate_teacher(cfg, root / "prep", teacher, root / "teval")
    cfg = cfg.model_copy(deep=True)
    cfg.distillation.epochs = 2
    original = DistillationTrainer.compute_loss

    def crash_in_second_epoch(self, *a, **k):
        if self.state.epoch is not None and self.state.epoch > 1.3:
            raise RuntimeError("node lost")
        return original(self, *a, **k)

    monkeypatch.setattr(DistillationTrainer, "compute_loss", crash_in_second_epoch)
    with pytest.raises(RuntimeError, match="node lost"):
        distill_student(cfg, root / "prep", teacher, root / "teval", root / "student")
    monkeypatch.setattr(DistillationTrainer, "compute_loss", original)
    result = distill_student(cfg, root / "prep", teacher, root / "teval", root / "student")
    assert result["resumed_from"].endswith("checkpoint-13")  # 400 rows / 32 = 13 steps per epoch
    assert [round(h["epoch"]) for h in result["epoch_history"]] == [1, 2]
    # A run with other settings does not pick up these checkpoints.
    cfg.distillation.alpha = 0.9
    assert distill_student(cfg, root / "prep", teacher, root / "teval", root / "student")["resumed_from"] is None


def test_a_checkpoint_cut_short_by_a_full_disk_is_never_resumed_from(setup, monkeypatch, caplog):
    """The disk fills while the second epoch's checkpoint is saved (its folder gets the model, not the optimizer
    nor the trainer state). The retry resumes from the first epoch's complete checkpoint and says the cut one was
    removed: it used to fail on it every time ("Can't find a valid checkpoint at .../checkpoint-26")."""
    import errno
    import logging

    from kdpipe.distill import distill_student

    cfg, root, teacher, _ = setup
    evaluate_teacher(cfg, root / "prep", teacher, root / "teval")
    cfg = cfg.model_copy(deep=True)
    cfg.distillation.epochs, cfg.distillation.alpha = 2, 0.7
    original = DistillationTrainer._save_optimizer_and_scheduler

    def disk_full_in_second_save(self, output_dir):
        if self.state.global_step == 26:
            raise OSError(errno.ENOSPC, "No space left on device", f"{output_dir}/optimizer.pt")
        return original(self, output_dir)

    monkeypatch.setattr(DistillationTrainer, "_save_optimizer_and_scheduler", disk_full_in_second_save)
    with pytest.raises(OSError, match="No space left on device"):
        distill_student(cfg, root / "prep", teacher, root / "teval", root / "full-disk")
    cut = root / "full-disk" / "checkpoints" / "checkpoint-26"
    assert (cut / "model.safetensors").is_file() and not (cut / "trainer_state.json").exists()
    monkeypatch.setattr(DistillationTrainer, "_save_optimizer_and_scheduler", original)
    with caplog.at_level(logging.WARNING, logger="kdpipe.trainer"):
        result = distill_student(cfg, root / "prep", teacher, root / "teval", root / "full-disk")
    assert result["resumed_from"].endswith("checkpoint-13")
    assert [r.getMessage() for r in caplog.records if "cut short" in r.getMessage()] == [
        f"kdpipe: checkpoint {cut} was cut short while it was saved (no kdpipe_checkpoint_complete): removed, "
        f"not resumed from"]


@pytest.fixture(scope="module")
def student_artifact(setup):
    """A student artifact as distill-student leaves it (model/ + its validation logits), from the tiny classifier."""
    from kdpipe.distill import adopt_model

    cfg, root, teacher, _ = setup
    result = adopt_model(cfg, root / "prep", teacher, root / "student-artifact")
    assert result["latency_ms_b1"] > 0 and set(result["metrics"]) == {"accuracy", "macro_f1"}
    return root / "student-artifact"


def test_export_parity_metadata_int8_and_predict(setup, student_artifact, capsys):
    from kdpipe.export import export_onnx
    from kdpipe.export_search import TIE
    from kdpipe.serving import OnnxClassifier

    cfg, root, teacher, prep = setup
    result = export_onnx(cfg, student_artifact, root / "prep", root / "onnx")
    assert result["max_abs_logit_diff"] < cfg.export.parity_tolerance
    assert result["metrics_fp32"] == result["metrics_torch"]
    assert (root / "onnx/model.int8.onnx").is_file() and result["int8_metric_drop"] <= cfg.export.max_int8_metric_drop
    assert set(result["latency_ms"]) == {"fp32_b1", "fp32_b32", "int8_b1", "int8_b32"}
    # export.search fast: dynamic int8 of the fused graph (the reference), the lean and the unfused one, each timed
    # and judged; the one shipped is the table's chosen row.
    searched = result["int8_search"]
    assert [r["candidate"] for r in searched] == ["fused/dynamic", "lean/dynamic", "unfused/dynamic"]
    [chosen] = [r for r in searched if r["chosen"]]
    assert chosen["candidate"] == result["int8_variant"] and chosen["why_not"] is None
    assert chosen["latency_ms"][32] == result["latency_ms"]["int8_b32"] and chosen["flips"] == result["int8_label_flips"]
    assert all(r["speed"] * (1 + TIE) >= chosen["speed"] for r in searched if r["why_not"] is None)
    # int8 passed its checks: it is what the folder serves; fp32 on request.
    assert result["served"] == "int8"
    clf, fp32 = OnnxClassifier(root / "onnx"), OnnxClassifier(root / "onnx", "fp32")
    assert (clf.variant, fp32.variant) == ("int8", "fp32")
    assert clf.labels == ["0", "1"] and clf.problem_type == "single_label_classification"
    rows = clf.predict(["a gorgeous film", "dull and lifeless", "x " * 300])
    assert all(abs(sum(r["scores"].values()) - 1) < 1e-5 for r in rows)  # softmax probabilities
    assert rows != fp32.predict(["a gorgeous film", "dull and lifeless", "x " * 300])  # another graph's scores
    capsys.readouterr()
    for variant in ([], ["--variant", "fp32"]):
        assert main(["predict", "--model", str(root / "onnx"), "--json", *variant, "a gorgeous film"]) == 0
        line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert line["scores"] == (fp32 if variant else clf).predict(["a gorgeous film"])[0]["scores"]


def test_failed_parity_leaves_nothing(setup, student_artifact, monkeypatch):
    import kdpipe.export as export

    cfg, root, teacher, _ = setup
    real = export.onnx_logits
    monkeypatch.setattr(export, "onnx_logits", lambda *a, **k: real(*a, **k) + 0.01)
    with pytest.raises(ExportError, match="differ by 1.00e-02"):
        export.export_onnx(cfg, student_artifact, root / "prep", root / "onnx-bad")
    assert not (root / "onnx-bad").exists()


def test_int8_check_uses_the_gates_metric(setup, student_artifact, monkeypatch):
    """configs/toxic-bert-tiny.yaml gates on roc_auc_macro: the int8 model must be judged on that, not micro_f1.
    Here the int8 model keeps its accuracy but loses 0.1 macro-F1, so only a macro-F1 gate rejects it."""
    import kdpipe.export as export

    cfg, root, _, _ = setup
    fp32, int8 = {"accuracy": 0.9, "macro_f1": 0.9}, {"accuracy": 0.9, "macro_f1": 0.8}

    def export_with_gate(metric, out):
        judged = iter([fp32, fp32, int8])  # export judges: ONNX fp32, the PyTorch logits, then ONNX int8
        monkeypatch.setattr(export, "compute_metrics", lambda *a: next(judged))
        gate_cfg = cfg.model_copy(update={"gate": cfg.gate.model_copy(update={"metric": metric}),
                                          "export": cfg.export.model_copy(update={"search": "off"})})
        return export.export_onnx(gate_cfg, student_artifact, root / "prep", root / out)

    on_f1 = export_with_gate("macro_f1", "onnx-f1")
    assert on_f1["int8_metric"] == "macro_f1" and on_f1["int8_metric_drop"] == pytest.approx(0.1)
    assert on_f1["int8_path"] is None and "macro_f1 drop 0.1000 > export.max_int8_metric_drop" in on_f1["int8_rejected"]
    on_accuracy = export_with_gate("accuracy", "onnx-acc")
    assert on_accuracy["int8_metric"] == "accuracy" and on_accuracy["int8_path"].endswith("model.int8.onnx")


def test_full_export_search_tries_static_and_a_layer_in_fp32(setup, student_artifact, tmp_path):
    """export.search full on the tiny student: static int8 of both graphs (calibrated on training rows) and the best
    variant with its most sensitive node group kept in fp32 join the table; the model card shows it; a bound of 0
    flips leaves only flip-free variants (or none: fp32 served, each row saying why)."""
    from kdpipe.export import export_onnx
    from kdpipe.export_search import search_table
    from kdpipe.model_card import _search

    cfg, root, _, _ = setup
    full = cfg.model_copy(update={"export": cfg.export.model_copy(update={"search": "full"})})
    result = export_onnx(full, student_artifact, root / "prep", tmp_path / "full")
    names = [r["candidate"] for r in result["int8_search"]]
    assert names[:6] == ["fused/dynamic", "lean/dynamic", "unfused/dynamic", "fused/static", "lean/static",
                         "unfused/static"], names
    assert len(names) == 7 and " fp32" in names[6] and names[6].split(",")[0] in names[:6]
    assert sum(r["chosen"] for r in result["int8_search"]) == 1 and result["int8_search_seconds"] > 0
    table = search_table(result, [1, 32])
    assert table.count("\n") == 2 + len(names) and "**shipped**" in table
    assert table in _search(full, result)
    strict = full.model_copy(update={"export": full.export.model_copy(update={"max_int8_label_flip_rate": 0.0})})
    bound = export_onnx(strict, student_artifact, root / "prep", tmp_path / "strict")
    assert all(r["flips"] == 0 for r in bound["int8_search"] if r["chosen"])
    if bound["int8_path"] is None:
        assert bound["served"] == "fp32" and "label flips" in bound["int8_rejected"]


def test_steps_that_need_no_model_import_no_torch(setup, student_artifact, tmp_path):
    """The gate judges stored logits; hpo-best with HPO off and the exit handler only pass things on: none of them
    should pay torch's import (seconds per task on a cluster as here)."""
    import subprocess
    import sys

    cfg, root, teacher, _ = setup
    evaluate_teacher(cfg, root / "prep", teacher, tmp_path / "teval")  # the teacher's logits the gate compares with
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"uri": f"sqlite:///{tmp_path}/m.db"})})
    (tmp_path / "config.json").write_text(cfg.model_dump_json())
    code = f"""
import json, sys
from pathlib import Path
from kdpipe.steps import finish_tracking, evaluate_gate, hpo_best
config = Path({str(tmp_path / 'config.json')!r}).read_text()
gate = evaluate_gate(config, "no-torch", {str(root / 'prep')!r}, {str(student_artifact)!r}, {str(tmp_path / 'teval')!r},
                 {{"accuracy": 0.5, "macro_f1": 0.5}}, 1.0)
best = hpo_best(config, "no-torch", {str(root / 'prep')!r}, {str(tmp_path / 'report.html')!r},
                     {str(tmp_path / 'best')!r}, '{{"epochs": 2}}')
finish_tracking(config, "no-torch", "SUCCEEDED")
print(json.dumps({{"torch": "torch" in sys.modules, "gate": gate["metric"], "params": best["params"]}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"torch": False, "gate": "accuracy",
                                                                "params": {"epochs": 2}}


@pytest.mark.parametrize("damage, message", [
    ("missing", "no ONNX model there"),
    ("truncated", "not a readable ONNX model"),
    ("no_tokenizer", "no usable tokenizer files beside the model"),
    ("empty_input", "no texts to classify"),
])
def test_predict_on_a_bad_model_folder_or_no_input_is_one_line(setup, student_artifact, tmp_path, capsys,
                                                               monkeypatch, damage, message):
    import io
    import shutil

    from kdpipe.export import export_onnx

    cfg, root, _, _ = setup
    if not (root / "onnx-predict").exists():
        export_onnx(cfg, student_artifact, root / "prep", root / "onnx-predict")
    folder = shutil.copytree(root / "onnx-predict", tmp_path / "model")
    if damage == "missing":
        shutil.rmtree(folder)
    elif damage == "truncated":  # the file predict runs: the served one
        from kdpipe.artifacts import Export

        data = Export(folder).model().read_bytes()
        Export(folder).model().write_bytes(data[: len(data) // 3])
    elif damage == "no_tokenizer":
        for f in folder.iterdir():
            if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
                f.unlink()
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    capsys.readouterr()
    code = main(["predict", "--model", str(folder)] + ([] if damage == "empty_input" else ["a fine film"]))
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err


@pytest.fixture(scope="module")
def transfer_prep(setup, shared_data):
    """The setup's data plus a transfer set: 60 unlabeled SST-2 training sentences and one augmented copy of each
    training text."""
    cfg, root, teacher, _ = setup
    rows = (shared_data / "sst2/train.tsv").read_text().splitlines()[2001:2061]
    (root / "unlabeled.tsv").write_text("sentence\n" + "\n".join(r.split("\t")[0] for r in rows) + "\n")
    cfg = cfg.model_copy(deep=True)
    cfg.data.unlabeled = str(root / "unlabeled.tsv")
    cfg.distillation.augment.factor = 1
    preprocess(cfg, root / "prep-transfer")
    evaluate_teacher(cfg, root / "prep-transfer", teacher, root / "teval-transfer")
    return cfg, load_prepared(root / "prep-transfer")


def test_transfer_set_logits_cached_and_keyed_to_its_fingerprint(setup, transfer_prep):
    from kdpipe.data import TRANSFER

    _, root, teacher, _ = setup
    _, prep = transfer_prep
    assert prep.info["sizes"][TRANSFER] == 460 and prep.info["transfer"] == {
        "unlabeled": 60, "unlabeled_dropped_in_eval": 0, "augmented": 400}
    cached = teacher_logits(root / "teval-transfer").load(TRANSFER, prep.info["fingerprints"][TRANSFER])
    tokenizer = load_tokenizer(prep.tokenizer_dir)
    assert torch.allclose(torch.tensor(cached), torch.tensor(predict_logits(load_classifier(teacher),
                                                                           prep.dataset[TRANSFER], tokenizer)))
    with pytest.raises(DataError, match="computed on other data"):
        teacher_logits(root / "teval-transfer").load(TRANSFER, prep.info["fingerprints"]["train"])


def test_student_distils_on_the_transfer_set_from_cached_logits(setup, transfer_prep, monkeypatch):
    from kdpipe.distill import distill_student

    _, root, teacher, _ = setup
    cfg, prep = transfer_prep
    seen = []
    original = DistillationTrainer.compute_loss

    def spy(self, model, inputs, *a, **k):
        if model.training:
            labelled = inputs.get("labelled", torch.ones(len(inputs["input_ids"]), dtype=torch.bool))
            seen.append((int(labelled.sum()), len(labelled), "teacher_logits" in inputs))
        return original(self, model, inputs, *a, **k)

    monkeypatch.setattr(DistillationTrainer, "compute_loss", spy)
    result = distill_student(cfg, root / "prep-transfer", teacher, root / "teval-transfer", root / "student-transfer")
    assert result["train_rows"] == 860 and result["teacher_mode"] == "cached"
    assert sum(n for _, n, _ in seen) == 860 and sum(labelled for labelled, _, _ in seen) == 400
    assert all(cached for _, _, cached in seen)
    seen.clear()
    # No teacher term (alpha 1): the transfer set has nothing to teach and is left out.
    plain = distill_student(cfg, root / "prep-transfer", teacher, None, root / "student-plain", params={"alpha": 1.0})
    assert plain["train_rows"] == 400 and plain["teacher_mode"] == "none"
    assert sum(n for _, n, _ in seen) == 400 and not any(cached for _, _, cached in seen)


@pytest.mark.parametrize("task", ["single", "multi"])
def test_feature_losses_train_with_an_online_teacher(task, setup, shared_data, bert_tokenizer, tmp_path):
    """hidden_mse (through a learned projection: the student is narrower) and attention_kl, next to the logit loss,
    single- and multi-label: the teacher runs online, the projection learns, and the shipped student has no trace
    of it."""
    from safetensors import safe_open

    from kdpipe.distill import distill_student
    from tests.conftest import make_tiny_bert

    cfg, root, _, _ = setup
    labels = 2 if task == "single" else 6
    teacher = make_tiny_bert(tmp_path / "teacher", bert_tokenizer, layers=4, hidden=32, num_labels=labels, seed=3)
    student = make_tiny_bert(tmp_path / "student", bert_tokenizer, layers=2, hidden=16, num_labels=labels, seed=4)
    raw = base_config(teacher, *([str(shared_data / "jigsaw/train_sample300.csv")] * 2 if task == "multi" else
                                 [cfg.data.train, cfg.data.validation]))
    if task == "multi":
        raw["data"].update(text_column="comment_text",
                           label_columns=["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"])
    raw["student"] = {"model": student}
    raw["distillation"].update(losses=[{"name": "auto"}, {"name": "hidden_mse", "weight": 1.0},
                                       {"name": "attention_kl", "weight": 1.0, "layer_map": {1: 2, 2: 4}}])
    cfg = load_config(raw=raw)
    preprocess(cfg, tmp_path / "prep")
    projections = []
    original = DistillationTrainer.create_optimizer

    def keep(self, model=None):
        optimizer = original(self, model)
        projections.append({k: v.detach().clone() for k, v in self.kd_loss.state_dict().items()})
        projections.append(self.kd_loss)
        return optimizer

    DistillationTrainer.create_optimizer = keep
    try:
        result = distill_student(cfg, tmp_path / "prep", teacher, None, tmp_path / "out")
    finally:
        DistillationTrainer.create_optimizer = original
    assert result["teacher_mode"] == "online" and result["train_loss"] > 0
    before, loss = projections
    assert set(before) == {"features.0.projection.weight", "features.0.projection.bias"}
    assert not torch.equal(before["features.0.projection.weight"], loss.state_dict()["features.0.projection.weight"])
    with safe_open(str(tmp_path / "out/model/model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "projection" in k]


def test_a_resumed_run_gets_the_projection_back(setup, bert_tokenizer, tmp_path):
    """The hidden_mse projection trains with the student: an interrupted run's checkpoint holds it, and the resumed
    run starts from it rather than from a new random projection."""
    from safetensors.torch import load_file

    from kdpipe.distill import distill_student
    from kdpipe.trainer import LOSS_STATE
    from tests.conftest import make_tiny_bert

    cfg, root, teacher, _ = setup
    student = make_tiny_bert(tmp_path / "student", bert_tokenizer, layers=2, hidden=16, num_labels=2)
    cfg = cfg.model_copy(update={"student": StudentConfig(model=student), "distillation": cfg.distillation.with_params(
        {"epochs": 2, "losses": [{"name": "auto"}, {"name": "hidden_mse"}]})})
    original, loaded = DistillationTrainer.compute_loss, {}

    def crash_in_second_epoch(self, *a, **k):
        if self.state.epoch is not None and self.state.epoch > 1.3:
            raise RuntimeError("node lost")
        return original(self, *a, **k)

    DistillationTrainer.compute_loss = crash_in_second_epoch
    try:
        with pytest.raises(RuntimeError, match="node lost"):
            distill_student(cfg, root / "prep", teacher, None, tmp_path / "out")
    finally:
        DistillationTrainer.compute_loss = original
    saved = load_file(str(tmp_path / "out/checkpoints/checkpoint-13" / LOSS_STATE))
    load = DistillationTrainer._load_from_checkpoint

    def spy(self, checkpoint, model=None):
        load(self, checkpoint, model)
        loaded.update({k: v.detach().clone() for k, v in self.kd_loss.state_dict().items()})

    DistillationTrainer._load_from_checkpoint = spy
    try:
        result = distill_student(cfg, root / "prep", teacher, None, tmp_path / "out")
    finally:
        DistillationTrainer._load_from_checkpoint = load
    assert result["resumed_from"].endswith("checkpoint-13")
    assert set(saved) == {"features.0.projection.weight", "features.0.projection.bias"}
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
