"""Checks `kdpipe run` makes before the pipeline starts, so common mistakes fail in seconds, not after KFP has
started and loaded models. The steps keep their own checks: a cluster run starts without this machine's."""

from __future__ import annotations

from kdpipe.config import Config


def check_local_inputs(cfg: Config) -> None:
    """Local data files: read, every row's text and labels validated (as preprocess does, minus tokenization).
    Raises DataError naming the file, column and row."""
    from kdpipe.data import load_and_validate

    if cfg.data.dataset is None:
        load_and_validate(cfg.data)
