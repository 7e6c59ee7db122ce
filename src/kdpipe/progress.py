"""Progress of a step's long loops (training, a pass of a model over a split) as log lines: in a pod's log they
read as they are; `kdpipe run` turns them into a progress bar (kdpipe_kfp.console). One line per second at
most, and the last one always."""

from __future__ import annotations

import logging
import re
import time

log = logging.getLogger("kdpipe.progress")
LINE = re.compile(r"kdpipe: progress: (?P<what>[\w ]+?) (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+)$")


class Progress:
    def __init__(self, what: str, total: int, unit: str, every_s: float = 1.0):
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.last = float("-inf")

    def update(self, done: int) -> None:
        now = time.monotonic()
        if done >= self.total or now - self.last >= self.every_s:
            self.last = now
            log.info("kdpipe: progress: %s %d/%d %s", self.what, min(done, self.total), self.total, self.unit)


def training_callback(what: str = "training"):
    """A Trainer callback reporting optimizer steps."""
    from transformers import TrainerCallback

    class TrainingProgress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.progress = Progress(what, state.max_steps, "steps")
            self.progress.update(state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            self.progress.update(state.global_step)

    return TrainingProgress()
