"""The teacher fine-tuned properly: its learning curve (training loss and validation figures per epoch, the epoch
kept) in its step's report, and the optional small search over its fine-tuning settings."""

from pathlib import Path

from kdpipe.config import SearchParam
from kdpipe.teacher import with_train_loss
from kdpipe.teacher_reuse import teacher_key
from kdpipe.teacher_tuning import learning_curve, report


def test_the_learning_curve_has_each_epochs_mean_training_loss_and_the_report_marks_the_epoch_kept(tiny_setup):
    cfg = tiny_setup[0].model_copy(deep=True)
    cfg.teacher.epochs = 5
    log_history = [{"loss": 0.6, "epoch": 0.5}, {"loss": 0.4, "epoch": 1.0},
                   {"eval_loss": 0.35, "eval_accuracy": 0.85, "eval_runtime": 1.2, "epoch": 1.0},
                   {"loss": 0.2, "epoch": 2.0},
                   {"eval_loss": 0.33, "eval_accuracy": 0.88, "eval_samples_per_second": 9.0, "epoch": 2.0},
                   {"loss": 0.1, "epoch": 3.0},
                   {"eval_loss": 0.41, "eval_accuracy": 0.87, "epoch": 3.0},
                   {"train_runtime": 30.0, "train_loss": 0.3, "epoch": 3.0}]  # the Trainer's closing entry
    curve = learning_curve(with_train_loss(log_history))
    assert curve == [{"epoch": 1.0, "eval_loss": 0.35, "eval_accuracy": 0.85, "train_loss": 0.5},
                     {"epoch": 2.0, "eval_loss": 0.33, "eval_accuracy": 0.88, "train_loss": 0.2},
                     {"epoch": 3.0, "eval_loss": 0.41, "eval_accuracy": 0.87, "train_loss": 0.1}]
    text = report(cfg, {"finetuned": True, "learning_curve": curve, "best_epoch": 2.0, "epochs_run": 3.0,
                        "selected_by": "accuracy"})
    assert "at most 5 epochs" in text and "Ran 3 epochs (stopped early: no gain on validation); the teacher is " \
                                           "epoch 2, the best on validation accuracy" in text
    assert "| epoch | training loss | validation loss | accuracy |" in text
    assert "| 2 (kept) | 0.2000 | 0.3300 | 0.8800 |" in text and "| 3 | 0.1000 | 0.4100 | 0.8700 |" in text
    assert "Search" not in text


def test_searched_choices_are_the_settings_types_and_survive_the_trip_as_a_pipeline_parameter(tiny_setup):
    from kdpipe.config import config_from_json

    cfg = tiny_setup[0]
    assert cfg.teacher.search_space["epochs"].choices == [3.0, 5.0]  # the default, validated like a given one
    assert config_from_json(cfg.model_dump_json()).hash() == cfg.hash()  # an unchanged run must stay unchanged


def test_a_teacher_search_keeps_its_best_trial_and_reports_every_trial(teacher_to_fine_tune, tmp_path):
    from mlflow.tracking import MlflowClient

    from kdpipe.steps import finish_tracking, prepare_teacher

    cfg, root, prep = teacher_to_fine_tune
    plain_key = teacher_key(cfg, prep)
    cfg.teacher.search_trials = 5  # more than the grid holds: the grid ends the search
    cfg.teacher.search_space = {"learning_rate": SearchParam(type="categorical", choices=[1e-7, 3e-3]),
                                "epochs": SearchParam(type="categorical", choices=[2])}
    assert teacher_key(cfg, prep) != plain_key  # a searched teacher is another teacher
    searched = cfg.model_copy(deep=True)
    searched.teacher.learning_rate = 1e-3
    assert teacher_key(searched, prep) == teacher_key(cfg, prep)  # a setting the search draws decides nothing
    result = prepare_teacher(cfg, "run-1", str(root / "prep"), str(tmp_path / "t"), report_file=str(tmp_path / "r1"))
    trials = result["search"]
    assert sorted(t["learning_rate"] for t in trials) == [1e-7, 3e-3] and {t["epochs"] for t in trials} == {2}
    best = max(trials, key=lambda t: t["accuracy"])
    assert result["search_best_trial"] == best["trial"] and result["params"]["learning_rate"] == best["learning_rate"]
    # The kept teacher is that trial's model, scored again after saving: the figure the search compared.
    assert result["metrics"]["accuracy"] == best["accuracy"] > min(t["accuracy"] for t in trials)
    assert sorted(p.name for p in Path(tmp_path / "t").iterdir()) == ["model"]  # no trial left behind
    assert result["finetuned"] and result["teacher_version"] == "1"
    client = MlflowClient(cfg.tracking.uri)
    run = client.get_model_version(f"{cfg.tracking.registered_model}-teacher", "1").run_id
    text = Path(client.download_artifacts(run, "teacher.md", str(tmp_path))).read_text()
    assert text == (tmp_path / "r1").read_text()  # on the step's run, and in the KFP component's report
    assert f"Learning rate {best['learning_rate']:g}, at most 2 epochs" in text
    assert "## Search over learning_rate, epochs: 2 trials" in text
    assert f"| {best['trial']} (teacher) | {best['learning_rate']:g} | 2 | {best['accuracy']:.4f} |" in text
    # Adopted by the next run with the same search: the search is paid once.
    again = prepare_teacher(cfg, "run-2", str(root / "prep"), str(tmp_path / "t2"), report_file=str(tmp_path / "r2"))
    assert again["reused"] and not again["finetuned"]
    assert "Not fine-tuned by this run: " in (tmp_path / "r2").read_text()
    for name in ("run-1", "run-2"):
        finish_tracking(cfg, name, "SUCCEEDED")
