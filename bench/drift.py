"""Issue 26: drift judged by the teacher, on real text from another domain, and the retraining loop (bench, not
a test).

A champion trained on SST-2's movie sentences: `kdpipe run` on 5,000 of bench/reuse.py's training rows, with
bench/reuse.py's registered MiniLM teacher (so no teacher is fine-tuned and its logits are found stored), which
registers the student with its drift baseline. Two sets of 10,000 recent texts:
  traffic   GoEmotions' Reddit comments (another domain; the teacher's decisions are the reference, no labels);
  control   SST-2 training sentences the champion never saw (rows 40,001-50,000: its own domain).
1. `kdpipe drift` on each (the wall time is the command's own, process start and model loads included);
2. the scheduled run (`kdpipe run` with drift.texts, no --force) on the control: expected `unchanged`;
3. the scheduled run on the traffic: expected to retrain with the recent texts, the retrained student judged
   against the champion by the teacher on the held-out recent texts (gate.champion_comparison teacher_judged);
4. `kdpipe drift` on the traffic again, against the new champion.

    .venv/bin/python bench/drift.py [--texts 10000]

Needs bench/cache/reuse (run bench/reuse.py first). Writes bench/results/drift.json."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHARED, save  # noqa: E402

KDPIPE = str(ROOT / ".venv" / "bin" / "kdpipe")
REUSE = ROOT / "bench" / "cache" / "reuse"
WORK = ROOT / "bench" / "cache" / "drift"
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def kdpipe(*args: str) -> tuple[float, str]:
    began = time.perf_counter()
    done = subprocess.run([KDPIPE, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"kdpipe {' '.join(args)} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return time.perf_counter() - began, done.stdout


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"sentence": t}) + "\n" for t in texts))
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=10_000)
    args = parser.parse_args()
    if not (REUSE / "mlflow.db").is_file():
        raise SystemExit(f"{REUSE}: run bench/reuse.py first (its teacher is this champion's)")
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    config = yaml.safe_load((REUSE / "config.yaml").read_text())
    config["teacher"] = {"model": "models:/bench-reuse-student-teacher/1", "batch_size": 64}
    config["data"].update({"train": str(REUSE / "train.tsv"), "max_train_samples": 5000})
    config["tracking"].update({"experiment": "bench-drift", "registered_model": "bench-drift-student"})
    config["gate"]["champion_comparison"] = "teacher_judged"  # the scenario: the recent texts have no labels
    config["output_dir"] = str(WORK / "runs")
    (WORK / "config.yaml").write_text(yaml.safe_dump(config))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(config["tracking"]["uri"])
    if client.search_registered_models(f"name = '{config['tracking']['registered_model']}'"):
        client.delete_registered_model(config["tracking"]["registered_model"])  # an earlier run's champion
    run_s, printed = kdpipe("run", str(WORK / "config.yaml"), "--output-dir", str(WORK / "run"))
    summary = json.loads((WORK / "run" / "summary.json").read_text())
    print(f"pipeline run: {summary['status']} v{summary['registry']['version']} in {run_s:.0f} s", flush=True)

    goemotions = [line.split("\t")[0] for line in (SHARED / "goemotions/train.tsv").read_text().splitlines()]
    sst2 = [line.split("\t")[0] for line in (SHARED / "sst2/train.tsv").read_text().splitlines()[1:]]
    sets = {"traffic: GoEmotions comments": write_jsonl(WORK / "goemotions.jsonl", goemotions[:args.texts]),
            "control: unseen SST-2 sentences": write_jsonl(WORK / "sst2-unseen.jsonl", sst2[40_000:40_000 + args.texts])}
    checks = {}

    def drift_check(name: str, path: Path) -> dict:
        wall, out = kdpipe("drift", str(WORK / "config.yaml"), "--texts", str(path), "--json")
        result = json.loads(out.strip().splitlines()[-1])
        found = {"wall_s": round(wall, 1), **{k: result[k] for k in (
            "champion_version", "rows", "drifted", "agreement_then", "agreement_now", "disagreement_increase",
            "psi", "teacher_psi", "reasons", "seconds", "per_label_then", "per_label_now")}}
        print(f"{name}: {found}", flush=True)
        return found

    def scheduled(name: str, path: Path) -> dict:
        out = WORK / name
        wall, _ = kdpipe("run", str(WORK / "config.yaml"), "--output-dir", str(out), "--set", f"drift.texts={path}")
        s = json.loads((out / "summary.json").read_text())
        gate = s.get("gate") or {}
        found = {"status": s["status"], "wall_s": round(wall, 1), "drift": s["drift"]["summary"],
                 "recent_rows": s["drift"].get("recent_rows"), "steps": s["timings"]["steps"],
                 "student": (s.get("student") or {}).get("metrics"),
                 "teacher_judged": {k: (gate.get("champion") or {}).get("teacher_judged", {}).get(k) for k in (
                     "rows", "challenger_agreement", "champion_agreement", "p_value", "only_challenger_right",
                     "only_champion_right")} if gate else None,
                 "champion_reason": (gate.get("champion") or {}).get("reason"),
                 "version": (s.get("registry") or {}).get("version")}
        print(f"scheduled run, {name}: {found}", flush=True)
        return found

    for name, path in sets.items():
        checks[name] = drift_check(name, path)
    loop = {"control": scheduled("scheduled-control", sets["control: unseen SST-2 sentences"]),
            "traffic": scheduled("scheduled-traffic", sets["traffic: GoEmotions comments"])}
    loop["traffic_after"] = drift_check("traffic after the retrain", sets["traffic: GoEmotions comments"])
    save("drift", {"command": "bench/drift.py " + " ".join(sys.argv[1:]), "champion_run_s": round(run_s, 1),
                   "champion": {"version": summary["registry"]["version"], "status": summary["status"],
                                "student": summary["student"]["metrics"], "teacher": summary["teacher"]["metrics"]},
                   "checks": checks, "loop": loop})

if __name__ == "__main__":
    main()
