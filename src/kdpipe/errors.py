"""Errors that reach the user as one clear message, and the one classification of how a run ended: its summary
status, its exit code, and whether KFP should retry the step that failed.

Every KdpipeError is bad input or a bad setting (a file, key, model or setting the message names, or a result
those settings make impossible: a diverged training, a search with no complete trial, an export that fails its
checks). Running the step again would fail the same way, so it is not retried and `kdpipe` exits 2. Anything else
(a lost node, a tracking outage, a bug) is retried and exits 1."""

# Exit codes of the CLI, by summary status.
EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
STATUS_EXIT = {"promoted": EXIT_OK, "challenger": EXIT_OK, "unchanged": EXIT_OK, "succeeded": EXIT_OK,
               "gate_failed": EXIT_GATE_FAILED, "bad_input": EXIT_BAD_INPUT}


def exit_code(status: str) -> int:
    """The exit code of a run that ended with this summary status (any status not listed: an error)."""
    return STATUS_EXIT.get(status, EXIT_ERROR)


class KdpipeError(Exception):
    """Base class: bad input or setting, with a message that says where and what to do. Not retried."""


def is_bad_input(error: BaseException) -> bool:
    """Whether a retry would fail the same way (the error is one of ours)."""
    return isinstance(error, KdpipeError)


class ConfigError(KdpipeError):
    pass


class DataError(KdpipeError):
    pass


class TokenizerMismatch(KdpipeError):
    pass


class ModelError(KdpipeError):
    pass


class ExportError(KdpipeError):
    """The exported model failed a check (parity, the int8 metric drop): nothing was kept."""


class TrainingDiverged(KdpipeError):
    """The loss became NaN or infinite: the settings (learning rate, precision) must change."""


class SearchFailed(KdpipeError):
    """No HPO trial completed: there are no best params to train with."""
