"""Benchmark: where each task's time goes in a local pipeline run (KFP local runner).

For every task: its wall time as the local runner logs it (start to finish, process start-up, imports and
teardown included), the step's own time (`step_seconds`, measured inside the step), and the difference: the
per-task overhead. Runs `kdpipe run CONFIG` (default: the demo) or reads a saved run's output and summary.

    .venv/bin/python bench/task_overhead.py [--config configs/demo.yaml]
    .venv/bin/python bench/task_overhead.py --log run.log --summary summary.json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from common import save

LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) - \w+ - (?:Executing task '([\w-]+)'|Task '([\w-]+)' finished)")


def task_walls(log: str) -> dict[str, float]:
    started, walls = {}, {}
    for line in re.sub(r"\x1b\[[0-9;]*m", "", log).splitlines():
        m = LINE.match(line)
        if not m:
            continue
        t = datetime.strptime(m.group(1), "%H:%M:%S.%f")
        if m.group(2):
            started[m.group(2)] = t
        elif m.group(3) in started:
            walls[m.group(3)] = (t - started[m.group(3)]).total_seconds()
    return walls


def breakdown(log: str, summary: dict) -> dict:
    walls = task_walls(log)
    steps = {{"hpo": "hpo-best"}.get(name, name.replace("_", "-")): s
             for name, s in summary["timings"]["steps"].items() if s}
    rows = {task: {"wall_s": wall, "step_s": steps.get(task, 0.0), "overhead_s": wall - steps.get(task, 0.0)}
            for task, wall in walls.items()}
    overhead = [r["overhead_s"] for r in rows.values()]
    return {"tasks": rows, "tasks_n": len(rows), "pipeline_wall_s": summary["timings"]["pipeline_wall_s"],
            "steps_total_s": summary["timings"]["steps_total_s"],
            "overhead_per_task_mean_s": sum(overhead) / len(overhead),
            "overhead_fraction": summary["timings"]["orchestration_overhead_fraction"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--log", help="a saved `kdpipe run` output (stdout + stderr)")
    parser.add_argument("--summary", help="that run's summary.json")
    parser.add_argument("--label", default="run")
    args = parser.parse_args()
    if args.log:
        log, summary = Path(args.log).read_text(), json.loads(Path(args.summary).read_text())
    else:
        out = Path("kdpipe-runs/bench-task-overhead")
        done = subprocess.run([sys.executable, "-m", "kdpipe_kfp.cli", "run", args.config, "--output-dir", str(out)],
                              capture_output=True, text=True)
        log, summary = done.stdout + done.stderr, json.loads((out / "summary.json").read_text())
    result = breakdown(log, summary)
    print(f"{'task':<22}{'wall s':>8}{'step s':>8}{'overhead s':>12}")
    for task, r in result["tasks"].items():
        print(f"{task:<22}{r['wall_s']:>8.1f}{r['step_s']:>8.1f}{r['overhead_s']:>12.2f}")
    print(f"{result['tasks_n']} tasks, mean overhead {result['overhead_per_task_mean_s']:.2f} s/task; pipeline wall "
          f"{result['pipeline_wall_s']:.1f} s, steps {result['steps_total_s']:.1f} s, overhead "
          f"{100 * result['overhead_fraction']:.1f}%")
    save(f"task_overhead-{args.label}", result)


if __name__ == "__main__":
    main()
