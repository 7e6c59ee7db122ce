"""The one step lifecycle. A pipeline step is a plain function `fn(ctx, *inputs) -> dict`; `@tracked_step()`
wraps it the way ZenML's MLflow tracker wraps a step: the config is parsed, the step's MLflow run is opened and
closed, the step is timed and announced (`kdpipe: step NAME started`, then `... done in N s` or `... failed
after N s: why`), its numbers become
metrics, its result is written once (`result.json` on that run), and a failure is recorded on the run (tag
`kdpipe.error`, status FAILED; bad input becomes a one-line exit, not retried). Call the wrapped step with the
config (a Config or its JSON), the pipeline run's name, then the step's own inputs.

The step's name is its function's name: the same name is its KFP component, its MLflow role (tag
`kdpipe.role`) and its key in the summary. Which MLflow run a step writes to is its `run` (one of the RUNS
below); every step goes through this lifecycle, whichever run it uses."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from kdpipe.config import Config, config_from_json

log = logging.getLogger("kdpipe.step")

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
        self.log_text(Path(path).read_text(), name)

    def log_text(self, text: str, name: str) -> None:
        import mlflow

        mlflow.log_text(text, name)

    def checkpoints(self):
        """Where a training step keeps its epoch checkpoints for a re-run (None when tracking.keep_checkpoints
        is off)."""
        from kdpipe.recovery import RunCheckpoints

        return RunCheckpoints(self.cfg, self.run_id, self.pipeline_run) if self.cfg.tracking.keep_checkpoints else None

    def log_datasets(self, dataset_dir: str, splits: list[str] | None = None, pipeline_run_too: bool = False) -> None:
        """The prepared dataset's splits this step read (default: all) as MLflow dataset inputs of its run (and of
        the pipeline run: the step that reads the data first)."""
        from kdpipe.artifacts import prepared_info
        from kdpipe.run_record import log_datasets
        from kdpipe.tracking import parent_run_id

        info = prepared_info(dataset_dir)
        runs = [self.run_id] + ([parent_run_id(self.cfg, self.pipeline_run)] if pipeline_run_too else [])
        log_datasets(self.cfg, runs, info, [s for s in splits or info["fingerprints"] if s in info["fingerprints"]])

    def log_history(self, name: str, points: list[tuple[int, float]]) -> None:
        """One metric over steps (e.g. per epoch), shown as a curve in MLflow."""
        import mlflow

        for step, value in points:
            mlflow.log_metric(name, value, step=step)


def as_config(config: Config | str) -> Config:
    return config if isinstance(config, Config) else config_from_json(config)


# The MLflow run a step writes to. Each is a context manager factory (cfg, pipeline_run, name) yielding
# (run_id, active): `active` when the run is the active MLflow run, whose metrics and result.json the step writes.
@contextlib.contextmanager
def child_run(cfg, pipeline_run: str, name: str):
    """A child run of the pipeline run, of its own (most steps)."""
    from kdpipe.tracking import step_run

    with step_run(cfg, pipeline_run, name) as active:
        yield active.info.run_id, True


@contextlib.contextmanager
def hpo_run(cfg, pipeline_run: str, name: str):
    """The HPO run, which the workers' trials hang under (hpo_best writes the search's result into it); none
    while HPO is off."""
    from kdpipe.tracking import hpo_run_id, step_run

    if not cfg.hpo.enabled:
        yield None, False
        return
    with step_run(cfg, pipeline_run, name, run_id=hpo_run_id(cfg, pipeline_run)) as active:
        yield active.info.run_id, True


@contextlib.contextmanager
def under_hpo_run(cfg, pipeline_run: str, name: str):
    """No run of its own (each trial of an HPO worker is a run under the HPO run): a failure is recorded on the
    HPO run."""
    from kdpipe.tracking import failures_recorded, hpo_run_id

    hpo_id = hpo_run_id(cfg, pipeline_run)
    with failures_recorded(cfg, hpo_id):
        yield hpo_id, False


@contextlib.contextmanager
def no_run(cfg, pipeline_run: str, name: str):
    """No run (the exit handler ends the pipeline's parent run)."""
    yield None, False


def tracked_step(run=child_run):
    """Decorator: the lifecycle around a step function, which writes to `run` (see above)."""

    def wrap(fn):
        name = fn.__name__

        @functools.wraps(fn)
        def step(config: Config | str, pipeline_run: str, *args, **kwargs) -> dict:
            started = time.perf_counter()  # the step's own time includes opening its run, as it always has
            from kdpipe.tracking import log_result, store_failures_in_one_line

            cfg = as_config(config)
            log.info("kdpipe: step %s started", name)
            try:
                with store_failures_in_one_line(cfg), run(cfg, pipeline_run, name) as (run_id, active):
                    result = fn(StepContext(cfg, pipeline_run, run_id), *args, **kwargs)
                    if isinstance(result, dict):
                        result["step_seconds"] = time.perf_counter() - started
                        if active:
                            log_result({k: v for k, v in result.items() if k not in NOT_METRICS})
                            import mlflow

                            mlflow.log_dict(result, "result.json")
            except BaseException as e:
                log.info("kdpipe: step %s failed after %.1f s: %s", name, time.perf_counter() - started,
                         str(e).splitlines()[0][:300] if str(e) else type(e).__name__)
                raise
            log.info("kdpipe: step %s done in %.1f s", name, time.perf_counter() - started)
            return result

        step.step_name = name
        return step

    return wrap
