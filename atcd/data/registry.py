"""Dataset registry: `--dataset NAME` resolves here, and `--help` lists what is registered.

A dataset is a built-in (a `builder(split)` returning a map-style dataset), an image folder read from
`--data-dir`, or a streamed family (`wds`, `wds/NAME`) read from shards by a rank-sharded loader.
"""
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DatasetSpec", "builtin_datasets", "describe_datasets", "get_dataset_spec", "list_datasets", "register_dataset"]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    help: str
    builder: Callable | None = None   # split -> Dataset, for built-ins
    needs_data_dir: bool = False
    streamed: bool = False            # rank-sharded stream: never through accelerator.prepare()
    prefix: bool = False              # also matches `NAME/...` (timm's `wds/imagenet-1k` style)


_DATASETS: dict[str, DatasetSpec] = {}
_ALIASES: dict[str, str] = {}


def register_dataset(name: str, help: str, *, builder: Callable | None = None, needs_data_dir: bool = False,
                     streamed: bool = False, prefix: bool = False, aliases: tuple[str, ...] = ()) -> DatasetSpec:
    spec = DatasetSpec(name, help, builder, needs_data_dir, streamed, prefix)
    _DATASETS[name] = spec
    _ALIASES.update(dict.fromkeys(aliases, name))
    return spec


def get_dataset_spec(name: str | None) -> DatasetSpec | None:
    """The registered dataset `name` designates (an alias or a `family/...` name included), or None."""
    name = _ALIASES.get(name or "", name or "")
    if name in _DATASETS:
        return _DATASETS[name]
    family = name.split("/", 1)[0]
    spec = _DATASETS.get(family)
    return spec if spec is not None and spec.prefix and "/" in name else None


def list_datasets() -> list[str]:
    return sorted(n + ("[/NAME]" if s.prefix else "") for n, s in _DATASETS.items())


def builtin_datasets() -> list[str]:
    """The registered datasets that ship with the package (no --data-dir)."""
    return sorted(n for n, s in _DATASETS.items() if s.builder is not None)


def describe_datasets() -> str:
    """One clause per registered dataset, for `--help`."""
    return "; ".join(f"{n}{'[/NAME]' if s.prefix else ''}: {s.help}" for n, s in sorted(_DATASETS.items()))
