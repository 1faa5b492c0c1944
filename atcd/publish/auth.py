"""The Hugging Face token: needed to push, never published (read only by `huggingface_hub.get_token()`)."""
import logging
from pathlib import Path

from huggingface_hub import get_token

from ..models.hub import HubError

__all__: list[str] = []

_logger = logging.getLogger(__name__)


def require_token() -> str:
    token = get_token()
    if not token:
        raise HubError("pushing needs a Hugging Face token: run `hf auth login` or set HF_TOKEN")
    return token


def assert_no_token(folder: str):
    """Refuse to publish a folder in which the Hub token appears (it is not printed, not even in the error)."""
    token = get_token()
    if not token:
        return
    needle = token.encode()
    for p in Path(folder).rglob("*"):
        if p.is_file() and needle in p.read_bytes():
            raise HubError(f"{p.name} contains your Hugging Face token; refusing to publish it")
