"""The one step lifecycle. A pipeline step is a plain function `fn(ctx, *inputs) -> dict`; `@tracked_step(name)`
wraps it the way ZenML's MLflow tracker wraps a step: the config is parsed, the step's MLflow child run is opened
and closed, the step is timed, its numbers become metrics, its result is written once (`result.json` on that
run), and a failure is recorded on the run (tag `kdpipe.error`, status FAILED). Call the wrapped step with the
config (a Config or its JSON), the pipeline run's name, then the step's own inputs."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

from kdpipe.config import Config, config_from_json

# Result keys that hold settings, not measurements: logged as params by the step, never as metrics.
NOT_METRICS = ("params", "best_params")


@dataclass
class StepContext:
    """What a running step may use besides its inputs: the config, the pipeline run, and its MLflow run."""

    cfg: Config
    pipeline_run: str
    run_id: str | None = None

    def tag_parent(self, tags: dict) -> None:
        from kdpipe.tracking import tag_parent

        tag_parent(self.cfg, self.pipeline_run, tags)

    def log_params(self, params: dict, prefix: str = "") -> None:
        import mlflow

        mlflow.log_params({f"{prefix}{k}": v for k, v in params.items()})

    def set_tags(self, tags: dict) -> None:
        import mlflow

        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_text_file(self, path, name: str) -> None:
        """A text file (a report) on the step's run under `name`: KFP names output files after the output."""
        import mlflow

        mlflow.log_text(Path(path).read_text(), name)

    def checkpoints(self):
        """Where a training step keeps its epoch checkpoints for a re-run (None when tracking.keep_checkpoints
        is off)."""
        from kdpipe.recovery import RunCheckpoints

        return RunCheckpoints(self.cfg, self.run_id, self.pipeline_run) if self.cfg.tracking.keep_checkpoints else None

    def log_history(self, name: str, points: list[tuple[int, float]]) -> None:
        """One metric over steps (e.g. per epoch), shown as a curve in MLflow."""
        import mlflow

        for step, value in points:
            mlflow.log_metric(name, value, step=step)


def as_config(config: Config | str) -> Config:
    return config if isinstance(config, Config) else config_from_json(config)


def tracked_step(name: str, run_id=None):
    """Decorator. `run_id(cfg, pipeline_run)`, when given, names an existing run to resume instead of a new child
    run (the HPO step writes into the run its workers' trials hang under)."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(config: Config | str, pipeline_run: str, *args, **kwargs) -> dict:
            started = time.perf_counter()  # the step's own time includes opening its run, as it always has

            import mlflow

            from kdpipe.tracking import log_result, step_run, store_failures_in_one_line

            cfg = as_config(config)
            with store_failures_in_one_line(cfg):
                existing = run_id(cfg, pipeline_run) if run_id else None
                with step_run(cfg, pipeline_run, name, run_id=existing) as active:
                    result = fn(StepContext(cfg, pipeline_run, active.info.run_id), *args, **kwargs)
                    result["step_seconds"] = time.perf_counter() - started
                    log_result({k: v for k, v in result.items() if k not in NOT_METRICS})
                    mlflow.log_dict(result, "result.json")
            return result

        run.step_name = name
        return run

    return wrap
