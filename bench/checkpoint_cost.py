"""Benchmark: what keeping each epoch's checkpoint on the step's MLflow run costs (tracking.keep_checkpoints),
and what resuming saves, side by side in one run.

Same student, data, settings and seed. Three distillations of the MiniLM-L6 teacher (fine-tuned briefly here)
into its layers [0, 5] on an SST-2 sample, inside an MLflow run on a SQLite store with local artifacts (the
embedded default): without the keeper, with it (each epoch uploaded, deleted at the end), and a re-run resuming
from the last epoch an interrupted attempt kept. Repeated --repeats times, alternating.

    .venv/bin/python bench/checkpoint_cost.py [--rows 2000] [--epochs 3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import SHARED, fresh_logit_store, minilm, save

from kdpipe.config import load_config
from kdpipe.data import preprocess
from kdpipe.distill import distill_student
from kdpipe.recovery import CHECKPOINTS, RunCheckpoints
from kdpipe.teacher import evaluate_teacher, finetune_teacher
from kdpipe.tracking import experiment_id, mlflow_client


class Interrupted(Exception):
    pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    import mlflow
    from transformers import TrainerCallback

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = load_config(raw={
            "teacher": {"model": minilm(), "epochs": 0.2, "batch_size": 32, "logit_store": fresh_logit_store()}, "student": {"layers": [0, 5]},
            "data": {"train": str(SHARED / "sst2/train.tsv"), "validation": str(SHARED / "sst2/dev.tsv"),
                     "text_column": "sentence", "max_length": 64, "max_train_samples": args.rows,
                     "max_eval_samples": 200},
            "distillation": {"epochs": args.epochs, "batch_size": 32},
            "tracking": {"uri": f"sqlite:///{root}/mlflow.db", "experiment": "bench"}})
        preprocess(cfg, root / "prep")
        teacher = finetune_teacher(cfg, root / "prep", root / "teacher")["model_dir"]
        evaluate_teacher(cfg, root / "prep", teacher, root / "teval")
        mlflow.set_tracking_uri(cfg.tracking.uri)
        exp = experiment_id(cfg)

        def distill(name, keeper_on: bool, stop_after_epoch: int | None = None, tags=None):
            callbacks = []
            if stop_after_epoch:
                class Stop(TrainerCallback):  # interrupted as the next epoch starts: that epoch's checkpoint is kept
                    def on_step_begin(self, a, state, control, **kw):
                        if state.epoch >= stop_after_epoch:
                            raise Interrupted()
                callbacks.append(Stop())
            with mlflow.start_run(experiment_id=exp, run_name=name, tags={"kdpipe.pipeline_run": name,
                                                                          "kdpipe.role": "distill_student"}) as run:
                keeper = RunCheckpoints(cfg, run.info.run_id, name) if keeper_on else None
                try:
                    return distill_student(cfg, root / "prep", teacher, root / "teval", root / name, keeper=keeper,
                                           callbacks=callbacks)
                except Interrupted:
                    mlflow.end_run("KILLED")
                    kept = Path(run.info.artifact_uri.removeprefix("file://")) / CHECKPOINTS
                    return {"kept_bytes": sum(f.stat().st_size for f in kept.rglob("*") if f.is_file())}

        times = {"without_keeper": [], "with_keeper": [], "resumed_after_epoch_1": []}
        for r in range(args.repeats):
            times["without_keeper"].append(distill(f"plain-{r}", False)["train_runtime_s"])
            times["with_keeper"].append(distill(f"kept-{r}", True)["train_runtime_s"])
            kept_bytes = distill(f"interrupted-{r}", True, stop_after_epoch=1)["kept_bytes"]
            resumed = distill(f"resumed-{r}", True)
            assert resumed["resumed_from_run"], "the re-run did not resume"
            times["resumed_after_epoch_1"].append(resumed["train_runtime_s"])
        client = mlflow_client(cfg)
        leftover = [r.info.run_name for r in client.search_runs([exp]) if r.info.status == "FINISHED"
                    and client.list_artifacts(r.info.run_id, CHECKPOINTS)]
        med = {k: statistics.median(v) for k, v in times.items()}
        save("checkpoint_cost", {
            "setup": f"MiniLM-L6 -> layers [0, 5], SST-2 {args.rows} rows, max_length 64, {args.epochs} epochs, "
                     f"batch 32, MLflow SQLite + local artifacts",
            "train_runtime_s": times, "median_s": med,
            "keeper_overhead_fraction": med["with_keeper"] / med["without_keeper"] - 1,
            "resume_saves_fraction": 1 - med["resumed_after_epoch_1"] / med["with_keeper"],
            "checkpoint_mb_kept_per_run": kept_bytes / 2**20, "finished_runs_still_holding_checkpoints": leftover})


if __name__ == "__main__":
    main()
