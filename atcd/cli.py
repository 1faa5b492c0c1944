"""The contract of every script for bad input: one `error:` line on stderr and exit code 2, never a traceback."""
import sys
from collections.abc import Callable

from .errors import USER_ERRORS

__all__ = ["die", "user_errors"]


def die(msg: str, code: int = 2):
    """One clear line on stderr and a non-zero exit."""
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(code)


def user_errors(fn: Callable, *args, **kwargs):
    """Call `fn`; a user error (bad option, data, checkpoint, unknown timm model) becomes `die(message)`."""
    try:
        return fn(*args, **kwargs)
    except USER_ERRORS as e:
        die(str(e))
    except RuntimeError as e:
        if "Unknown model" in str(e):  # timm.create_model's message for a name it does not know
            die(str(e))
        raise
