"""The folders steps hand on, each with its layout in one place: the class that writes an artifact also reads it.
Prepared (preprocess), Logits (evaluate-teacher, and inside Student), Student (distill-student), Export
(export-register: the registered model's files)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdpipe.errors import DataError
from kdpipe.task import LabelSchema


@dataclass
class Prepared:
    """preprocess's output: the tokenized splits (`dataset/`, datasets' save_to_disk; evaluation splits keep their
    texts), the teacher's tokenizer (`tokenizer/`) and `data_info.json` (label schema, each split's fingerprint and
    size, token statistics)."""

    path: Path
    dataset: object  # datasets.DatasetDict
    schema: LabelSchema
    info: dict

    @staticmethod
    def save(path: str | Path, dataset, tokenizer, info: dict) -> None:
        path = Path(path)
        dataset.save_to_disk(str(path / "dataset"))
        tokenizer.save_pretrained(str(path / "tokenizer"))
        (path / "data_info.json").write_text(json.dumps(info, indent=2))

    @property
    def tokenizer_dir(self) -> str:
        return str(self.path / "tokenizer")

    def fingerprint(self, split: str) -> str:
        return self.info["fingerprints"][split]

    @property
    def eval_split(self) -> str:
        """The split the gate judges on: `test` when it has labels (held out: training, HPO and thresholds
        select on validation), else `validation`."""
        test = self.dataset.get("test") if hasattr(self.dataset, "get") else None
        return "test" if test is not None and "labels" in test.column_names else "validation"


def prepared_info(path: str | Path) -> dict:
    """A prepared dataset's data_info.json alone (schema, each split's fingerprint and size), without its rows."""
    info_file = Path(path) / "data_info.json"
    if not info_file.is_file():
        raise DataError(f"{path}: not a preprocessed dataset (no data_info.json); run the preprocess step first")
    return json.loads(info_file.read_text())


def load_prepared(path: str | Path) -> Prepared:
    import datasets

    path, info = Path(path), prepared_info(path)
    return Prepared(path, datasets.load_from_disk(str(path / "dataset")), LabelSchema(**info["schema"]), info)


class Logits:
    """A model's logits on named splits, in one folder: a safetensors file per split (no pickle), keyed to the rows
    it was computed on (the split's fingerprint), so logits of other data are refused. The teacher_logits artifact
    holds the teacher's (train, transfer, the evaluation split); the student artifact the student's own (validation,
    the evaluation split)."""

    def __init__(self, folder: str | Path, producer: str):
        self.folder, self.producer = Path(folder), producer

    def file(self, split: str) -> Path:
        return self.folder / f"{split}_logits.safetensors"

    def save(self, split: str, logits: np.ndarray, fingerprint: str, model: str) -> None:
        from safetensors.numpy import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        save_file({"logits": np.ascontiguousarray(logits, dtype=np.float32)}, str(self.file(split)),
                  metadata={"fingerprint": fingerprint, "model": model})

    def load(self, split: str, fingerprint: str) -> np.ndarray:
        from safetensors import safe_open

        file = self.file(split)
        if not file.is_file():
            raise DataError(f"{file}: logits not found; the {self.producer} step writes them")
        with safe_open(str(file), framework="np") as f:
            found = f.metadata().get("fingerprint")
            if found != fingerprint:
                raise DataError(f"{file}: these logits were computed on other data (fingerprint {found}, data now "
                                f"{fingerprint}); re-run {self.producer}")
            return f.get_tensor("logits")


def teacher_logits(folder: str | Path) -> Logits:
    """evaluate-teacher's output."""
    return Logits(folder, "evaluate-teacher")


class Student:
    """distill-student's output: the model and its tokenizer (`model/`, save_pretrained, safetensors), its fp32
    logits on validation and the evaluation split (computed once: the gate judges them, the export checks parity
    against them), and its decision thresholds (per label when tuned, multi-label)."""

    THRESHOLDS = "thresholds.json"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.logits = Logits(self.folder, "distill-student")

    @property
    def model_dir(self) -> Path:
        return self.folder / "model"

    def save_thresholds(self, thresholds: list[float] | None) -> None:
        (self.folder / self.THRESHOLDS).write_text(json.dumps(thresholds))

    def thresholds(self, default: float):
        """Per label when tuned, else `default` (metrics.threshold)."""
        file = self.folder / self.THRESHOLDS
        tuned = json.loads(file.read_text()) if file.is_file() else None
        return default if tuned is None else tuned


class Export:
    """export-register's output and the registered model's artifact: `model.onnx`, `model.int8.onnx` when the int8
    model passed its checks, the tokenizer files, `README.md` (the model card)."""

    FP32, INT8, CARD = "model.onnx", "model.int8.onnx", "README.md"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @property
    def fp32(self) -> Path:
        return self.folder / self.FP32

    @property
    def int8(self) -> Path:
        return self.folder / self.INT8

    @property
    def card(self) -> Path:
        return self.folder / self.CARD

    @property
    def served(self) -> str:
        """The variant this folder serves unless asked otherwise: int8 when it passed its export checks (its file is
        kept only then), else fp32. The one rule behind predict, the registered model and the run's figures."""
        return "int8" if self.int8.is_file() else "fp32"

    def model(self, variant: str | None = None) -> Path:
        """The ONNX file of `variant` (int8, fp32), by default the served one."""
        return self.int8 if (variant or self.served) == "int8" else self.fp32
