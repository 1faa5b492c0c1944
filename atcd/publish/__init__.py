"""Publishing runs to the Hugging Face Hub: export in timm's layout, model cards, push.

Loading `hf-hub:` / `local-dir:` models is `atcd.models.hub`; its `HubError` is what these functions raise.
"""
from ..models.hub import HubError  # noqa: F401
from .card import build_model_card, update_card_with_results  # noqa: F401
from .export import export_run, measured_hub_folder, push_folder  # noqa: F401
from .results import eval_results_from_validate  # noqa: F401
