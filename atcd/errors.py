"""The errors a user can cause: each is reported as one `error:` line and exit code 2 (see `atcd.cli`)."""

__all__ = ["USER_ERRORS", "CheckpointError", "ConfigError", "DataError"]


class ConfigError(ValueError):
    """Invalid configuration: an unknown, ill-typed, out-of-range or conflicting option."""


class DataError(ValueError):
    """Bad dataset specification (unknown name, missing folder, no classes) or unusable data (corrupt, strict)."""

    def __init__(self, msg: str = ""):
        if "Original Traceback" in msg:  # re-raised by torch's DataLoader from a worker: keep the one-line message
            msg = msg.rstrip().splitlines()[-1].split("DataError: ", 1)[-1]
        super().__init__(msg)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (missing, corrupt, pickle, wrong architecture)."""


USER_ERRORS = (ConfigError, DataError, CheckpointError)
