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
    assert isinstance(make_pruner("median"), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("hyperband"), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner("none"), optuna.pruners.NopPruner)
    study = open_study(hpo_cfg(raw, hpo_setup[1] / "space", study_name="s"))
    assert isinstance(study.sampler, optuna.samplers.TPESampler)


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


def test_diverging_trial_is_recorded_and_the_study_goes_on(hpo_setup, monkeypatch):
    import kdpipe.trainer as trainer

    raw, root, teacher = hpo_setup
    real = trainer.distillation_loss

    def explode_at_high_lr(student_logits, *args, **kwargs):
        loss = real(student_logits, *args, **kwargs)
        return loss * float("nan") if EXPLODE["on"] else loss

    EXPLODE = {"on": False}
    monkeypatch.setattr(trainer, "distillation_loss", explode_at_high_lr)
    original = trainer.DistillationTrainer.__init__

    def init(self, *a, **k):
        original(self, *a, **k)
        EXPLODE["on"] = self.args.learning_rate > 5e-4  # the blog's rerun diverged at high learning rates

    monkeypatch.setattr(trainer.DistillationTrainer, "__init__", init)
    cfg = hpo_cfg(raw, root / "nan", n_trials=4, study_name="nan",
                  space={"learning_rate": {"type": "categorical", "choices": [1e-4, 1e-3]}})
    summary = run_trials(cfg, root / "prep", teacher, root / "teval", root / "nan" / "work")
    trials = open_study(cfg).trials
    assert len(trials) == 4
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned and all(t.params["learning_rate"] == 1e-3 for t in pruned)
    assert all("training loss became nan" in t.user_attrs["stopped"] for t in pruned)
    assert summary["trials"]["complete"] == 4 - len(pruned) > 0
    assert summary["best_params"]["learning_rate"] == 1e-4


def test_no_password_in_storage(hpo_setup):
    raw, _, _ = hpo_setup
    with pytest.raises(ConfigError, match="hpo.storage holds a password"):
        load_config(raw=dict(raw, hpo={"storage": "postgresql://kdpipe:secret@db:5432/optuna"}))
