"""One typed config: a YAML file plus `--set a.b=c` overrides, validated before any work starts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import ClassVar, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kdpipe.errors import ConfigError
from kdpipe.sources import is_remote_model, is_url
from kdpipe.task import MULTI, SINGLE

ProblemType = Literal["auto", SINGLE, MULTI]


def _as_list(value):
    """A scalar given for a list key (`--set data.label_columns=label`) is a one-element list."""
    return [value] if isinstance(value, (str, int, float)) and not isinstance(value, bool) else value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


def _teacher_setting(name: str, value):
    """A searched teacher setting's choice as the setting takes it (YAML reads 2e-5 as a string)."""
    try:
        number = int(value) if name == "batch_size" else float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} choice {value!r} is not a number") from None
    if number <= 0 or number != float(value):
        raise ValueError(f"{name} choice {value!r} must be a positive {'whole ' if name == 'batch_size' else ''}number")
    return number


class TeacherConfig(_Section):
    """The fine-tuned (or to be fine-tuned) classifier to distil."""

    model: str = Field(description="the teacher: Hub id, local directory saved with save_pretrained, object-store "
                                   "folder (`s3://bucket/teacher/`), registered MLflow model (`models:/name@alias` or "
                                   "`models:/name/3`), or `module:<python package>` exposing get_model_path(); "
                                   "remote ones are fetched by each step that loads them")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit)")
    finetune: Literal["auto", "always", "never"] = Field(
        "auto", description="`auto`: fine-tune first only when the teacher is not yet a classifier for these labels "
                            "(no classification head, another number of labels, other label names, other problem "
                            "type); `always`; `never` (error if it is not a classifier for these labels)")
    epochs: float = Field(3.0, gt=0, description="fine-tuning epochs (at most, with early stopping)")
    early_stopping_patience: int | None = Field(
        1, ge=1, description="fine-tuning stops when the validation metric (gate.metric) has not improved for this "
                             "many epochs; the best epoch's weights are the teacher either way (null: every epoch "
                             "runs, the best is still kept)")
    learning_rate: float = Field(5e-5, gt=0, description="fine-tuning learning rate")
    batch_size: int = Field(32, ge=1, description="fine-tuning batch size")
    reuse: Literal["auto", "never"] = Field(
        "auto", description="`auto`: a teacher kdpipe fine-tuned is registered with a key of everything that decides "
                            "it (source model, fine-tuning settings, seed, data, labels, max_length) and adopted by "
                            "later runs with that key; teacher logits are stored per row and only missing rows are "
                            "computed. `never`: fine-tune and compute every row again (the results are still "
                            "recorded). `kdpipe run --force` also fine-tunes again")
    registered_model: str | None = Field(None, description="the registered model a fine-tuned teacher is recorded "
                                                           "as; default `<tracking.registered_model>-teacher`")
    logit_store: str = Field("mlflow", description="where teacher logits are stored per row: `mlflow` (the tracking "
                                                   "server's artifact store) or a folder or object-store URL "
                                                   "(`s3://bucket/kdpipe-logits/`) every pod can reach")
    search_trials: int = Field(0, ge=0, description="fine-tunings tried with settings drawn from "
                                                    "`teacher.search_space` (Optuna: every combination once when "
                                                    "all are choices, else the HPO stage's TPE sampler, seeded by "
                                                    "`hpo.seed`), each stopped early like a single one; the trial "
                                                    "best on validation is the teacher. Multiplies the fine-tune's "
                                                    "cost, paid once per teacher key. 0: off, the settings above")
    search_space: dict[str, SearchParam] = Field(
        default_factory=lambda: {"learning_rate": SearchParam(type="categorical", choices=[2e-5, 3e-5, 5e-5]),
                                 "epochs": SearchParam(type="categorical", choices=[3, 5])},
        validate_default=True,  # the default's choices as the validator makes them: the config hashes alike after
                                # travelling as JSON (a pipeline parameter)
        description="searched `teacher.*` fine-tuning settings (`learning_rate`, `epochs`, `batch_size`), each "
                    "`{type: float|int, low, high, log}` or `{type: categorical, choices}`; default: learning rate "
                    "2e-5, 3e-5 or 5e-5, epochs 3 or 5 (at most: early stopping)")
    shards: int = Field(1, ge=1, le=256, description="tasks the teacher's pass over missing rows is split into (a "
                                                     "ParallelFor, each task on the GPU pool like the training "
                                                     "steps; locally, parallel processes), then merged")

    # How the teacher's work is organised, not what it computes: left out of the config hash.
    NOT_DECIDING: ClassVar[tuple[str, ...]] = ("reuse", "logit_store", "shards")

    @field_validator("search_space")
    @classmethod
    def _searchable(cls, space: dict) -> dict:
        unknown = sorted(set(space) - {"learning_rate", "epochs", "batch_size"})
        if unknown:
            raise ValueError(f"{unknown} cannot be searched; searchable: ['batch_size', 'epochs', 'learning_rate']")
        for name, p in space.items():
            if p.type == "categorical":
                p.choices = [_teacher_setting(name, c) for c in p.choices]
            elif name == "batch_size" and p.type != "int":
                raise ValueError("batch_size is searched as `type: int` or categorical")
        return space

    @model_validator(mode="after")
    def _search_has_a_space(self):
        if self.search_trials and not self.search_space:
            raise ValueError("teacher.search_trials is set but teacher.search_space is empty")
        return self

    @field_validator("logit_store")
    @classmethod
    def _no_password(cls, v: str) -> str:
        return _no_password_in(v, "teacher.logit_store", "object-store credentials come from the environment "
                                                         "(AWS_*, a Kubernetes Secret)")


class StudentConfig(_Section):
    """The small model trained to imitate the teacher. Set exactly one of `model` or `layers`."""

    model: str | None = Field(None, description="the student: any reference `teacher.model` takes; its tokenizer "
                                                "must match the teacher's (checked before training)")
    revision: str | None = Field(None, description="Hub revision for `student.model`")
    layers: list[int] | None = Field(None, description="derive the student from the (fine-tuned) teacher, keeping "
                                                       "these encoder layers, e.g. `[0, 5]` (DistilBERT-style init: "
                                                       "embeddings, chosen layers, pooler and head copied)")

    _layers_list = field_validator("layers", mode="before")(_as_list)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.model is None) == (self.layers is None):
            raise ValueError("set exactly one of student.model (a model id or path) or student.layers (teacher layers to keep)")
        if self.layers is not None:
            if not self.layers or any(i < 0 for i in self.layers) or len(set(self.layers)) != len(self.layers):
                raise ValueError(f"student.layers must be distinct non-negative layer indices, got {self.layers}")
        return self


class DataConfig(_Section):
    """Where the texts and labels come from. The task type is inferred from the labels (one label column:
    single-label; several 0/1 columns or one list-of-labels column: multi-label) unless `problem_type` says."""

    dataset: str | None = Field(None, description="a Hub dataset id; then `train`/`validation`/`test` are split names")
    dataset_config: str | None = Field(None, description="the Hub dataset's config name (e.g. `sst2` for `glue`)")
    train: str = Field(description="training file (csv, tsv, jsonl, parquet): a path, or a URL (`s3://`, `gs://`, "
                                   "`hf://`, `https://`; credentials from the environment), or a split name")
    validation: str = Field(description="validation file (path or URL) or split name (metrics, gate, ONNX checks)")
    test: str | None = Field(None, description="optional test file or split; may be unlabelled")
    unlabeled: str | None = Field(None, description="optional texts without labels (file or split, any format above; "
                                                    "its text column is `text_column`): the teacher labels them "
                                                    "once and they join the distillation loss (soft targets only). "
                                                    "Rows whose text is also in validation or test are dropped")
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet"] = Field(
        "auto", description="`auto` (from the extension: .csv, .tsv/.txt, .jsonl/.json, .parquet), `csv`, `tsv`, "
                            "`jsonl`, `parquet`")
    header: bool = Field(True, description="whether csv/tsv files have a header row")
    column_names: list[str] | None = Field(None, description="column names for files without a header (required "
                                                             "when `header: false`)")
    text_column: str = Field("text", description="the column holding the text")
    label_columns: list[str] = Field(default_factory=lambda: ["label"], min_length=1,
                                     description="one column (single-label, or a list of labels per row) or several "
                                                 "0/1 columns (multi-label); a single name is a one-element list")
    label_names: list[str] | None = Field(None, description="label names in id order; default: the sorted values "
                                                            "seen in train (integers numerically)")
    label_names_file: str | None = Field(None, description="a file with one label name per line (e.g. GoEmotions "
                                                           "`emotions.txt`)")
    label_separator: str = Field(",", description="separator inside a one-column list of labels (`\"2,15\"`)")
    problem_type: ProblemType = Field("auto", description="`auto` infers it from the labels, or "
                                                          f"`{SINGLE}` / `{MULTI}`")
    max_train_samples: int | None = Field(None, ge=1, description="use a seeded random sample of this many "
                                                                  "training rows")
    max_eval_samples: int | None = Field(None, ge=1, description="likewise for validation and test")
    max_length: int = Field(128, ge=8, le=8192, description="truncation length in tokens; batches are padded "
                                                            "dynamically to their longest row")
    seed: int = Field(42, description="seed for the samples above and the tokenizer check's text sample")

    _lists = field_validator("label_columns", "label_names", "column_names", mode="before")(_as_list)

    @model_validator(mode="after")
    def _names(self):
        if self.label_names is not None and self.label_names_file is not None:
            raise ValueError("set data.label_names or data.label_names_file, not both")
        if not self.header and not self.column_names:
            raise ValueError("data.header is false: set data.column_names to name the file's columns")
        repeated = sorted({c for c in self.label_columns if self.label_columns.count(c) > 1})
        if repeated:
            raise ValueError(f"data.label_columns names {repeated} more than once")
        if self.text_column in self.label_columns:
            raise ValueError(f"data.text_column {self.text_column!r} is also in data.label_columns: the texts and "
                             f"the labels are different columns")
        if self.column_names and len(set(self.column_names)) != len(self.column_names):
            raise ValueError(f"data.column_names names a column more than once: {self.column_names}")
        return self


class AugmentConfig(_Section):
    """Cheap text augmentation in the spirit of Tang et al. 2019 (word masking, n-gram sampling, word dropout and
    swap). Augmented copies are unlabelled: the teacher's soft targets are their only supervision."""

    factor: int = Field(0, ge=0, description="augmented copies per training text (0: none)")
    mask_prob: float = Field(0.1, ge=0.0, le=1.0, description="each word becomes the tokenizer's mask token")
    dropout_prob: float = Field(0.05, ge=0.0, le=1.0, description="each word is dropped")
    swap_prob: float = Field(0.05, ge=0.0, le=1.0, description="each word swaps places with the next")
    ngram_prob: float = Field(0.25, ge=0.0, le=1.0, description="the copy is cut to a random n-gram of it "
                                                                 "(n from 1 to 5)")
    seed: int = Field(42, description="augmentation seed")


def loss_kind(name: str) -> str:
    """`logit` or `feature`: what the loss registered under `name` (kdpipe.losses, the one list of losses)
    compares. `auto` (the task's logit loss) is known without importing torch."""
    if name == "auto":
        return "logit"
    from kdpipe.losses import FEATURES, LOSSES

    if name in LOSSES:
        return "logit"
    if name in FEATURES:
        return "feature"
    raise ValueError(f"unknown loss {name!r}; registered in kdpipe.losses: logit losses {sorted(LOSSES)} (or auto), "
                     f"feature losses {sorted(FEATURES)}")


def _registered_loss(name: str) -> str:
    loss_kind(name)
    return name


def _logit_loss(name: str) -> str:
    if loss_kind(name) != "logit":
        raise ValueError(f"{name!r} is a feature loss: give it as a term of distillation.losses")
    return name


class LossTerm(_Section):
    """One term of the distillation loss, from the registry in kdpipe.losses."""

    name: str = Field(
        description="`auto` / `softmax_kl` / `sigmoid_bce`: the logit loss (alpha, temperature); `hidden_mse`: MSE "
                    "between mapped hidden states (a learned linear projection when the widths differ); "
                    "`attention_kl`: KL between mapped layers' attention distributions")
    weight: float = Field(1.0, ge=0.0, description="the term's weight in the sum")
    alpha: float | None = Field(None, ge=0.0, le=1.0, description="logit losses: default `distillation.alpha`")
    temperature: float | None = Field(None, gt=0.0, description="logit losses: default `distillation.temperature`")
    layer_map: dict[int, int] | None = Field(None, description="feature losses: default `distillation.layer_map`")

    _registered = field_validator("name")(_registered_loss)

    @property
    def logit(self) -> bool:
        return loss_kind(self.name) == "logit"

    @property
    def uses_teacher_logits(self) -> bool:
        """A logit term with a soft part (alpha < 1; alpha filled in by DistillationConfig.loss_terms)."""
        return self.logit and self.weight > 0 and self.alpha < 1.0

    @property
    def uses_teacher_features(self) -> bool:
        return not self.logit and self.weight > 0

    @model_validator(mode="after")
    def _settings(self):
        logit = self.logit
        wrong = [k for k in (("layer_map",) if logit else ("alpha", "temperature")) if getattr(self, k) is not None]
        if wrong:
            raise ValueError(f"{self.name} takes no {', '.join(wrong)}")
        return self


class DistillationConfig(_Section):
    """The student's training: loss = alpha * hard-label loss + (1 - alpha) * T^2 * soft loss against the teacher
    (the blog's loss), optionally with intermediate-layer terms (`losses`) and a transfer set (`augment`,
    `data.unlabeled`)."""

    loss: str = Field(
        "auto", description="a registered logit loss: `softmax_kl` (single-label) or `sigmoid_bce` (multi-label), or "
                            "one you register in kdpipe.losses; `auto` picks the task's")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the hard-label loss; `1 - alpha` weighs the "
                                                          "teacher term")
    temperature: float = Field(4.0, gt=0.0, description="softening temperature T; the teacher term is scaled by T²")
    epochs: float = Field(3.0, gt=0, description="training epochs (may be fractional)")
    learning_rate: float = Field(6e-5, gt=0, description="AdamW learning rate, linear decay")
    batch_size: int = Field(32, ge=1, description="per-device batch size")
    eval_batch_size: int = Field(128, ge=1, description="batch size for evaluation and teacher logits")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step (the loss is "
                                                                  "scaled so that 4 x 8 updates like 32)")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    warmup: float = Field(0.0, ge=0, description="warmup: a ratio of the training steps (< 1) or a number of steps")
    teacher_logits: Literal["cached", "online"] = Field(
        "cached", description="`cached`: the teacher runs once over the training set and its logits are an artifact; "
                              "`online`: the teacher runs on every training batch (the blog's way)")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field(
        "auto", description="`auto` (bf16 on GPUs that support it, else fp16; none on CPU), `no`, `fp16`, `bf16`")
    seed: int = Field(42, description="training seed")
    group_by_length: bool = Field(True, description="batch rows of similar length together (less padding, faster "
                                                    "epochs)")
    dataloader_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    processes: Literal["auto"] | int = Field(
        "auto", description="training processes in a training step's pod (teacher fine-tuning and distillation run "
                            "data parallel under torchrun, the Trainer's DDP; `batch_size` stays the global batch): "
                            "`auto` is one per GPU the pod sees (`--gpus N`), 1 on CPU; a number > 1 on CPU uses "
                            "the gloo backend. HPO trials train in one process")

    @field_validator("processes")
    @classmethod
    def _positive(cls, v):
        if v != "auto" and v < 1:
            raise ValueError("must be `auto` or at least 1")
        return v
    losses: list[LossTerm] | None = Field(
        None, description="the loss as a weighted sum of registered terms, e.g. `[{name: auto}, {name: hidden_mse, "
                          "weight: 1}]`; default: the logit loss alone (`loss`, `alpha`, `temperature`). A feature "
                          "term makes the teacher run online (its hidden states are not cached)")
    layer_map: dict[int, int] | None = Field(
        None, description="student layer -> teacher layer for feature losses, counted from 1 (0 = the embeddings); "
                          "default uniform (2 layers from 6: {1: 3, 2: 6})")
    _logit = field_validator("loss")(_logit_loss)
    augment: AugmentConfig = Field(default_factory=AugmentConfig,
                                   description="augmented copies of the training texts for the transfer set")

    @model_validator(mode="after")
    def _terms(self):
        if self.losses is not None and not any(t.logit for t in self.losses):
            raise ValueError("distillation.losses needs a logit loss term (`auto`, `softmax_kl` or `sigmoid_bce`): "
                             "the student is trained to classify")
        return self

    def with_params(self, params: dict | None) -> "DistillationConfig":
        """These settings with some overridden (an HPO trial's, a benchmark variant's), validated again."""
        return DistillationConfig.model_validate({**self.model_dump(), **(params or {})}) if params else self

    def loss_terms(self) -> list[LossTerm]:
        """The terms with their defaults filled in."""
        terms = self.losses if self.losses is not None else [LossTerm(name=self.loss)]
        return [t.model_copy(update=({"alpha": self.alpha if t.alpha is None else t.alpha,
                                      "temperature": self.temperature if t.temperature is None else t.temperature}
                                     if t.logit else
                                     {"layer_map": self.layer_map if t.layer_map is None else t.layer_map}))
                for t in terms]

    @property
    def needs_teacher_features(self) -> bool:
        return any(t.uses_teacher_features for t in self.loss_terms())

    @property
    def teacher_mode(self) -> str:
        """How the teacher takes part: `cached` logits, `online` (configured, or a feature loss needs its hidden
        states or attentions, which are not cached), or `none` (alpha 1 and no feature loss)."""
        soft = any(t.uses_teacher_logits for t in self.loss_terms())
        if self.needs_teacher_features or (soft and self.teacher_logits == "online"):
            return "online"
        return "cached" if soft else "none"


class MetricsConfig(_Section):
    """Metrics: single-label `accuracy`, `macro_f1`; multi-label `micro_f1`, `macro_f1`, `subset_accuracy`,
    `roc_auc_<label>` per label (where the split has both classes) and `roc_auc_macro`."""

    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="multi-label decision threshold on sigmoid scores "
                                                              "(the default of every label when thresholds are not "
                                                              "tuned, or for a label with no positive validation row)")
    tune_thresholds: bool = Field(True, description="multi-label: each label's threshold is the one that maximizes "
                                                    "its F1 on validation (student's scores); shipped in the model's "
                                                    "metadata and used by the gate, `kdpipe predict` and serving")


class GateConfig(_Section):
    """What a student must show to be exported and registered."""

    metric: str = Field("auto", description="the metric compared: `accuracy` (single-label) / `micro_f1` "
                                            "(multi-label) by default, or any metric name under `metrics`; it also "
                                            "judges the int8 model at export")
    min_metric: float = Field(0.0, ge=0.0, le=1.0, description="the student's metric must be at least this")
    min_retention: float = Field(0.0, ge=0.0, description="student metric / teacher metric must be at least this")
    max_latency_ms: float | None = Field(None, gt=0, description="the student's PyTorch latency on CPU at batch 1, "
                                                                 "`export.latency_seq_len` tokens, must be at most "
                                                                 "this (measured by the distillation step)")
    min_improvement_over_champion: float = Field(0.0, description="a passing student takes the `champion` alias only "
                                                                  "if it beats the current champion by this much, "
                                                                  "both scored on this run's evaluation rows; "
                                                                  "otherwise it is registered as `challenger`")
    require_significance: bool = Field(False, description="taking the `champion` alias also needs the paired test "
                                                          "to find the challenger better at `significance_level` "
                                                          "(McNemar for accuracy, a paired bootstrap interval "
                                                          "otherwise)")
    significance_level: float = Field(0.05, gt=0.0, lt=0.5, description="level of the paired test against the "
                                                                         "champion")
    bootstrap_samples: int = Field(1000, ge=100, description="resamples of the paired bootstrap (metrics other than "
                                                             "accuracy)")
    min_teacher_agreement: float | None = Field(
        None, ge=0.0, le=1.0,
        description="the student must decide as the teacher on at least this fraction of evaluation rows (top-1; "
                    "every label, multi-label)")
    max_calibration_error: float | None = Field(
        None, ge=0.0, le=1.0,
        description="the student's expected calibration error (15 bins) on the evaluation rows must be at most this")
    champion_comparison: Literal["labelled", "teacher_judged", "both"] = Field(
        "labelled", description="what decides the champion alias: the labelled comparison on the evaluation rows, "
                                "the teacher-judged one (challenger and champion against the teacher's decisions on "
                                "the recent texts a drift-triggered retrain held out; McNemar, same improvement and "
                                "significance settings), or both. Either is shown when measured")


class ExportConfig(_Section):
    """The ONNX export of a student that passed the gate, and its checks."""

    opset: int = Field(18, ge=14, description="ONNX opset")
    fuse: bool = Field(True, description="apply ONNX Runtime's transformer fusions (attention, embedding and skip "
                                         "layer norms, bias GELU: what Optimum's optimization level 2 does) to BERT-"
                                         "like students before the parity check and quantization")
    quantize: bool = Field(True, description="also write `model.int8.onnx`: the int8 variant the export search "
                                             "chooses (export.search)")
    search: Literal["off", "fast", "full"] = Field(
        "fast", description="int8 variants tried, each timed on the step's CPU at search_batch_sizes and judged "
                            "by the gate's metric and its label flips; the fastest inside max_int8_metric_drop and "
                            "the flip budget ships. off: dynamic per-channel int8 of the fused graph only; fast: "
                            "also of the lean graph (no SkipLayerNormalization, BiasGelu) and of the unfused one "
                            "(2-17 s more than off: the demo, and a 2-layer MiniLM student judged on 872 rows); "
                            "full: also static int8 calibrated on training rows, and the reference with its most "
                            "sensitive layer kept in fp32 (28-66 s more; docs/benchmarks.md (b))")
    search_batch_sizes: list[int] = Field([1, 32], min_length=1, description="batch sizes each variant is timed "
                                                                              "at; the speed compared is the "
                                                                              "geometric mean of its times as a "
                                                                              "fraction of fp32's")
    calibration_rows: int = Field(256, ge=1, description="training rows that calibrate static int8 (search: full)")

    @field_validator("search", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        return "off" if v is False else v  # YAML reads a bare `off` (in a file or --set) as false
    parity_tolerance: float = Field(1e-4, gt=0, description="maximum absolute logit difference between ONNX and "
                                                            "PyTorch on validation rows; above it the export fails "
                                                            "and nothing is kept")
    max_int8_metric_drop: float = Field(0.02, ge=0, description="the int8 model is dropped if the gate's metric falls "
                                                                "more than this below fp32")
    max_int8_label_flip_rate: float | None = Field(
        None, ge=0, le=1,
        description="an int8 variant is also dropped if more than this fraction of evaluation rows change their "
                    "decision from fp32; null: no more than the reference variant's (fused graph, dynamic int8: "
                    "what search off ships), which itself is then bounded by max_int8_metric_drop only")
    parity_samples: int = Field(256, ge=1, description="validation rows used for the parity check")
    latency_seq_len: int = Field(128, ge=1, description="sequence length for latency measurements")
    latency_runs: int = Field(20, ge=1, description="timed runs per latency figure (median reported)")


class ServingConfig(_Section):
    """What the registered model does when served (`mlflow models serve`, KServe): recorded in its model_config,
    and changed per deployment without retraining (`SERVING_MODEL_CONFIG`, `kdpipe deploy --log-requests`). Not
    part of the config hash."""

    log_requests: str | None = Field(None, description="record a sample of served requests (text, labels, scores, "
                                                       "model version, time) as JSON lines: a file (appended), a "
                                                       "folder ending in `/` or an object-store URL "
                                                       "(`s3://bucket/logs/`: part files). Written off the request "
                                                       "path; a failing target loses rows, never a request. "
                                                       "Readable as `data.unlabeled` as they are")
    log_sample_rate: float = Field(1.0, ge=0, le=1, description="the fraction of served texts recorded")

    @field_validator("log_requests")
    @classmethod
    def _no_secrets(cls, v: str | None) -> str | None:
        return v and _no_password_in(v, "serving.log_requests", "object-store credentials come from the "
                                                                "environment (a Kubernetes Secret)")


class DriftConfig(_Section):
    """Drift judged by the teacher: the champion against its teacher on recent texts without labels (`kdpipe drift`,
    and the pipeline's preprocess step when `drift.texts` is set), compared with the same figures on the rows it was
    judged on when it was registered. Decides when to retrain, not what: not part of the config hash."""

    texts: str = Field("", description="recent texts a pipeline run checks for drift before it decides whether to "
                                       "retrain (a request log folder, a file, a URL; the text column is "
                                       "data.text_column); when the champion has drifted the run retrains even on "
                                       "unchanged data, with these texts in its transfer set. Empty: no check")
    sample: int = Field(10_000, ge=1, description="recent texts drawn (seeded) from the file or log given")
    max_disagreement_increase: float = Field(0.05, ge=0, le=1,
                                             description="drift when the champion disagrees with its teacher this "
                                                         "much more often (a fraction of rows) than at registration")
    max_psi: float | None = Field(0.25, ge=0, description="drift also when the population stability index of the "
                                                          "champion's top score exceeds this (null: not used)")
    max_teacher_psi: float | None = Field(0.2, ge=0, description="drift also when the population stability index of "
                                                                 "the teacher's top score exceeds this: the teacher "
                                                                 "is more (or less) sure of recent texts than of "
                                                                 "the champion's, a new domain (null: not used)")
    holdout: float = Field(0.2, gt=0, lt=1, description="share of the recent texts a drift-triggered retrain holds "
                                                        "out of training: the gate's teacher-judged comparison and "
                                                        "the new champion's drift baseline are measured on them")
    max_transfer_texts: int = Field(10_000, ge=0, description="at most this many recent texts join the transfer set "
                                                              "of a drift-triggered retrain (deduplicated; none that "
                                                              "is a training, validation or test text)")


def _no_password_in(url: str, key: str, instead: str) -> str:
    """Secrets never live in the config (it is logged to MLflow and passed as a pipeline parameter)."""
    if urlsplit(url).password:
        raise ValueError(f"{key} holds a password: {instead}, never in the config")
    return url


def _blog_space() -> dict:
    # The blog's search space.
    return {"epochs": SearchParam(type="int", low=2, high=10),
            "learning_rate": SearchParam(type="float", low=1e-5, high=1e-3, log=True),
            "alpha": SearchParam(type="float", low=0.0, high=1.0),
            "temperature": SearchParam(type="float", low=2.0, high=30.0)}


class HPOConfig(_Section):
    """Optuna search over `distillation.*` settings, as the pipeline's HPO stage: `hpo.workers` worker tasks
    (a ParallelFor) share one study, then `hpo-best` hands the best trial's params to the final distillation.
    Trials reuse the tokenized data and the cached teacher logits: no teacher forward, no re-tokenization.
    A trial whose training loss becomes NaN/inf or that runs out of memory is recorded as pruned, with the reason
    in its `stopped` attribute; the study goes on. Setting `hpo.*` with `--set` while `hpo.enabled` is false is
    refused (it would have no effect)."""

    enabled: bool = Field(False, description="run the search before the final distillation")
    n_trials: int = Field(8, ge=1, description="finished trials (complete, pruned, or failed with an error) the "
                                               "study should hold; a resumed study runs only the missing ones")
    timeout: float | None = Field(None, gt=0, description="seconds per worker after which no new trial starts")
    direction: Literal["maximize", "minimize"] = Field("maximize", description="`maximize` or `minimize` the metric")
    metric: str = Field("auto", description="validation metric to optimize; `auto` = the gate's metric")
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median", description="`median`, `hyperband` or `none`; trials report the metric after every epoch")
    seed: int = Field(42, description="TPE sampler seed (worker *k* uses seed + *k*, so workers do not draw the "
                                      "same trials)")
    storage: str = Field("journal:optuna-journal.log",
                         description="`journal:<file>` (embedded default; safe for several local processes), "
                                     "`sqlite:///<file>`, `postgresql://host/db` (cluster; no password here), or "
                                     "`env:<VAR>` to read the URL from an environment variable (a Kubernetes Secret)")
    study_name: str = Field("auto", description="`auto` names the study after the config and the training data's "
                                                "fingerprint: re-running the same search resumes it (completed "
                                                "trials are kept), new data starts a new study. Any other name is "
                                                "used as is")
    workers: int = Field(1, ge=1, description="parallel worker tasks sharing the study (`kdpipe run` passes the "
                                              "pipeline parameter `hpo_workers: [0..workers-1]`)")
    heartbeat_seconds: int = Field(30, ge=1, description="RDB storages (SQLite, PostgreSQL): each running trial "
                                                         "beats this often; one silent for 3x as long (its worker "
                                                         "died) is failed and its params re-queued, so the study "
                                                         "still ends with `n_trials`. On the journal file a live "
                                                         "worker on the same machine sees a dead worker's process "
                                                         "gone instead")
    reuse_best_model: bool = Field(False, description="ship the best trial's model instead of training again with "
                                                      "its params: each trial then logs its model to its MLflow "
                                                      "trial run, and `hpo-best` hands the best one on when it ran "
                                                      "in this pipeline run (same data, same teacher); otherwise "
                                                      "the student is trained again and the log says why")
    space: dict[str, SearchParam] = Field(default_factory=_blog_space,
                                          description="searched `distillation.*` settings, each `{type: float|int, "
                                                      "low, high, log}` or `{type: categorical, choices}`; default: "
                                                      "the blog's epochs 2-10, learning rate 1e-5..1e-3 (log), alpha "
                                                      "0-1, temperature 2-30")

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
    """MLflow: one parent run per pipeline run, a child run per step, the Model Registry."""

    uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI; a relative SQLite path is taken from "
                                                        "the current directory. Credentials never go here: set "
                                                        "`MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD` (or "
                                                        "`MLFLOW_TRACKING_TOKEN`) in the environment, from a "
                                                        "Kubernetes Secret on a cluster. A URI with a password is "
                                                        "rejected")
    experiment: str = Field("kdpipe", description="MLflow experiment")
    registered_model: str = Field("kdpipe-student", description="registered model name in the MLflow Model Registry")
    tags: dict[str, str] = Field(default_factory=dict, description="tags set on each pipeline run's parent run "
                                                                   "(`--set tracking.tags.team=nlp`); not part of "
                                                                   "the config hash")
    keep_checkpoints: bool = Field(True, description="keep each training step's last epoch checkpoint on its MLflow "
                                                     "run until the step succeeds, so that a killed or retried run "
                                                     "with the same config and data resumes from it (costs one "
                                                     "upload of the model and optimizer state per epoch)")

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
    serving: ServingConfig = Field(default_factory=ServingConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    trust_remote_code: bool = Field(False, description="allow models/tokenizers that run their own code from the "
                                                       "Hub. Off unless you set it")
    output_dir: str = Field("kdpipe-runs", description="where `kdpipe run` puts the KFP pipeline root and "
                                                       "`summary.json`")

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def input_files(self) -> list[tuple[str, str]]:
        """The data files the config names, as (key, path or URL): THE list that path resolution, pre-flight,
        `--runner docker`'s mounts and `kdpipe submit`'s portability check go through. With `data.dataset` the
        split keys name splits of a Hub dataset, not files."""
        d = self.data
        keys = [] if d.dataset else ["train", "validation", "test", "unlabeled"]
        files = [(f"data.{k}", getattr(d, k)) for k in keys + ["label_names_file"] if getattr(d, k)]
        return files + [("drift.texts", self.drift.texts)] * bool(self.drift.texts)

    def input_models(self) -> list[tuple[str, str]]:
        """The models the config names, as (key, reference)."""
        return [(k, ref) for k, ref in (("teacher.model", self.teacher.model), ("student.model", self.student.model))
                if ref]

    def set_key(self, key: str, value) -> None:
        """Set a dotted key (`data.train`), validated."""
        section, _, name = key.rpartition(".")
        setattr(getattr(self, section) if section else self, name, value)

    def hash(self) -> str:
        """What decides the result: tags only label the run."""
        settings = self.to_dict()
        settings["tracking"].pop("tags")
        settings.pop("output_dir", None)  # where a local run writes its files
        settings.pop("serving")  # how the model is served, changed per deployment
        settings.pop("drift")  # when to retrain, not what
        for key in TeacherConfig.NOT_DECIDING:
            settings["teacher"].pop(key)
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


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
    """One line per problem (a single problem: one line in all)."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (see docs/config.md for the valid keys)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"{where}: {msg}")
    if len(lines) == 1:
        return f"invalid config ({source}): {lines[0]}"
    return "\n  ".join([f"invalid config ({source}):", *lines])


def resolve_model_ref(ref: str, base: Path | None = None) -> str:
    """An existing path (relative to base) -> absolute. Anything else is left as given: a Hub id, or a reference
    the step that loads it fetches (module:, models:/, a URL; see kdpipe.sources)."""
    if is_remote_model(ref):
        return ref
    for candidate in ([base / ref] if base else []) + [Path(ref)]:
        if candidate.exists():
            return str(candidate.resolve())
    return ref


def _resolve_paths(cfg: Config, base: Path, overridden: set[str]) -> None:
    """Relative paths: from the config file's folder, or from the current directory for a `--set` value."""
    def origin(key: str) -> Path:
        return Path.cwd() if key in overridden else base

    if cfg.hpo.storage.startswith("journal:"):
        cfg.hpo.storage = "journal:" + str((Path.cwd() / cfg.hpo.storage.removeprefix("journal:")).resolve())
    store = cfg.teacher.logit_store
    if store != "mlflow" and "://" not in store:  # a folder: every step must reach the same one
        cfg.teacher.logit_store = str((Path.cwd() / store).resolve())
    uri = cfg.tracking.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # Every step (a separate process, maybe elsewhere) must reach the same file.
        cfg.tracking.uri = "sqlite:///" + str((Path.cwd() / uri.removeprefix("sqlite:///")).resolve())
    for key, ref in cfg.input_models():
        cfg.set_key(key, resolve_model_ref(ref, origin(key)))
    for key, value in cfg.input_files():
        if is_url(value):  # a URL is fetched by the step that reads it
            continue
        path = origin(key) / value
        if not path.exists():  # a file, or a folder of part files (a request log)
            raise ConfigError(f"{key}: file not found: {path}")
        cfg.set_key(key, str(path.resolve()))


def _refuse_inert_overrides(raw: dict, overrides: list[str]) -> None:
    """An hpo.* override without hpo.enabled would be silently ignored: say so instead."""
    inert = [o.partition("=")[0].strip() for o in overrides
             if o.strip().startswith("hpo.") and not o.strip().startswith("hpo.enabled")]
    if inert and not (raw.get("hpo") or {}).get("enabled"):
        raise ConfigError(f"--set {', '.join(inert)}: no effect while hpo.enabled is false; "
                          f"add --set hpo.enabled=true to run the search")


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
    _refuse_inert_overrides(raw, overrides or [])
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None
    overridden = {o.partition("=")[0].strip() for o in overrides or []}
    _resolve_paths(cfg, Path(path).resolve().parent if path else Path.cwd(), overridden)
    return cfg


def config_from_json(text: str) -> Config:
    """The resolved config as passed between pipeline steps (already validated and resolved)."""
    try:
        return Config.model_validate(json.loads(text))
    except ValidationError as e:
        raise ConfigError(_format_errors(e, "pipeline parameter")) from None
