"""A run's options as (flag, value, help) rows for its model card and RobustBench info, read from the method's and
the run-wide option declarations (so a PGD run lists only PGD's and the run-wide options)."""
from typing import Any

from ..config import TrainConfig
from ..methods import get_method_class
from ..options import option_fields, option_rows
from ..run_options import TrainOptions

__all__ = ["option_table"]


def option_table(train_args: dict, section: str) -> list[tuple[str, Any, str]]:
    """(flag, value, help) of a run's options for a card table, from the method's and the run-wide declarations:
    'method' (the adversary settings and the method's own options; none for standard training) or a run-wide group
    such as 'optimisation'."""
    method = train_args.get("method", TrainOptions.method)
    known = {f.name for f in option_fields(TrainOptions)} | {f.name for f in option_fields(
        get_method_class(method).Options)}
    cfg = TrainConfig.of(**{k: v for k, v in train_args.items() if k in known})
    if section != "method":
        rows = option_rows(cfg, [f.name for f in option_fields(TrainOptions)
                                 if f.metadata["option"]["group"] == section])
    elif method == "standard":
        rows = []
    else:
        rows = option_rows(cfg, ["eps", "attack_step", "attack_bn"]) + option_rows(cfg.method_opts)
    return [(flag, value, help_text.replace("%%", "%").replace("|", "\\|")) for flag, value, help_text in rows]
