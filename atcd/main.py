"""The two commands: `atcd-train` / `train_atcd.py` and `atcd-validate` / `validate.py` (thin wrappers over these).

Installed as console scripts by the wheel (pyproject `[project.scripts]`), so they run from any directory; the
checkout's `train_atcd.py` and `validate.py` call the same functions.
"""
import json
import logging
import sys

from .cli import user_errors
from .config import parse_eval_args, parse_train_args
from .faults import EXIT_BAD_STEPS, EXIT_COLLAPSED

__all__ = ["train_main", "validate_main"]


def train_main(argv: list[str] | None = None) -> int:
    """Train (see train_atcd.py's docstring); returns the exit code of the run's status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .trainer import run
    result = user_errors(run, user_errors(parse_train_args, argv))
    from accelerate import PartialState
    if PartialState().is_main_process:  # every process returns the same (reduced) result
        print("RESULT " + json.dumps(result))
    return {"bad_steps": EXIT_BAD_STEPS, "collapsed": EXIT_COLLAPSED}.get(result["status"], 0)


def _with_zoo_models(argv: list[str]) -> list[str]:
    """`argv` with each `robustbench:DATASET/THREAT/NAME` of `--model` / `-m` imported on first use into the Hugging
    Face cache and named by its cached folder (`atcd.publish.zoo.robustbench_model`; the model sources below the
    publish floor cannot import the importer)."""
    if not any("robustbench:" in a for a in argv):
        return argv
    from .publish.zoo import robustbench_model
    out, value_next = [], False
    for a in argv:
        flag, _, value = a.partition("=") if a.startswith(("--model=", "-m=")) else ("", "", a)
        if value_next or flag:
            value = ",".join(robustbench_model(m.strip()) if m.strip().startswith("robustbench:") else m
                             for m in value.split(","))
            a = f"{flag}={value}" if flag else value
        value_next = a in ("-m", "--model")
        out.append(a)
    return out


def validate_main(argv: list[str] | None = None) -> int:
    """Evaluate (see validate.py's docstring); prints one `RESULT {json}` line."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from .evaluator import run
    from .protocols import resolve_protocol
    argv = user_errors(_with_zoo_models, list(sys.argv[1:] if argv is None else argv))
    cfg = user_errors(resolve_protocol, user_errors(parse_eval_args, argv))  # --protocol: its values, in place
    out = user_errors(run, cfg)
    if out.get("is_main_process", True):  # one RESULT line under `accelerate launch` too
        if cfg.update_card:
            from .publish import update_card_with_results
            user_errors(update_card_with_results, cfg.update_card, out, push=cfg.push_card)
        if "leaderboard" in out:
            print("RESULT " + json.dumps({"leaderboard": out["leaderboard"]}))
        else:
            print("RESULT " + json.dumps({k: v["top1"] for k, v in out["results"].items()}))
    return 0
