"""Data-parallel training's launcher: settings refused before any process starts, and a rank's bad-input error
reaching the step as the same error (its quality on real data: tests/test_e2e.py)."""

import pytest

from kdpipe.config import load_config
from kdpipe.errors import ConfigError, DataError
from kdpipe.parallel import run_parallel
from tests.conftest import base_config


def fails_on_bad_input(cfg, keeper=None, path: str = ""):
    """Run in each rank by the test below; rank 1 fails first, and torchrun then stops rank 0 before it fails."""
    import os
    import time

    if os.environ["RANK"] == "0":
        time.sleep(30)
    raise DataError(f"{path}: row 3 has no label (rank {os.environ['RANK']})")


def test_a_batch_that_does_not_split_is_refused_before_any_process_starts(tmp_path):
    from kdpipe.distill import distill_student

    raw = base_config(str(tmp_path), str(tmp_path / "t.tsv"), str(tmp_path / "v.tsv"),
                      distillation={"batch_size": 33, "processes": 2})
    for name in ("t.tsv", "v.tsv"):
        (tmp_path / name).write_text("sentence\tlabel\nfine\t1\n")
    cfg = load_config(raw=raw)
    with pytest.raises(ConfigError, match="distillation.batch_size 33 does not split among 2 training processes"):
        distill_student(cfg, tmp_path / "no-data", "no-teacher", None, tmp_path / "out")


def test_a_bad_input_error_in_a_rank_is_the_steps_error(tmp_path):
    for name in ("t.tsv", "v.tsv"):
        (tmp_path / name).write_text("sentence\tlabel\nfine\t1\n")
    cfg = load_config(raw=base_config(str(tmp_path), str(tmp_path / "t.tsv"), str(tmp_path / "v.tsv")))
    with pytest.raises(DataError, match=r"train.csv: row 3 has no label \(rank 1\)"):
        run_parallel("tests.test_parallel:fails_on_bad_input", 2, cfg, path="train.csv")


def test_kdpipe_distill_as_two_ranks_writes_one_student_from_the_pipelines_artifacts(tmp_path, sst2_small,
                                                                                    bert_tokenizer):
    """What each node of the multi-node TrainJob runs (k8s/multinode), here as two ranks of one torchrun on this
    CPU: the artifacts of preprocess and evaluate-teacher in, rank 0's student folder out."""
    import json
    import subprocess
    import sys

    import yaml

    from kdpipe.data import preprocess
    from kdpipe.teacher import evaluate_teacher
    from tests.conftest import make_tiny_bert

    teacher = make_tiny_bert(tmp_path / "teacher", bert_tokenizer, layers=2, num_labels=2, seed=1, dropout=0.0)
    raw = base_config(teacher, *sst2_small, student={"layers": [0]})
    raw["tracking"] = {"uri": f"sqlite:///{tmp_path}/mlflow.db"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "config.yaml")
    preprocess(cfg, tmp_path / "dataset")
    evaluate_teacher(cfg, tmp_path / "dataset", teacher, tmp_path / "teacher_logits")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "kdpipe_kfp.cli", "distill", str(tmp_path / "config.yaml"),
                           "--dataset", str(tmp_path / "dataset"), "--teacher-logits", str(tmp_path / "teacher_logits"),
                           "--teacher", teacher, "--output", str(tmp_path / "student")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("kdpipe distill: student") == 1  # rank 0 reports, the other rank trains
    assert sorted(p.name for p in (tmp_path / "student").iterdir()) == ["model", "result.json", "thresholds.json",
                                                                        "validation_logits.safetensors"]
    result = json.loads((tmp_path / "student" / "result.json").read_text())
    assert result["train_rows"] == 400 and set(result["metrics"]) == {"accuracy", "macro_f1"}
