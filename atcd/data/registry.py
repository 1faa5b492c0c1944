"""Dataset registry: `--dataset NAME` resolves here, and `--help` lists what is registered.

A dataset is a built-in (a `builder(split)` returning a map-style dataset), an image folder read from
`--data-dir`, or a streamed family (`wds`, `wds/NAME`) read from shards by a rank-sharded loader. As in timm, a
`--data-dir` without `--dataset` is an image folder; with neither, the bundled `mnist-mini` is used.
"""
import os
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["DEFAULT_DATASET", "DatasetSpec", "builtin_datasets", "check_data_dir", "dataset_eps", "describe_datasets",
           "get_dataset_spec", "list_datasets", "register_dataset", "resolve_dataset"]

DEFAULT_DATASET = "mnist-mini"  # what runs without --dataset and --data-dir


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    help: str
    builder: Callable | None = None   # split -> Dataset, for built-ins
    needs_data_dir: bool = False
    streamed: bool = False            # rank-sharded stream: never through accelerator.prepare()
    prefix: bool = False              # also matches `NAME/...` (timm's `wds/imagenet-1k` style)
    eps: float | None = None          # the customary L-inf radius of the dataset (validate.py's --eps default)


_DATASETS: dict[str, DatasetSpec] = {}
_ALIASES: dict[str, str] = {}


def register_dataset(name: str, help: str, *, builder: Callable | None = None, needs_data_dir: bool = False,
                     streamed: bool = False, prefix: bool = False, aliases: tuple[str, ...] = (),
                     eps: float | None = None) -> DatasetSpec:
    spec = DatasetSpec(name, help, builder, needs_data_dir, streamed, prefix, eps)
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


def resolve_dataset(name: str | None, data_dir: str | None) -> str:
    """`--dataset` as given, else an image folder when `--data-dir` is given (timm's rule), else `DEFAULT_DATASET`."""
    if name:
        return name
    return "folder" if data_dir else DEFAULT_DATASET


def dataset_eps(name: str | None) -> float | None:
    """The L-inf radius the dataset defines (mnist-mini: 0.3), or None: then --eps must be given."""
    spec = get_dataset_spec(name)
    return spec.eps if spec is not None else None


def check_data_dir(name: str, data_dir: str | None) -> None:
    """A `--data-dir` that would be ignored (a built-in dataset), is missing or does not exist (an image folder) is an
    error."""
    spec = get_dataset_spec(name)
    if spec is None or not (data_dir or spec.needs_data_dir):
        return
    torch_reader = name.startswith("torch/")  # torchvision's layout (atcd.data.cifar); may be downloaded there
    if not data_dir:
        raise ConfigError(f"--dataset {name} needs --data-dir: " + (
            "a shard directory with _info.json, or a shard pattern" if spec.streamed else
            "the folder of torchvision's files (--dataset-download fetches them there)" if torch_reader else
            "an image folder with train/ and val/ class sub-folders"))
    if spec.builder is not None:
        raise ConfigError(f"--data-dir {data_dir!r} is not read by the built-in dataset {name}: leave out --dataset "
                          f"(or give --dataset folder) for an image folder, --dataset wds for shards")
    if not spec.streamed and not torch_reader and not os.path.isdir(data_dir):
        raise ConfigError(f"--data-dir {data_dir!r}: no such directory (expected an image folder with train/ and "
                          f"val/ class sub-folders)")
