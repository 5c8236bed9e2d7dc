"""Errors raised for bad user input: each names the file or key and the problem."""


class MtlsegError(Exception):
    """Base class: the CLI prints these as one clean line instead of a traceback."""


class DataError(MtlsegError):
    """A dataset on disk is unusable (corrupt file, missing mask, bad label, empty split...)."""


class ConfigError(MtlsegError):
    """A recipe, `--set` override or name lookup is invalid."""


class TrainingError(MtlsegError):
    """Training cannot go on (for example a NaN loss)."""


class Interrupted(MtlsegError):
    """Training was stopped by Ctrl-C; ``saved`` says what the run kept."""

    def __init__(self, saved: str) -> None:
        super().__init__(saved)
        self.saved = saved
