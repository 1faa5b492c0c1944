"""Options declared once, next to the code that reads them.

A frozen dataclass whose fields are made with `option(...)` carries, per field, the flag name, help text, default
and check. `add_options` turns it into an argparse group, `check_options` validates an instance, `option_rows`
lists it for a model card. Run-wide settings (`atcd.config.TrainConfig`) and each training method's and attack's
own `Options` class are written this way, so `--help`, `args.yaml`, the model card and validation all read one
declaration.
"""
import argparse
import dataclasses
import re
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["AT_LEAST_1", "HelpFormatter", "add_options", "add_owned_groups", "check_options", "comma_list", "flag_of",
           "key_value", "option", "option_fields", "option_rows", "owners_of", "parse_fraction", "parse_kwargs",
           "parse_with_yaml", "refuse_foreign", "set_help", "show_default"]


def parse_fraction(s) -> float:
    """'8/255' -> 0.0313..., '0.3' -> 0.3."""
    try:
        return float(Fraction(str(s).strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or fraction: {s!r}") from None


def comma_list(s) -> tuple:
    """'a, b,c' -> ('a', 'b', 'c'); a list or tuple (from yaml) passes through as a tuple."""
    if isinstance(s, (list, tuple)):
        return tuple(s)
    return tuple(a.strip() for a in str(s).split(",") if a.strip())


def key_value(s):
    """argparse type of a `k=v` item (timm's --model-kwargs); a list or mapping from yaml passes through whole."""
    if isinstance(s, (list, tuple)):
        return tuple(key_value(v) for v in s)
    if isinstance(s, dict):
        return s
    if "=" not in str(s) or not str(s).split("=", 1)[0]:
        raise argparse.ArgumentTypeError(f"expected key=value, got {s!r}")
    return str(s)


def parse_kwargs(items) -> dict:
    """('drop_rate=0.1', 'act_layer=gelu') -> {'drop_rate': 0.1, 'act_layer': 'gelu'}: values read as Python
    literals where they are one (timm's ParseKwargs); a mapping (from yaml) is returned as it is."""
    import ast
    if isinstance(items, dict):
        return dict(items)
    out = {}
    for item in items or ():
        k, v = item.split("=", 1)
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


AT_LEAST_1 = {"check": lambda v: v >= 1, "why": "must be >= 1"}  # the commonest rule: option(10, "...", **AT_LEAST_1)


def option(default: Any, help: str = "", *, flag: str | None = None, short: str | None = None,
           type: Callable | None = None, choices: Iterable | None = None, action: str | None = None,
           check: Callable[[Any], bool] | None = None, why: str = "", metavar: str | None = None,
           nargs: str | None = None, const: Any = None, group: str = "") -> Any:
    """A dataclass field that is also a command-line option.

    Args:
        default: the default value (also the dataclass default).
        help: help text; name the paper's symbol where there is one.
        flag: the long flag (default: `--` + the field name with `_` as `-`).
        short: an extra short flag, e.g. `-b`.
        type: argparse type (default: from the default's type; needed when the default is None).
        choices: allowed values (checked by argparse).
        action: an argparse action, e.g. 'store_true' (booleans default to `--x/--no-x`).
        check: `check(value) -> bool`; False raises `ConfigError` with `why`.
        why: the rule that `check` enforces, e.g. 'must be >= 1'; the message is `<flag> <why> (got <value>)`.
        metavar, nargs, const: passed to argparse.
        group: the parser group the option belongs to (run-wide options only).
    """
    meta = {"help": help, "flag": flag, "short": short, "type": type, "choices": tuple(choices) if choices else None,
            "action": action, "check": check, "why": why, "metavar": metavar, "nargs": nargs, "const": const,
            "group": group}
    return dataclasses.field(default=default, metadata={"option": meta})


def option_fields(cls) -> list[dataclasses.Field]:
    """The fields of `cls` (a class or an instance) that are options."""
    return [f for f in dataclasses.fields(cls) if "option" in f.metadata]


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata["option"]["flag"] or "--" + f.name.replace("_", "-")


_DEFAULT_WORD = re.compile(r"\bdefault\b", re.IGNORECASE)


def show_default(value: Any) -> str:
    """How `--help` prints a default: off/on for booleans, none for None, a sequence space-separated."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value == ():
        return "none"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """One default per option: the help text's own ("default: the model's") where it states one, else the value.

    argparse's ArgumentDefaultsHelpFormatter appends the value even when the text already says what the default
    means, and BooleanOptionalAction appends it a second time; the epilog keeps its line breaks (examples).
    """

    def _get_help_string(self, action):
        text = (action.help or "").replace(" (default: %(default)s)", "")  # BooleanOptionalAction's own suffix
        if not action.option_strings or action.default is argparse.SUPPRESS or _DEFAULT_WORD.search(text):
            return text
        return text + " (default: " + show_default(action.default).replace("%", "%%") + ")"


def add_options(group, cls, *, suppress: bool = False, help_prefix: str = "", skip: Iterable[str] = (),
                only_group: str | None = None, only: Sequence[str] | None = None) -> list[str]:
    """Add the options of dataclass `cls` to an argparse parser or group; returns their dests.

    With `suppress` an option that is not given is absent from the parsed namespace (its dataclass default then
    applies), so the caller can tell which options the user set. `only` adds just those options, in that order
    (the ones users change first); `skip` and `only_group` leave options out.
    """
    dests = []
    fields = option_fields(cls)
    if only is not None:
        fields = [next(f for f in fields if f.name == name) for name in only]
    for f in fields:
        m = f.metadata["option"]
        if f.name in skip or (only_group is not None and m["group"] != only_group):
            continue
        names = [flag_of(f)] + ([m["short"]] if m["short"] else [])
        # argparse shows no default it never sets: a suppressed option states its own, once
        shown = "" if not suppress or _DEFAULT_WORD.search(m["help"]) else f" (default: {show_default(f.default)})"
        kw: dict[str, Any] = {"dest": f.name, "help": help_prefix + m["help"] + shown}
        kw["default"] = argparse.SUPPRESS if suppress else f.default
        if m["action"]:
            kw["action"] = m["action"]
        elif isinstance(f.default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = m["type"] or (type(f.default) if f.default is not None else str)
            for k in ("choices", "metavar", "nargs", "const"):
                if m[k] is not None:
                    kw[k] = m[k]
        group.add_argument(*names, **kw)
        dests.append(f.name)
    return dests


def check_options(obj) -> None:
    """Run every option's own check; the first failure raises `ConfigError('<flag> <why> (got <value>)')`."""
    for f in option_fields(obj):
        m = f.metadata["option"]
        value = getattr(obj, f.name)
        if m["check"] is not None and not m["check"](value):
            raise ConfigError(f"{flag_of(f)} {m['why']} (got {value})")


def option_rows(obj, names: Iterable[str] | None = None) -> list[tuple[str, Any, str]]:
    """(flag, value, help) of an options instance (all fields, or those named), for model cards and logs."""
    keep = None if names is None else set(names)
    return [(flag_of(f), getattr(obj, f.name), f.metadata["option"]["help"]) for f in option_fields(obj)
            if keep is None or f.name in keep]


def owners_of(owners: dict[str, type]) -> dict[str, list[str]]:
    """option dest -> the registered names (methods or attacks) whose Options declare it."""
    out: dict[str, list[str]] = {}
    for name, cls in owners.items():
        for f in option_fields(cls) if cls is not None else ():
            out.setdefault(f.name, []).append(name)
    return out


def add_owned_groups(p: argparse.ArgumentParser, owners: dict[str, type], kind: str) -> dict[str, list[str]]:
    """One argparse group per method/attack with options; a flag several of them share is added once."""
    owned, seen = owners_of(owners), set()
    for name, cls in owners.items():
        if cls is None or not option_fields(cls):
            continue
        g = p.add_argument_group(f"{kind} {name}")
        new = [f.name for f in option_fields(cls) if f.name not in seen]
        for dest in new:
            add_options(g, cls, suppress=True, help_prefix=f"[{', '.join(owned[dest])}] ",
                        skip=[f.name for f in option_fields(cls) if f.name != dest])
        seen.update(new)
    return owned


def set_help(p: argparse.ArgumentParser, dest: str, text: str):
    """Replace the help of option `dest` (e.g. with a listing built from a registry)."""
    next(a for a in p._actions if a.dest == dest).help = text


def parse_with_yaml(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[dict, set[str]]:
    """(merged option values, names given on the CLI or in the yaml)."""
    pre, _ = parser.parse_known_args(argv)
    y = {}
    if pre.config:
        try:
            with open(pre.config) as f:
                y = yaml.safe_load(f) or {}
        except OSError as e:
            raise ConfigError(f"cannot read config {pre.config!r}: {e.strerror}") from None
        if not isinstance(y, dict):
            raise ConfigError(f"config {pre.config!r} must be a mapping of option: value")
        # a key may name an option by any of its long flags (an alias such as --checkpoint-keep of --checkpoint-hist)
        alias = {f[2:].replace("-", "_"): a.dest for a in parser._actions for f in a.option_strings
                 if f.startswith("--") and not f.startswith("--no-")}
        y = {alias.get(k.replace("-", "_"), k.replace("-", "_")): v for k, v in y.items()}
        unknown = sorted(set(y) - {a.dest for a in parser._actions})
        if unknown:
            raise ConfigError(f"config {pre.config!r}: unknown option(s) {unknown}")
        for a in parser._actions:  # yaml values go through the same type conversion as the CLI
            if a.dest not in y or a.type is None:
                continue
            if isinstance(y[a.dest], list) and a.nargs not in (None, "?"):  # `input_size: [3, 32, 32]`
                y[a.dest] = [a.type(v) for v in y[a.dest]]
            elif isinstance(y[a.dest], (str, list)):
                y[a.dest] = a.type(y[a.dest])
        parser.set_defaults(**y)
    args = vars(parser.parse_args(argv))
    args.pop("config")
    given = set(y) | {a.dest for a in parser._actions if a.default is argparse.SUPPRESS and a.dest in args}
    return args, given


def refuse_foreign(given: set[str], owned: dict[str, list[str]], mine: set[str], kind: str, chosen: str, flags: dict):
    """An option given for a method/attack that the run does not use is an error, never silently ignored."""
    for dest in sorted(given & set(owned) - mine):
        raise ConfigError(f"{flags[dest]} is an option of {kind} {', '.join(owned[dest])}; {chosen} does not use it")
