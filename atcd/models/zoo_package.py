"""The `robustbench` package (the optional `[zoo]` extra) and its model-zoo tables: imported here and nowhere else.

Low in the package (the evaluation protocol and the zoo importer both read it): building and mapping zoo modules
is `atcd.publish.zoo`'s business.
"""
import importlib
import os
import re
import sys
import types

from .hub import HubError, one_line

__all__ = ["INSTALL", "LOGIT_TOL", "NUM_CLASSES", "THREAT_EPS", "robustbench", "split_spec", "zoo_entries"]

LOGIT_TOL = 1e-5  # |Δlogit| allowed between the zoo module and the timm model: LOGIT_TOL * (1 + |logit|)
# (float32 rounding only: 1e-5 absolute on logits of order 1, relative on the large logits of a trained head)
THREAT_EPS = {("cifar10", "Linf"): 8 / 255, ("cifar100", "Linf"): 8 / 255, ("imagenet", "Linf"): 4 / 255,
              ("cifar10", "L2"): 0.5}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
INSTALL = "pip install '.[zoo]' && pip install --no-deps robustbench==1.1.1"
_AUTOATTACK_SUBMODULES = ("autoattack", "autopgd_base", "checks", "fab_base", "fab_projections", "fab_pt",
                          "other_utils", "square", "state")


def robustbench():
    """The `robustbench` package, imported here and nowhere else in the project.

    robustbench 1.1.1 imports `autoattack`, but the official AutoAttack package installs as `pyautoattack`: the
    alias (`sys.modules['autoattack']`, and its submodules robustbench reaches) is set here before the import.
    Its `loaders.py` also imports `pkg_resources`, which setuptools >= 81 no longer ships: when it is missing, a
    stub with the one function robustbench calls (`resource_filename`) stands in. And its `benchmark()` calls
    AutoAttack's older API (`AutoAttack(..., log_path=)`, `run_standard_evaluation(x, y, bs=)`), which pyautoattack
    0.2.0 refuses: `robustbench.eval.AutoAttack` is set to a subclass that translates it (`_legacy_autoattack`).

    Raises:
        HubError: robustbench (or a dependency) is not installed.
    """
    try:
        import pyautoattack
        sys.modules.setdefault("autoattack", pyautoattack)
        for sub in _AUTOATTACK_SUBMODULES:
            sys.modules.setdefault(f"autoattack.{sub}", importlib.import_module(f"pyautoattack.{sub}"))
        try:
            import pkg_resources  # noqa: F401  (available? else the stub below)
        except ImportError:
            stub = types.ModuleType("pkg_resources")
            stub.resource_filename = lambda pkg, path: os.path.join(
                os.path.dirname(importlib.import_module(pkg).__file__), path)
            sys.modules["pkg_resources"] = stub
        import robustbench as rb
        import robustbench.data
        import robustbench.eval
        import robustbench.model_zoo
        import robustbench.utils
    except ImportError as e:
        raise HubError(f"RobustBench's model zoo needs the robustbench package ({one_line(e)}): {INSTALL}") from None
    if rb.eval.AutoAttack.__name__ != "LegacyAutoAttack":
        rb.eval.AutoAttack = _legacy_autoattack()
    return rb


def _legacy_autoattack():
    from pyautoattack import AutoAttack

    class LegacyAutoAttack(AutoAttack):
        """pyautoattack's AutoAttack under the API robustbench 1.1.1's `benchmark()` calls: `log_path` is dropped
        (progress goes to the `auto-attack` logger), `bs` is `batch_size`, and x_adv alone is returned."""
        seed_override: int | None = None  # tests: the seed validate.py gives the same images

        def __init__(self, model, norm="Linf", eps=0.3, version="standard", device="cpu", log_path=None, seed=None,
                     **kwargs):
            seed = self.seed_override if self.seed_override is not None else seed
            super().__init__(model, norm=norm, eps=eps, version=version, device=device, seed=seed, **kwargs)

        def run_standard_evaluation(self, x, y, bs=250, state_path=None, **kwargs):
            out = super().run_standard_evaluation(x, y, batch_size=kwargs.get("batch_size", bs),
                                                  state_path=state_path)
            return out[0] if isinstance(out, tuple) else out
    return LegacyAutoAttack



def split_spec(spec: str) -> tuple[str, str, str]:
    """'cifar10/Linf/NAME' -> ('cifar10', 'Linf', 'NAME'), checked against the zoo.

    Raises:
        HubError: not DATASET/THREAT/NAME, or no such zoo entry (with the closest names).
    """
    parts = spec.split("/")
    if len(parts) != 3 or not all(parts):
        raise HubError(f"--robustbench {spec!r}: expected DATASET/THREAT/NAME, e.g. cifar10/Linf/Carmon2019Unlabeled")
    dataset, threat, name = parts
    tables = _tables()
    if (dataset, threat) not in tables:
        raise HubError(f"--robustbench {spec!r}: no zoo table {dataset}/{threat}; tables: "
                       f"{', '.join('/'.join(k) for k in tables)}")
    if name not in tables[dataset, threat]:
        import difflib
        close = difflib.get_close_matches(name, list(tables[dataset, threat]), n=3, cutoff=0.5)
        raise HubError(f"--robustbench {spec!r}: {name!r} is not in RobustBench's {dataset}/{threat} zoo"
                       + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return dataset, threat, name


def _tables() -> dict:
    rb = robustbench()
    return {(d.value, t.value): models for d, by_threat in rb.model_zoo.model_dicts.items()
            for t, models in by_threat.items()}


def zoo_entries(dataset: str, threat: str) -> list[str]:
    """The entry names of one zoo table, in the package's order."""
    return list(_tables()[dataset, threat])


def _entry(dataset: str, threat: str, name: str) -> dict:
    return _tables()[dataset, threat][name]


def _is_ensemble(entry: dict) -> bool:
    return isinstance(entry.get("gdrive_id"), list)


def _timm_name(dataset: str, threat: str, name: str) -> str:
    """The name robustbench registers an entry under in timm (its `load_model` tries it first)."""
    return f"{name.lower().replace('-', '_')}_{dataset}_{threat.lower()}"


# ---------------------------------------------------------------- reported numbers (the package's README tables)

_SECTIONS = {"cifar10": "### CIFAR-10", "cifar100": "### CIFAR-100", "imagenet": "### ImageNet"}
_ROW = re.compile(r"^\|\s*<sub>\*\*\d+\*\*</sub>\s*\|\s*<sub><sup>\*\*(?P<id>[^*]+)\*\*</sup></sub>\s*\|\s*"
                  r"<sub>\*(?:\[(?P<title>.*?)\]\((?P<link>[^)]*)\)|(?P<plain>[^*]*))\*</sub>\s*\|\s*"
                  r"<sub>(?P<clean>[\d.]+)%</sub>\s*\|\s*<sub>(?P<robust>[\d.]+)%</sub>\s*\|\s*"
                  r"<sub>(?P<arch>.*?)</sub>\s*\|\s*<sub>(?P<venue>.*?)</sub>\s*\|")
