"""Issue 28: what the export search costs (bench, not a test). The export step of a finished pipeline run again, on
its own artifacts (the prepared dataset, the student, the teacher's logits), with export.search off, fast and full
in turn: the export's wall time, the search's own seconds, the variant shipped and the search's table.

    .venv/bin/python bench/export_search.py --run RUN_FOLDER CONFIG [--run RUN_FOLDER CONFIG ...]

RUN_FOLDER: a pipeline run's folder under `<output dir>/pipeline-root/` (it holds preprocess/, distill-student/,
evaluate-teacher/); CONFIG: the config it ran with. Writes bench/results/export_search.json."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from kdpipe.artifacts import load_prepared, teacher_logits  # noqa: E402
from kdpipe.config import load_config  # noqa: E402
from kdpipe.export import export_onnx  # noqa: E402
from kdpipe.export_search import search_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", nargs=2, action="append", required=True, metavar=("RUN_FOLDER", "CONFIG"))
    args = parser.parse_args()
    results = {}
    for folder, cfg_path in args.run:
        run = Path(folder)
        dataset, student = run / "preprocess" / "dataset", run / "distill-student" / "student"
        prep = load_prepared(dataset)
        teachers = teacher_logits(run / "evaluate-teacher" / "teacher_logits").load(
            prep.eval_split, prep.fingerprint(prep.eval_split))
        found = {}
        for mode in ("off", "fast", "full"):
            cfg = load_config(cfg_path, [f"export.search={mode}"])
            with tempfile.TemporaryDirectory() as out:
                began = time.perf_counter()
                result = export_onnx(cfg, student, dataset, Path(out) / "onnx", teacher_logits=teachers)
                wall = time.perf_counter() - began
            found[mode] = {"export_wall_s": round(wall, 1), "search_s": round(result["int8_search_seconds"], 1),
                           "shipped": result.get("int8_variant"), "latency_ms": result["latency_ms"],
                           "rows": result["int8_search"], "table": search_table(result, cfg.export.search_batch_sizes)}
            print(f"{run.name} search {mode}: export {wall:.1f} s, search {result['int8_search_seconds']:.1f} s, "
                  f"ships {result.get('int8_variant')}\n{found[mode]['table']}", flush=True)
        results[str(run)] = {"eval_split": prep.eval_split, "eval_rows": len(prep.dataset[prep.eval_split]),
                             "validation_rows": len(prep.dataset["validation"]), "modes": found}
    save("export_search", {"command": "bench/export_search.py " + " ".join(sys.argv[1:]), "runs": results})


if __name__ == "__main__":
    main()
