"""Errors that reach the user as one clear message (the CLI prints them without a traceback)."""


class KdpipeError(Exception):
    """Base class: bad input or setting, with a message that says where and what to do."""


class ConfigError(KdpipeError):
    pass


class DataError(KdpipeError):
    pass


class TokenizerMismatch(KdpipeError):
    pass


class ModelError(KdpipeError):
    pass


class ExportError(KdpipeError):
    pass


class TrainingDiverged(KdpipeError):
    pass


class SearchFailed(KdpipeError):
    """No HPO trial completed: there are no best params to train with."""
