"""One typed config: a YAML file plus `--set a.b=c` overrides, validated before any work starts."""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kdpipe.errors import ConfigError

ProblemType = Literal["auto", "single_label_classification", "multi_label_classification"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TeacherConfig(_Section):
    model: str = Field(description="Hub id, local directory, or `module:<python package>` exposing get_model_path().")
    revision: str | None = None
    finetune: Literal["auto", "always", "never"] = "auto"
    epochs: float = Field(3.0, gt=0)
    learning_rate: float = Field(5e-5, gt=0)
    batch_size: int = Field(32, ge=1)


class StudentConfig(_Section):
    model: str | None = None
    revision: str | None = None
    layers: list[int] | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.model is None) == (self.layers is None):
            raise ValueError("set exactly one of student.model (a model id or path) or student.layers (teacher layers to keep)")
        if self.layers is not None:
            if not self.layers or any(i < 0 for i in self.layers) or len(set(self.layers)) != len(self.layers):
                raise ValueError(f"student.layers must be distinct non-negative layer indices, got {self.layers}")
        return self


class DataConfig(_Section):
    dataset: str | None = Field(None, description="Hub dataset id; then train/validation/test are split names.")
    dataset_config: str | None = None
    train: str
    validation: str
    test: str | None = None
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet"] = "auto"
    header: bool = True
    column_names: list[str] | None = None
    text_column: str = "text"
    label_columns: list[str] = Field(default_factory=lambda: ["label"], min_length=1)
    label_names: list[str] | None = None
    label_names_file: str | None = None
    label_separator: str = ","
    problem_type: ProblemType = "auto"
    max_train_samples: int | None = Field(None, ge=1)
    max_eval_samples: int | None = Field(None, ge=1)
    max_length: int = Field(128, ge=8, le=8192)
    seed: int = 42

    @model_validator(mode="after")
    def _names(self):
        if self.label_names is not None and self.label_names_file is not None:
            raise ValueError("set data.label_names or data.label_names_file, not both")
        if not self.header and not self.column_names:
            raise ValueError("data.header is false: set data.column_names to name the file's columns")
        return self


class DistillationConfig(_Section):
    loss: Literal["auto", "softmax_kl", "sigmoid_bce"] = "auto"
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    temperature: float = Field(4.0, gt=0.0)
    epochs: float = Field(3.0, gt=0)
    learning_rate: float = Field(6e-5, gt=0)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup: float = Field(0.0, ge=0, description="Warmup as a ratio of training steps (<1) or a step count (>=1).")
    teacher_logits: Literal["cached", "online"] = "cached"
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    seed: int = 42
    group_by_length: bool = Field(True, description="Batch rows of similar length: less padding, faster epochs.")
    dataloader_workers: int = Field(0, ge=0)


class MetricsConfig(_Section):
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="Multi-label decision threshold on sigmoid scores.")


class GateConfig(_Section):
    metric: str = Field("auto", description="Metric the gate compares: accuracy/macro_f1 (single), micro_f1/macro_f1/roc_auc_macro (multi).")
    min_metric: float = Field(0.0, ge=0.0, le=1.0)
    min_retention: float = Field(0.0, ge=0.0, description="Student metric / teacher metric.")
    max_latency_ms: float | None = Field(None, gt=0, description="Student PyTorch latency, batch 1, at export.latency_seq_len.")
    min_improvement_over_champion: float = Field(0.0, description="Challenger must beat the champion's metric by this much to take its alias.")


class ExportConfig(_Section):
    opset: int = Field(18, ge=14)
    quantize: bool = True
    parity_tolerance: float = Field(1e-4, gt=0)
    max_int8_metric_drop: float = Field(0.02, ge=0)
    parity_samples: int = Field(256, ge=1)
    latency_seq_len: int = Field(128, ge=1)
    latency_runs: int = Field(20, ge=1)


def _no_password_in(url: str, key: str, instead: str) -> str:
    """Secrets never live in the config (it is logged to MLflow and passed as a pipeline parameter)."""
    if urlsplit(url).password:
        raise ValueError(f"{key} holds a password: {instead}, never in the config")
    return url


class SearchParam(_Section):
    """One hyperparameter's range: float/int (low, high, log) or categorical (choices)."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list | None = None

    @model_validator(mode="after")
    def _range(self):
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs choices")
        elif self.low is None or self.high is None or self.low > self.high or (self.log and self.low <= 0):
            raise ValueError(f"needs low <= high{' and low > 0 (log scale)' if self.log else ''}")
        return self


def _blog_space() -> dict:
    # The blog's search space.
    return {"epochs": SearchParam(type="int", low=2, high=10),
            "learning_rate": SearchParam(type="float", low=1e-5, high=1e-3, log=True),
            "alpha": SearchParam(type="float", low=0.0, high=1.0),
            "temperature": SearchParam(type="float", low=2.0, high=30.0)}


class HPOConfig(_Section):
    enabled: bool = False
    n_trials: int = Field(8, ge=1)
    timeout: float | None = Field(None, gt=0, description="Seconds per worker; then no new trial starts.")
    direction: Literal["maximize", "minimize"] = "maximize"
    metric: str = Field("auto", description="Validation metric to optimize; auto = the gate's metric.")
    pruner: Literal["median", "hyperband", "none"] = "median"
    seed: int = 42
    storage: str = Field("journal:optuna-journal.log",
                         description="journal:<file> (embedded), sqlite:///<file>, or postgresql://... (cluster)")
    study_name: str = Field("auto", description="auto: named after the config and the training data, so a "
                                                "re-run resumes its own study and new data starts a new one.")
    workers: int = Field(1, ge=1, description="Parallel worker tasks sharing the study (pipeline).")
    heartbeat_seconds: int = Field(30, ge=1, description="RDB storages: a trial silent for 3x this long is "
                                                         "failed and its params re-queued.")
    reuse_best_model: bool = Field(False, description="Ship the best trial's model instead of training again "
                                                      "with its params (same data, same teacher).")
    space: dict[str, SearchParam] = Field(default_factory=_blog_space)

    @field_validator("space")
    @classmethod
    def _known_fields(cls, space: dict) -> dict:
        unknown = sorted(set(space) - set(DistillationConfig.model_fields))
        if unknown:
            raise ValueError(f"{unknown} are not distillation settings; searchable: "
                             f"{sorted(DistillationConfig.model_fields)}")
        return space

    @field_validator("storage")
    @classmethod
    def _no_password(cls, v: str) -> str:
        return _no_password_in(v, "hpo.storage", "use storage env:OPTUNA_STORAGE, set from a Kubernetes Secret")


class TrackingConfig(_Section):
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "kdpipe"
    registered_model: str = "kdpipe-student"

    @field_validator("uri")
    @classmethod
    def _no_secrets(cls, v: str) -> str:
        return _no_password_in(v, "tracking.uri", "pass credentials as MLFLOW_TRACKING_USERNAME/"
                                                  "MLFLOW_TRACKING_PASSWORD environment variables (a Kubernetes Secret)")


class Config(_Section):
    teacher: TeacherConfig
    student: StudentConfig
    data: DataConfig
    distillation: DistillationConfig = Field(default_factory=DistillationConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    hpo: HPOConfig = Field(default_factory=HPOConfig)
    trust_remote_code: bool = False
    output_dir: str = "kdpipe-runs"

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b=c` strings; values are parsed as YAML (numbers, lists, null...)."""
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set distillation.alpha=0.7")
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (see docs/config.md for the valid keys)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def resolve_model_ref(ref: str, base: Path | None = None) -> str:
    """`module:pkg` -> pkg.get_model_path(); an existing path (relative to base) -> absolute; else a Hub id."""
    if ref.startswith("module:"):
        name = ref.removeprefix("module:")
        try:
            return str(importlib.import_module(name).get_model_path())
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"model {ref!r}: cannot import {name}.get_model_path() ({e}); pip install the package") from e
    for candidate in ([base / ref] if base else []) + [Path(ref)]:
        if candidate.exists():
            return str(candidate.resolve())
    return ref


def _resolve_paths(cfg: Config, base: Path) -> None:
    if cfg.hpo.storage.startswith("journal:"):
        cfg.hpo.storage = "journal:" + str((Path.cwd() / cfg.hpo.storage.removeprefix("journal:")).resolve())
    uri = cfg.tracking.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # Every step (a separate process, maybe elsewhere) must reach the same file.
        cfg.tracking.uri = "sqlite:///" + str((Path.cwd() / uri.removeprefix("sqlite:///")).resolve())
    cfg.teacher.model = resolve_model_ref(cfg.teacher.model, base)
    if cfg.student.model:
        cfg.student.model = resolve_model_ref(cfg.student.model, base)
    d = cfg.data
    if d.dataset is None:
        for field in ("train", "validation", "test"):
            value = getattr(d, field)
            if value is None:
                continue
            path = (base / value) if not Path(value).is_absolute() else Path(value)
            if not path.is_file():
                raise ConfigError(f"data.{field}: file not found: {path}")
            setattr(d, field, str(path.resolve()))
    if d.label_names_file:
        path = base / d.label_names_file
        if not path.is_file():
            raise ConfigError(f"data.label_names_file: file not found: {path}")
        d.label_names_file = str(path.resolve())


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, raw: dict | None = None) -> Config:
    """Load, override, validate and resolve. Relative paths are taken from the config file's folder."""
    source = str(path) if path else "dict"
    if raw is None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path}: expected a mapping of sections (teacher:, student:, data:, ...)")
    raw = apply_overrides(json.loads(json.dumps(raw)), overrides or [])
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None
    _resolve_paths(cfg, Path(path).resolve().parent if path else Path.cwd())
    return cfg


def config_from_json(text: str) -> Config:
    """The resolved config as passed between pipeline steps (already validated and resolved)."""
    try:
        return Config.model_validate(json.loads(text))
    except ValidationError as e:
        raise ConfigError(_format_errors(e, "pipeline parameter")) from None
