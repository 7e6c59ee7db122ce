"""Load, validate and tokenize the data once; infer the label schema; fingerprint the result.

Files are read through 🤗 datasets (csv/tsv/json lines/parquet builders, or a Hub dataset), so every error
names the file, column and row it is about."""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdpipe.artifacts import Prepared
from kdpipe.config import Config, DataConfig
from kdpipe.errors import DataError
from kdpipe.sources import fetch_file, is_url, local_model
from kdpipe.task import MULTI, SINGLE, LabelSchema

SPLITS = ("train", "validation", "test")
TRANSFER = "transfer"  # unlabelled rows the teacher labels for distillation: data.unlabeled + augmented train texts
RECENT = "recent"  # recent texts a drift-triggered retrain holds out: the teacher-judged comparison, the baseline


@dataclass
class RawSplit:
    """One split as read: a datasets.Dataset plus where it came from, for error messages."""

    name: str
    source: str
    rows: object  # datasets.Dataset

    def column(self, name: str) -> list:
        return self.rows[name]

    @property
    def columns(self) -> list[str]:
        return self.rows.column_names


# ---------------------------------------------------------------- reading

def _file_format(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = Path(path).suffix.lower()
    known = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
    if suffix not in known:
        raise DataError(f"{path}: cannot tell the format from the extension {suffix!r}; set data.format (csv, tsv, jsonl, parquet)")
    return known[suffix]


def _root_cause(e: BaseException) -> BaseException:
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    return e


ENCODING = "utf-8-sig"  # UTF-8, with or without the byte-order mark spreadsheets write


def _builder_args(path: str, fmt: str, cfg: DataConfig) -> tuple[str, dict]:
    if fmt in ("jsonl", "parquet"):
        return ("json" if fmt == "jsonl" else "parquet"), {}
    import datasets

    sep = "," if fmt == "csv" else "\t"
    names = None if cfg.header else list(cfg.column_names)
    # pandas shifts a row with one field too many into an index, or drops extra fields, without an error: count
    # every row's fields first (the csv module, in C: a fraction of a second for SST-2).
    with open(path, newline="", encoding=ENCODING) as f:
        for i, row in enumerate(csv.reader(f, delimiter=sep)):
            if names is None:
                names = row
                _check_header(path, names)
            elif row and len(row) != len(names):
                raise DataError(f"{path}: row {i + 1 - cfg.header} (data rows counted from 1) has {len(row)} fields "
                                f"where the {'header' if cfg.header else 'data.column_names'} has {len(names)}; "
                                f"quote fields that contain {sep!r} or line breaks, or check data.format")
    # Every column as text (labels are parsed later, with their row): pandas would otherwise guess per chunk.
    # keep_default_na=False: a literal "NA"/"null" review is text, not missing.
    return "csv", {"sep": sep, "header": 0 if cfg.header else None, "column_names": None if cfg.header else names,
                   "keep_default_na": False, "na_values": [""], "encoding": ENCODING, "index_col": False,
                   "features": datasets.Features({n: datasets.Value("string") for n in names or []})}


def _check_header(path: str, names: list[str]) -> None:
    """Every column named, once (read by name, a repeated column would silently hide the other)."""
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"{path}: the header names column(s) {repeated} more than once ({names}); give each column "
                        f"its own name")
    unnamed = [i + 1 for i, n in enumerate(names) if not n.strip()]
    if unnamed:
        raise DataError(f"{path}: the header leaves column(s) {unnamed} (counted from 1) without a name ({names}); "
                        f"name them, or remove a trailing separator")


def read_table(path: str, cfg: DataConfig, key: str = "data file"):
    """One data file as a datasets.Dataset: a local path, or a URL (s3://, gs://, hf://, https://) fetched first;
    or a folder of such files in one format (a path or URL ending in `/`, or a local directory: request-log parts),
    read as one table. Every message names the file as configured."""
    if path.endswith("/") or (not is_url(path) and Path(path).is_dir()):
        return _read_folder(path, cfg, key)
    if not is_url(path):
        return _read_local_table(path, cfg)
    local = fetch_file(path, key)
    try:
        return _read_local_table(local, cfg)
    except DataError as e:
        raise DataError(str(e).replace(local, path)) from None


def _read_folder(path: str, cfg: DataConfig, key: str):
    import datasets

    known = (".csv", ".tsv", ".txt", ".jsonl", ".json", ".parquet")
    if is_url(path):
        from kdpipe.sources import explain, filesystem

        fs, root = filesystem(path, key)
        try:
            names = [fs.unstrip_protocol(n) for n in fs.ls(root, detail=False)]
        except Exception as e:  # noqa: BLE001 (every object-store failure becomes one line naming the key and URL)
            raise DataError(f"{key} {path}: {explain(e)}") from None
    else:
        if not Path(path).is_dir():
            raise DataError(f"{key} {path}: folder not found")
        names = [str(p) for p in Path(path).iterdir() if p.is_file()]
    files = sorted(n for n in names if n.lower().endswith(known) and not Path(n).name.startswith("."))
    if not files:
        raise DataError(f"{key} {path}: a folder without data files ({', '.join(known)}); name a file or a folder "
                        f"that holds some")
    if len({_file_format(f, cfg.format) for f in files}) > 1:
        raise DataError(f"{key} {path}: its files are in more than one format ({', '.join(Path(f).name for f in files[:5])}"
                        f"...); keep one format per folder")
    import pyarrow as pa

    # Arrow unifies what the files' type inference left apart (a column null in one part, strings in another).
    tables = [read_table(f, cfg, key).data.table for f in files]
    return datasets.Dataset(pa.concat_tables(tables, promote_options="permissive"))


def _read_local_table(path: str, cfg: DataConfig):
    import datasets

    fmt = _file_format(path, cfg.format)
    if not Path(path).is_file():
        raise DataError(f"{path}: file not found")
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its own error line would repeat ours
    try:
        builder, kwargs = _builder_args(path, fmt, cfg)
        rows = datasets.load_dataset(builder, data_files=path, split="train", **kwargs)
    except DataError:
        raise
    except Exception as e:  # datasets wraps pandas/arrow/decoding errors; the root says what is wrong
        cause = _root_cause(e)
        if "corresponds to no data" in str(cause):  # a header and no rows: the split check names it
            return datasets.Dataset.from_dict({n: [] for n in kwargs.get("features") or {}})
        if isinstance(cause, UnicodeDecodeError):
            guess = "utf-16" if cause.object[:2] in (b"\xff\xfe", b"\xfe\xff") else "latin1"
            raise DataError(f"{path}: not UTF-8 text (byte {cause.object[cause.start]:#04x} at offset {cause.start}); "
                            f"kdpipe reads UTF-8: convert the file, e.g. `iconv -f {guess} -t utf-8`") from None
        if fmt == "jsonl":
            _name_bad_json_line(path)
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        raise DataError(f"{path}: cannot read it as {fmt} ({type(cause).__name__}: {first}); "
                        f"check data.format / data.header / data.column_names") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
    if cfg.column_names and not cfg.header and fmt in ("jsonl", "parquet"):
        rows = rows.rename_columns(dict(zip(rows.column_names, cfg.column_names)))
    return rows


def _name_bad_json_line(path: str) -> None:
    """A JSON-lines file that does not load: the first line that is not a JSON object, named (a whole-file JSON
    array loads, and is left to the loader's message)."""

    with open(path, encoding=ENCODING) as f:
        if f.read(1) == "[":
            return
        f.seek(0)
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ok = isinstance(json.loads(line), dict)
            except ValueError as e:
                raise DataError(f"{path}: line {i} is not valid JSON ({e}); each line must be one JSON object") from None
            if not ok:
                raise DataError(f"{path}: line {i} is not a JSON object; each line must be one object of columns")


def _read_hub_split(cfg: DataConfig, split: str):
    import datasets

    try:
        return datasets.load_dataset(cfg.dataset, cfg.dataset_config, split=split)
    except Exception as e:  # the Hub raises many types; all mean "cannot load this split"
        raise DataError(f"dataset {cfg.dataset!r} (config {cfg.dataset_config!r}) split {split!r}: cannot load it "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); check data.dataset, "
                        f"data.dataset_config and the split names, and that the Hub is reachable") from None


def _declared_names(rows, column: str) -> list[str] | None:
    """Label names a dataset declares: a ClassLabel, or a Sequence of ClassLabel (multi-label)."""
    feature = rows.features.get(column)
    inner = getattr(feature, "feature", None)
    for f in (feature, inner):
        if hasattr(f, "names"):
            return list(f.names)
    return None


def read_split(cfg: DataConfig, name: str) -> RawSplit:
    where = getattr(cfg, name)
    if cfg.dataset:
        return RawSplit(name, f"{cfg.dataset}[{where}]", _read_hub_split(cfg, where))
    return RawSplit(name, where, read_table(where, cfg, f"data.{name}"))


def read_splits(cfg: DataConfig) -> tuple[dict[str, RawSplit], list[str] | None]:
    """Read every configured split; returns the splits and any label names the source declares."""
    splits = {name: read_split(cfg, name) for name in SPLITS if getattr(cfg, name) is not None}
    declared = None
    if len(cfg.label_columns) == 1 and cfg.label_columns[0] in splits["train"].columns:
        declared = _declared_names(splits["train"].rows, cfg.label_columns[0])
    return splits, declared


def declared_label_names(cfg: DataConfig) -> list[str] | None:
    if cfg.label_names is not None:
        return list(cfg.label_names)
    if cfg.label_names_file:
        source = cfg.label_names_file
        local = fetch_file(source, "data.label_names_file") if is_url(source) else source
        names = [line.strip() for line in Path(local).read_text().splitlines() if line.strip()]
        if not names:
            raise DataError(f"{cfg.label_names_file}: no label names in it (one name per line)")
        return names
    return None


# ---------------------------------------------------------------- validation

def _row_hint(split: RawSplit, i: int, cfg: DataConfig) -> str:
    text = split.rows[i][cfg.text_column] if cfg.text_column in split.columns else None
    shown = repr(text)[:80] if isinstance(text, str) else repr(text)
    return f"row {i + 1} (data rows counted from 1), text={shown}"


def check_columns(split: RawSplit, cfg: DataConfig, need_labels: bool = True) -> None:
    """The configured columns are there (a near miss is named, and a header that is a row of data)."""
    if len(split.rows) == 0:
        raise DataError(f"{split.source}: the {split.name} split is empty (no data rows)")
    columns = split.columns
    need = [cfg.text_column] + (cfg.label_columns if need_labels else [])
    missing = [c for c in need if c not in columns]
    if not missing:
        return
    hints = []
    for c in missing:
        near = ([x for x in columns if x.strip().lower() == c.strip().lower()]
                or difflib.get_close_matches(c, columns, 1, 0.75))
        if near:
            hints.append(f"{c!r} is not {near[0]!r} (names are compared exactly)")
    if cfg.header and any(len(c) > 40 or c.count(" ") >= 3 or isinstance(_canonical(c), int) for c in columns):
        hints.append("the first row looks like data, not a header: for a file without a header set data.header: "
                     "false and data.column_names")
    raise DataError(f"{split.source}: column(s) {missing} not found; the file has columns {columns}. "
                    + ("; ".join(hints) + ". " if hints else "")
                    + "Set data.text_column / data.label_columns (or data.column_names for a file without a header).")


def check_texts(split: RawSplit, cfg: DataConfig) -> list[str]:
    texts = split.column(cfg.text_column)
    if all(_is_number(t) for t in texts):  # a csv column is read as text: "1", "0", ... is not what to classify
        raise DataError(f"{split.source}: column {cfg.text_column!r} holds only numbers ({_row_hint(split, 0, cfg)}). "
                        f"Is data.text_column the column that holds the texts (columns: {split.columns})?")
    for i, t in enumerate(texts):
        if isinstance(t, (int, float, bool, np.number)) and not _missing(t):
            raise DataError(f"{split.source}: column {cfg.text_column!r}, {_row_hint(split, i, cfg)}: a number, not "
                            f"text. Is data.text_column the column that holds the texts (columns: {split.columns})?")
        if not isinstance(t, str) or not t.strip():
            raise DataError(f"{split.source}: column {cfg.text_column!r}, {_row_hint(split, i, cfg)}: empty or missing text. "
                            f"Remove the row or fill in the text.")
    return list(texts)


def _is_number(v) -> bool:
    if isinstance(v, str):
        try:
            float(v)
        except ValueError:
            return False
        return True
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _split_items(v, sep: str) -> list:
    if isinstance(v, (list, tuple, np.ndarray)):
        return list(v)
    if isinstance(v, str):
        return [p.strip() for p in v.split(sep) if p.strip()]
    return [v]


def infer_problem_type(train: RawSplit, cfg: DataConfig) -> str:
    if cfg.problem_type != "auto":
        return cfg.problem_type
    if len(cfg.label_columns) > 1:
        return MULTI
    values = train.column(cfg.label_columns[0])
    if any(isinstance(v, (list, tuple)) or (isinstance(v, str) and cfg.label_separator in v) for v in values):
        return MULTI
    return SINGLE


def _canonical(v):
    """Label values as read from csv are strings; '1', 1 and 1.0 name the same class."""
    if isinstance(v, (np.integer, int)) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v.strip())
    return v.strip() if isinstance(v, str) else v


def _name_lookup(names: list[str]):
    """Map a label value (name, or integer id into names) to its index."""
    index = {n: i for i, n in enumerate(names)}

    def lookup(v):
        v = _canonical(v)
        if isinstance(v, int) and str(v) not in index:
            return v if 0 <= v < len(names) else None
        return index.get(str(v))
    return lookup


def _items(v, cfg: DataConfig, problem_type: str) -> list:
    return _split_items(v, cfg.label_separator) if problem_type == MULTI else [v]


def build_schema(train: RawSplit, cfg: DataConfig, declared: list[str] | None) -> LabelSchema:
    problem_type = infer_problem_type(train, cfg)
    names = declared_label_names(cfg) or declared
    if problem_type == MULTI and len(cfg.label_columns) > 1:
        if names and len(names) != len(cfg.label_columns):
            raise DataError(f"data.label_names has {len(names)} names but data.label_columns has {len(cfg.label_columns)} columns")
        return LabelSchema(MULTI, names or list(cfg.label_columns))
    if names:
        return LabelSchema(problem_type, names)
    values = {_canonical(x) for v in train.column(cfg.label_columns[0]) for x in _items(v, cfg, problem_type)
              if not _missing(x)}
    # Integer labels sort numerically; they become names ("0", "1", or "1".."5" for ratings).
    ordered = sorted(values, key=lambda v: (not isinstance(v, int), v if isinstance(v, int) else str(v)))
    return LabelSchema(problem_type, [str(v) for v in ordered])


def encode_labels(split: RawSplit, cfg: DataConfig, schema: LabelSchema) -> np.ndarray:
    """Integer class ids (single-label) or a float 0/1 matrix (multi-label); every bad value is reported with its row."""
    n = len(split.rows)
    if schema.multi_label and len(cfg.label_columns) > 1:
        out = np.zeros((n, len(cfg.label_columns)), dtype=np.float32)
        for j, col in enumerate(cfg.label_columns):
            for i, v in enumerate(split.column(col)):
                v = _canonical(v)
                if v not in (0, 1):
                    raise DataError(f"{split.source}: column {col!r}, {_row_hint(split, i, cfg)}: label value {v!r} "
                                    f"is not 0 or 1 (multi-label columns hold 0/1 flags)")
                out[i, j] = v
        return out
    col = cfg.label_columns[0]
    lookup = _name_lookup(schema.label_names)
    out = np.zeros((n, schema.num_labels), dtype=np.float32) if schema.multi_label else np.zeros(n, dtype=np.int64)
    for i, v in enumerate(split.column(col)):
        items = _items(v, cfg, schema.problem_type)
        if not items or any(_missing(x) for x in items):
            raise DataError(f"{split.source}: column {col!r}, {_row_hint(split, i, cfg)}: missing label")
        for x in items:
            k = lookup(x)
            if k is None:
                raise DataError(f"{split.source}: column {col!r}, {_row_hint(split, i, cfg)}: label {x!r} is outside "
                                f"the label set {schema.label_names[:10]}{'...' if schema.num_labels > 10 else ''}. "
                                f"Fix the row or set data.label_names.")
            if schema.multi_label:
                out[i, k] = 1.0
            else:
                out[i] = k
    return out


def check_label_coverage(train: RawSplit, labels: np.ndarray, schema: LabelSchema) -> None:
    counts = labels.sum(axis=0) if schema.multi_label else np.bincount(labels, minlength=schema.num_labels)
    empty = [schema.label_names[k] for k in range(schema.num_labels) if counts[k] == 0]
    if empty:
        raise DataError(f"{train.source}: label(s) {empty} have no examples in the train split: the student cannot "
                        f"learn them. Add examples, use more rows (data.max_train_samples), or drop the label from "
                        f"data.label_names / data.label_columns.")


# ---------------------------------------------------------------- tokenization and artifacts

def _subsample(split: RawSplit, limit: int | None, seed: int) -> RawSplit:
    n = len(split.rows)
    if limit is None or n <= limit:
        return split
    keep = np.sort(np.random.RandomState(seed).choice(n, size=limit, replace=False))  # as pandas' sample(random_state=)
    return RawSplit(split.name, split.source, split.rows.select(keep.tolist()))


def check_labels_are_classes(train: RawSplit, cfg: DataConfig, schema: LabelSchema) -> None:
    """A single-label column with a class for most rows holds texts or scores, not classes (swapped columns, a
    regression target): refused before a classifier with thousands of outputs is built."""
    rows = len(train.rows)
    if schema.multi_label or schema.num_labels <= 20 or schema.num_labels < 0.5 * rows:
        return
    examples = schema.label_names[:3]
    raise DataError(f"{train.source}: column {cfg.label_columns[0]!r} has {schema.num_labels} distinct values in "
                    f"{rows} rows (e.g. {examples}): texts or scores, not class labels. Is data.label_columns the "
                    f"label column (columns: {train.columns})? Give data.label_names to allow that many classes")


def check_splits(raw: dict[str, RawSplit], cfg: DataConfig, declared: list[str] | None
                 ) -> tuple[dict[str, tuple[list[str], np.ndarray | None]], LabelSchema]:
    """Validated (texts, labels) per split and the label schema; a test split without labels keeps None."""
    for split in raw.values():
        labelled = split.name != "test" or all(c in split.columns for c in cfg.label_columns)
        check_columns(split, cfg, need_labels=labelled)
    schema = build_schema(raw["train"], cfg, declared)
    check_labels_are_classes(raw["train"], cfg, schema)
    if schema.num_labels < 2 and not schema.multi_label:
        raise DataError(f"{raw['train'].source}: column {cfg.label_columns[0]!r} has a single class {schema.label_names}; "
                        f"classification needs at least two")
    out = {}
    for name, split in raw.items():
        texts = check_texts(split, cfg)
        labelled = all(c in split.columns for c in cfg.label_columns)
        labels = encode_labels(split, cfg, schema) if labelled else None
        if name == "train":
            check_label_coverage(split, labels, schema)
        out[name] = (texts, labels)
    return out, schema


def load_and_validate(cfg: DataConfig) -> tuple[dict[str, tuple[list[str], np.ndarray | None]], LabelSchema]:
    """All splits as (texts, labels), validated."""
    raw, declared = read_splits(cfg)
    raw["train"] = _subsample(raw["train"], cfg.max_train_samples, cfg.seed)
    for name in ("validation", "test"):
        if name in raw:
            raw[name] = _subsample(raw[name], cfg.max_eval_samples, cfg.seed)
    return check_splits(raw, cfg, declared)


def read_unlabeled(cfg: DataConfig, eval_texts: set[str]) -> tuple[list[str], int]:
    """data.unlabeled's texts, less those also in validation or test (they would leak into the evaluation);
    returns the texts and how many were dropped."""
    split = read_split(cfg, "unlabeled")
    check_columns(split, cfg, need_labels=False)
    texts = check_texts(split, cfg)
    kept = [t for t in texts if t.strip() not in eval_texts]
    return kept, len(texts) - len(kept)


def transfer_texts(cfg: Config, splits: dict, mask_token: str | None) -> tuple[list[str], dict]:
    """The transfer set: data.unlabeled plus augmented copies of the training texts (never of validation or
    test). Empty when neither is configured."""
    from kdpipe.augment import augment_texts

    texts, info = [], {}
    if cfg.data.unlabeled:
        eval_texts = {t.strip() for name in ("validation", "test") if name in splits for t in splits[name][0]}
        texts, info["unlabeled_dropped_in_eval"] = read_unlabeled(cfg.data, eval_texts)
        info["unlabeled"] = len(texts)
    if cfg.distillation.augment.factor:
        augmented = augment_texts(splits["train"][0], cfg.distillation.augment, mask_token)
        texts += augmented
        info["augmented"] = len(augmented)
    return texts, info


def recent_rows(cfg: Config, splits: dict, texts: list[str]) -> tuple[list[str], list[str], dict]:
    """A drift-triggered retrain's share of the recent texts: deduplicated, none that is already a training,
    validation or test text, shuffled (seeded); drift.holdout of them held out (the RECENT split), the rest (up to
    drift.max_transfer_texts) for the transfer set. Returns (held out, for transfer, counts)."""
    import random

    known = {t.strip() for name in SPLITS if name in splits for t in splits[name][0]}
    fresh = [t for t in dict.fromkeys(t.strip() for t in texts) if t and t not in known]
    random.Random(cfg.data.seed).shuffle(fresh)
    held = max(1, round(cfg.drift.holdout * len(fresh))) if fresh else 0
    held_out, transfer = fresh[:held], fresh[held:held + cfg.drift.max_transfer_texts]
    return held_out, transfer, {"given": len(texts), "dropped_duplicate_or_known": len(texts) - len(fresh),
                                "held_out": len(held_out), "transfer": len(transfer),
                                "over_cap": max(0, len(fresh) - held - cfg.drift.max_transfer_texts)}


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict[str, list]:
    # No padding here: the collator pads each batch to its own longest row.
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    return {k: enc[k] for k in tokenizer.model_input_names if k in enc}


def fingerprint(columns: dict[str, list], labels: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for key in sorted(columns):
        for row in columns[key]:
            h.update(np.asarray(row, dtype=np.int32).tobytes())
            h.update(b"|")
    if labels is not None:
        h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()[:16]


def preprocess(cfg: Config, out_dir: str | Path, tokenizer=None, recent: list[str] | None = None) -> dict:
    """Pipeline step: validated, tokenized splits + label schema + fingerprints under out_dir. `recent`: the
    recent texts of a drift-triggered retrain (recent_rows: the RECENT split and more transfer rows)."""
    import datasets

    from kdpipe.modeling import load_tokenizer

    out_dir = Path(out_dir)
    splits, schema = load_and_validate(cfg.data)
    tokenizer = tokenizer or load_tokenizer(local_model(cfg, "teacher"), cfg)
    transfer_rows, transfer = transfer_texts(cfg, splits, tokenizer.mask_token or tokenizer.unk_token)
    configured_transfer = len(transfer_rows)
    if recent:
        held_out, more, transfer["recent"] = recent_rows(cfg, splits, recent)
        transfer_rows = transfer_rows + more
        if held_out:
            splits[RECENT] = (held_out, None)
    if transfer_rows:
        splits[TRANSFER] = (transfer_rows, None)
    dd, fingerprints, sizes = {}, {}, {}
    data_fingerprints = {}  # of the configured data alone: the retrain key's (recent texts come and go)
    for name, (texts, labels) in splits.items():
        columns = tokenize(tokenizer, texts, cfg.data.max_length)
        fingerprints[name] = fingerprint(columns, labels)
        if name == TRANSFER and configured_transfer < len(texts):
            if configured_transfer:
                data_fingerprints[name] = fingerprint({k: v[:configured_transfer] for k, v in columns.items()}, None)
        elif name != RECENT:
            data_fingerprints[name] = fingerprints[name]
        sizes[name] = len(texts)
        features = {k: datasets.Sequence(datasets.Value("int32")) for k in columns}
        if name not in ("train", TRANSFER):  # evaluation rows keep their texts: the champion re-scores them
            columns["text"], features["text"] = list(texts), datasets.Value("string")
        if labels is not None:
            columns["labels"] = labels.tolist()
            features["labels"] = (datasets.Sequence(datasets.Value("float32")) if schema.multi_label
                                  else datasets.ClassLabel(names=schema.label_names))
        dd[name] = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    lengths = [len(x) for x in dd["train"]["input_ids"]]
    info = {
        "schema": schema.to_json(),
        "fingerprints": fingerprints,
        "data_fingerprints": data_fingerprints,
        "sizes": sizes,
        "transfer": transfer,
        "max_length": cfg.data.max_length,
        "train_tokens_mean": float(np.mean(lengths)),
        "train_truncated_fraction": float(np.mean([n >= cfg.data.max_length for n in lengths])),
    }
    Prepared.save(out_dir, datasets.DatasetDict(dd), tokenizer, info)
    return info
